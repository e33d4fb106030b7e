"""Per-segment log-mel audio features (vmstream.stages.audio), on real encoded files
made here with ffmpeg: sine tones at known frequencies, with and without an audio track,
audio shorter than the video, a long track for the memory bound."""

from __future__ import annotations

import logging
import shutil
import subprocess

import av
import numpy as np
import pytest
import torch
import torchaudio

from vmstream.records import Segment, StreamEvent
from vmstream.stages.audio import (
    AudioConfig,
    AudioFeatures,
    LogMelStream,
    reference_logmel_summary,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI to make test media")

CFG = AudioConfig()
# 480 Hz and 2400 Hz sit exactly on STFT bins (16000 / 400 = 40 Hz apart).
LOW, HIGH = 480.0, 2400.0


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def _tone_expr(switch_at: float) -> str:
    return f"0.5*sin(2*PI*if(lt(t,{switch_at}),{LOW},{HIGH})*t)"


@pytest.fixture(scope="module")
def audio_media(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio_media")
    files = {}
    # H.264 + AAC stereo 44.1 kHz: 480 Hz for 2 s, then 2400 Hz for 2 s.
    files["mp4"] = d / "tones.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10:duration=4",
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc='{_tone_expr(2)}':s=44100:d=4",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        "-ac",
        "2",
        str(files["mp4"]),
    )
    # VP9 + Opus 48 kHz mono, same tones.
    files["webm"] = d / "tones.webm"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10:duration=4",
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc='{_tone_expr(2)}':s=48000:d=4",
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-c:a",
        "libopus",
        str(files["webm"]),
    )
    # Video only.
    files["silent"] = d / "noaudio.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10:duration=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        str(files["silent"]),
    )
    # 4 s of video, 2 s of audio (480 Hz).
    files["short_audio"] = d / "short_audio.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10:duration=4",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={LOW}:sample_rate=44100:duration=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(files["short_audio"]),
    )
    # 60 s of audio only, the tone switching every 10 s: memory bound and seeking.
    files["long"] = d / "long.m4a"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc='0.5*sin(2*PI*if(lt(mod(t,20),10),{LOW},{HIGH})*t)':s=16000:d=60",
        "-c:a",
        "aac",
        "-b:a",
        "48k",
        str(files["long"]),
    )
    return files


def _decode_all(path) -> tuple[np.ndarray, float]:
    """The whole track at 16 kHz mono with the time of its first sample (reference only)."""
    with av.open(str(path)) as c:
        r = av.AudioResampler(format="flt", layout="mono", rate=CFG.sample_rate)
        out, t0 = [], None
        for f in c.decode(c.streams.audio[0]):
            for o in r.resample(f):
                t0 = o.time if t0 is None else t0
                out.append(o.to_ndarray().reshape(-1))
        for o in r.resample(None):
            out.append(o.to_ndarray().reshape(-1))
    return np.concatenate(out), float(t0)


def _expected_bin(freq: float, cfg: AudioConfig = CFG) -> int:
    fb = torchaudio.functional.melscale_fbanks(
        cfg.n_fft // 2 + 1, cfg.f_min, cfg.sample_rate / 2, cfg.n_mels, cfg.sample_rate
    )
    return int(fb[int(round(freq / (cfg.sample_rate / cfg.n_fft)))].argmax())


def _segments(uri, spans):
    return [
        Segment(stream_id="s", index=i, t_start=a, t_end=b, pixels=torch.zeros(3, 1, 8, 8), uri=str(uri))
        for i, (a, b) in enumerate(spans)
    ]


def test_torch_torchaudio_pair_and_melspectrogram():
    # Released in lockstep: a mismatched pair fails at import or in its C++ ops.
    assert torch.__version__.split("+")[0] == torchaudio.__version__.split("+")[0]
    x = torch.sin(2 * torch.pi * 1000 * torch.arange(16000) / 16000)
    spec = CFG.mel_transform()(x)
    assert spec.shape == (64, 1 + (16000 - 400) // 160)
    assert torch.isfinite(spec).all()
    assert int(spec.mean(1).argmax()) == _expected_bin(1000)


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_tone_lights_the_right_mel_bin(audio_media, kind):
    segs = list(AudioFeatures()(_segments(audio_media[kind], [(0.2, 1.8), (2.2, 3.8)])))
    lo, hi = (s.audio for s in segs)
    for feat, freq in ((lo, LOW), (hi, HIGH)):
        assert feat.shape == (CFG.dim,) and feat.dtype == np.float32
        mean, std = feat[: CFG.n_mels], feat[CFG.n_mels :]
        assert abs(int(mean.argmax()) - _expected_bin(freq)) <= 1, (freq, int(mean.argmax()))
        # A steady tone: its own bin is far above the floor and barely moves over time.
        assert mean.max() - np.median(mean) > 8.0
        assert std[mean.argmax()] < 0.5
    assert _expected_bin(HIGH) - _expected_bin(LOW) > 10


def test_tone_change_is_placed_in_time(audio_media):
    """The switch at 2.0 s shows up in the segment straddling it, not a neighbour: the
    audio timeline is aligned with the container's."""
    spans = [(1.0, 1.95), (1.95, 2.05), (2.05, 3.0)]
    a, b, c = (s.audio for s in AudioFeatures()(_segments(audio_media["mp4"], spans)))
    lo, hi = _expected_bin(LOW), _expected_bin(HIGH)
    assert a[lo] > a[hi] + 5 and c[hi] > c[lo] + 5
    assert b[lo] > a[hi] + 3 and b[hi] > c[lo] + 3  # both tones inside the straddling span
    assert b[CFG.n_mels + lo] > 1.0  # and its std shows the change


def test_stage_matches_whole_track_reference(audio_media):
    """The incremental stage (blocks of PCM, frames dropped as segments pass) equals the
    readable reference that takes the mel of the whole decoded track at once. It also
    leaves the caller's torch thread count alone (it runs its STFTs on one thread)."""
    threads = torch.get_num_threads()
    # Starts in time order; spans may overlap, be empty, or run past the audio.
    spans = [(0.0, 0.5), (0.25, 1.337), (1.337, 1.337), (1.9, 2.6), (2.5, 3.95), (3.95, 6.0)]
    stage = AudioFeatures(AudioConfig(block_seconds=0.3))
    got = [x.audio for x in stage(_segments(audio_media["mp4"], spans))]
    assert stage.stats["seeks"] == 0
    assert torch.get_num_threads() == threads
    samples, t0 = _decode_all(audio_media["mp4"])
    want = reference_logmel_summary(samples, t0, spans)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_one_frame_spans_get_the_reference_frame(audio_media):
    """A span shorter than a hop takes the frame nearest its midpoint, which may lie just
    after the span: the stage reads far enough to know it (as the reference does), so the
    answer does not depend on where the PCM chunks happened to end."""
    spans = [(round(t, 3), round(t, 3)) for t in np.arange(0.05, 3.9, 0.1)]
    got = [x.audio for x in AudioFeatures()(_segments(audio_media["mp4"], spans))]
    samples, t0 = _decode_all(audio_media["mp4"])
    want = reference_logmel_summary(samples, t0, spans)
    for (a, _), g, w in zip(spans, got, want):
        assert g is not None and w is not None, a
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=str(a))


def test_logmelstream_is_chunking_invariant():
    rng = np.random.default_rng(0)
    t = np.arange(3 * CFG.sample_rate) / CFG.sample_rate
    x = (0.3 * np.sin(2 * np.pi * 700 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    spans = [(0.0, 1.0), (0.8, 2.2), (2.2, 2.2), (2.5, 3.5)]
    want = reference_logmel_summary(x, 5.0, [(a + 5.0, b + 5.0) for a, b in spans])
    s = LogMelStream(AudioConfig(block_seconds=0.25))
    pos, first = 0, True
    while pos < x.size:
        n = int(rng.integers(1, 3000))
        s.push(x[pos : pos + n], 5.0 if first else None)
        first, pos = False, pos + n
    s.finish()
    for (a, b), w in zip(spans, want):
        np.testing.assert_allclose(s.summary(a + 5.0, b + 5.0), w, rtol=1e-5, atol=1e-5)


def test_logmelstream_gap_starts_a_new_grid():
    x = np.sin(2 * np.pi * 480 * np.arange(16000) / 16000).astype(np.float32)
    s = LogMelStream()
    s.push(x, 0.0)  # [0, 1) s
    s.push(x, 3.0)  # [3, 4) s: a 2 s hole
    s.finish()
    assert s.summary(1.3, 2.7) is None
    np.testing.assert_allclose(s.summary(3.0, 4.0), reference_logmel_summary(x, 3.0, [(3.0, 4.0)])[0], atol=1e-5)


def test_no_audio_track_passes_through_with_one_log_line(audio_media, caplog):
    with av.open(str(audio_media["silent"])) as c:
        assert not c.streams.audio  # the file really has no audio track
    segs_in = _segments(audio_media["silent"], [(0.0, 1.0), (1.0, 2.0)])
    with caplog.at_level(logging.INFO, logger="vmstream.stages.audio"):
        segs = list(AudioFeatures()(segs_in))
    assert [s.index for s in segs] == [0, 1] and all(s.audio is None for s in segs)
    lines = [r for r in caplog.records if "no audio track" in r.getMessage()]
    assert len(lines) == 1 and str(audio_media["silent"]) in lines[0].getMessage()


def test_span_past_the_end_of_audio(audio_media):
    stage = AudioFeatures()
    spans = [(0.5, 1.5), (1.5, 2.5), (2.6, 3.5), (3.5, 3.9)]
    out = [s.audio for s in stage(_segments(audio_media["short_audio"], spans))]
    assert out[0] is not None and out[1] is not None  # the second one covers audio in part
    assert out[2] is None and out[3] is None
    assert stage.stats["segments_without_audio"] == 2
    samples, t0 = _decode_all(audio_media["short_audio"])
    np.testing.assert_allclose(out[1], reference_logmel_summary(samples, t0, [(1.5, 2.5)])[0], atol=1e-4)


def test_memory_stays_flat_on_a_long_track(audio_media):
    cfg = AudioConfig(block_seconds=2.0)
    stage = AudioFeatures(cfg)
    spans = [(2.0 * i, 2.0 * i + 2.0) for i in range(30)]
    out = [s.audio for s in stage(_segments(audio_media["long"], spans))]
    assert all(o is not None for o in out)
    # One segment span plus one PCM block plus a little slack, not 60 s.
    assert stage.stats["peak_buffered_seconds"] < 2.0 + cfg.block_seconds + 0.5
    # Tone switches every 10 s: segment i is low when (2i mod 20) < 10.
    lo, hi = _expected_bin(LOW), _expected_bin(HIGH)
    for i, o in enumerate(out):
        assert (o[lo] > o[hi]) == ((2 * i) % 20 < 10), i


def test_jumps_and_out_of_order_segments_seek(audio_media):
    spans = [(1.0, 3.0), (45.0, 47.0), (12.0, 14.0), (56.0, 58.0)]
    stage = AudioFeatures()
    got = [s.audio for s in stage(_segments(audio_media["long"], spans))]
    assert stage.stats["seeks"] >= 2
    samples, t0 = _decode_all(audio_media["long"])
    want = reference_logmel_summary(samples, t0, spans)
    for g, w in zip(got, want):
        # After a seek the frame grid restarts at a packet boundary (frames shifted by
        # under one hop) and the AAC decoder warms up again: the same sound, with the
        # near-silent bins (log floor ~ -13.8) free to wander a little.
        g, w = g[: CFG.n_mels], w[: CFG.n_mels]
        loud = w > -8
        assert loud.sum() >= 2 and g.argmax() == w.argmax()
        np.testing.assert_allclose(g[loud], w[loud], atol=0.05)


def test_bad_config_is_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="n_mels"):
        AudioConfig(n_mels=0)
    with pytest.raises(ValueError, match="hop_length"):
        AudioConfig(hop_length=500)
    with pytest.raises(ValueError, match="f_max"):
        AudioConfig(f_max=9000)


def test_unreadable_or_remote_sources_leave_audio_none(tmp_path, caplog):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with caplog.at_level(logging.INFO, logger="vmstream.stages.audio"):
        a = list(AudioFeatures()(_segments(junk, [(0.0, 1.0)])))
        b = list(AudioFeatures()(_segments("rtsp://127.0.0.1:1/cam", [(0.0, 1.0)])))
    assert a[0].audio is None and b[0].audio is None
    assert any(str(junk) in r.getMessage() for r in caplog.records)
    assert any("rtsp://127.0.0.1:1/cam" in r.getMessage() for r in caplog.records)


def test_truncated_file_keeps_what_decodes(audio_media, tmp_path):
    whole = audio_media["webm"].read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(whole[: len(whole) // 2])
    stage = AudioFeatures()
    out = [s.audio for s in stage(_segments(cut, [(0.2, 1.0), (3.6, 3.9)]))]
    assert out[0] is not None and abs(int(out[0][: CFG.n_mels].argmax()) - _expected_bin(LOW)) <= 1
    assert out[1] is None  # the cut took the end of the track with it


def test_runner_hook_passes_events_through_in_order(audio_media):
    from vmstream.records import StreamEvent
    from vmstream.stages.sources import source_from_uri

    src = source_from_uri(str(audio_media["mp4"]))
    segs = _segments(audio_media["mp4"], [(0.2, 1.8), (2.2, 3.8)])
    for s in segs:
        s.uri = ""  # the factory's source names the file, not the segments
    items = [
        StreamEvent("s", "gap", 0.0, 0.1),
        segs[0],
        StreamEvent("s", "error", message="x"),
        segs[1],
        StreamEvent("s", "end", details={"reason": "eof"}),
    ]
    out = list(AudioFeatures.factory(CFG)(src).run(iter(items)))
    assert [type(o).__name__ for o in out] == [type(i).__name__ for i in items]
    assert [o.kind for o in out if isinstance(o, StreamEvent)] == ["gap", "error", "end"]
    lo, hi = out[1].audio, out[3].audio
    assert int(lo[: CFG.n_mels].argmax()) in (_expected_bin(LOW) - 1, _expected_bin(LOW), _expected_bin(LOW) + 1)
    assert int(hi[: CFG.n_mels].argmax()) in (_expected_bin(HIGH) - 1, _expected_bin(HIGH), _expected_bin(HIGH) + 1)
    # Only events, no Segment: nothing to read, everything passes.
    assert len(list(AudioFeatures().run(iter(items[::2])))) == 3


# --------------------------------------------------------------------------- one pass


def _decoded_segments(path, policy, T, audio=None, start_time=0.0):
    from vmstream.stages.decode.pyav import PyAVDecoder
    from vmstream.stages.media import FrameSize
    from vmstream.stages.sampling import parse_policy
    from vmstream.stages.segmenter import Segmenter
    from vmstream.stages.sources import source_from_uri

    src = source_from_uri(str(path))
    items = PyAVDecoder().frames(src, parse_policy(policy), FrameSize(32, 32), start_time, audio=audio)
    return src, Segmenter(T).segments(items, uri=src.uri)


def _audio_of(out):
    return [s.audio for s in out if isinstance(s, Segment)]


@pytest.mark.parametrize(
    "kind,policy,T",
    [("mp4", "fps:4", 3), ("webm", "all", 8), ("short_audio", "fps:5", 4), ("mp4", "fps:1:keyframes", 2)],
)
def test_audio_read_in_the_video_pass_equals_reading_the_file(audio_media, monkeypatch, kind, policy, T):
    """The decoder demuxes the audio track in its own pass (one open of the file) and the
    stage takes the chunks from the item stream: the same features as the stage reading
    the file itself, the same frames, and no audio record past the stage."""
    from vmstream.records import Frame
    from vmstream.stages.media import AudioChunk, AudioTrack

    src, items = _decoded_segments(audio_media[kind], policy, T, audio=CFG.audio_format)
    items = list(items)
    assert isinstance(items[0], AudioTrack) and sum(isinstance(i, AudioChunk) for i in items) > 10
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    stage = AudioFeatures.factory(CFG)(src)
    out = list(stage.run(iter(items)))
    assert opened == [] and stage.stats["in_band"]
    assert not any(isinstance(o, (AudioTrack, AudioChunk, Frame)) for o in out)
    assert isinstance(out[-1], StreamEvent) and out[-1].kind == "end"
    monkeypatch.setattr(av, "open", real_open)

    _, plain = _decoded_segments(audio_media[kind], policy, T)
    file_stage = AudioFeatures.factory(CFG)(src)
    want_out = list(file_stage.run(plain))
    assert [type(o).__name__ for o in out] == [type(o).__name__ for o in want_out]
    got, want = _audio_of(out), _audio_of(want_out)
    assert got and any(w is not None for w in want)
    for a, b, sa, sb in zip(
        got, want, [o for o in out if isinstance(o, Segment)], [o for o in want_out if isinstance(o, Segment)]
    ):
        assert (a is None) == (b is None)
        torch.testing.assert_close(sa.pixels, sb.pixels, rtol=0, atol=0)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert stage.stats["segments_without_audio"] == file_stage.stats["segments_without_audio"]


def test_the_decoder_opens_the_file_once_for_video_and_audio(audio_media, monkeypatch):
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    src, items = _decoded_segments(audio_media["mp4"], "fps:4", 4, audio=CFG.audio_format)
    n_probe = len(opened)  # frames() probes before it returns
    out = list(AudioFeatures.factory(CFG)(src).run(items))
    assert len(opened) == n_probe + 1
    assert all(s.audio is not None for s in out if isinstance(s, Segment))


def test_a_resumed_stream_gets_audio_from_where_it_resumes(audio_media):
    src, items = _decoded_segments(audio_media["mp4"], "fps:4", 4, audio=CFG.audio_format, start_time=2.2)
    stage = AudioFeatures.factory(CFG)(src)
    segs = [o for o in stage.run(items) if isinstance(o, Segment)]
    assert segs and segs[0].t_start >= 2.2 - 1e-6
    hi = _expected_bin(HIGH)
    for s in segs:
        assert s.audio is not None and abs(int(s.audio[: CFG.n_mels].argmax()) - hi) <= 1


def test_a_file_without_audio_asked_for_audio_falls_back_quietly(audio_media, caplog):
    from vmstream.stages.media import AudioChunk, AudioTrack

    src, items = _decoded_segments(audio_media["silent"], "fps:4", 4, audio=CFG.audio_format)
    items = list(items)
    assert not any(isinstance(i, (AudioTrack, AudioChunk)) for i in items)
    with caplog.at_level(logging.INFO, logger="vmstream.stages.audio"):
        out = list(AudioFeatures.factory(CFG)(src).run(iter(items)))
    assert all(s.audio is None for s in out if isinstance(s, Segment))
    assert any("no audio track" in r.getMessage() for r in caplog.records)


def test_segments_wait_for_their_audio_only_as_long_as_the_interleaving_allows():
    """A track that ends early must not hold every later segment until the end of the
    stream: once the video is `interleave_seconds` past a segment, it goes out."""
    from vmstream.stages.media import AudioChunk, AudioTrack

    cfg = AudioConfig(interleave_seconds=3.0)
    x = (0.5 * np.sin(2 * np.pi * LOW * np.arange(cfg.sample_rate) / cfg.sample_rate)).astype(np.float32)
    consumed = []

    def items():
        yield AudioTrack("s", cfg.audio_format)
        yield AudioChunk("s", x, 0.0)  # one second of audio, then none
        for i in range(20):
            consumed.append(i)
            yield Segment(stream_id="s", index=i, t_start=float(i), t_end=i + 0.9, pixels=None)
        yield StreamEvent("s", "end", details={"reason": "eof"})

    stage = AudioFeatures(cfg)
    out = stage.run(items())
    first = next(out)
    assert first.index == 0 and len(consumed) <= 6  # released at video time ~3.9 s, not at the end
    rest = list(out)
    segs = [first] + [o for o in rest if isinstance(o, Segment)]
    assert [s.index for s in segs] == list(range(20)) and rest[-1].kind == "end"
    assert segs[0].audio is not None and all(s.audio is None for s in segs[1:])
    want = reference_logmel_summary(x, 0.0, [(0.0, 0.9)], cfg)[0]
    np.testing.assert_allclose(segs[0].audio, want, rtol=1e-4, atol=1e-4)
