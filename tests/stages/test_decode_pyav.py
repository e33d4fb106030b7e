"""The PyAV decoder on real encoded files (tests/fixtures/media.py).

Two independent references hold it:
- plain PyAV decoding every frame (`_all_frames`) gives the true presentation times,
  so the selected times must be exactly `frames_for_targets` of them;
- the decoder's own "full" mode (decode everything, pick on output) is the readable
  reference the fast modes ("seek", "filter") must match bit for bit.
"""

import os
import shutil
import subprocess
import threading

import av
import numpy as np
import pytest

from tests.fixtures.media import MEDIA, ROTATED, make_video
from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode import make_decoder
from vmstream.stages.decode.base import (
    FrameSize,
    InputNotFoundError,
    NotAVideoError,
    NoVideoTrackError,
    VideoInputError,
)
from vmstream.stages.decode.pyav import FrameConverter, PyAVDecoder
from vmstream.stages.sampling import (
    AllFrames,
    FpsSampling,
    FrameIndexSampling,
    TsnSampling,
    UniformSampling,
    frames_for_targets,
)
from vmstream.stages.sources import source_from_uri

SMALL = FrameSize(32, 32)


def decode(path, policy, size=SMALL, mode="auto", **kw):
    items = list(PyAVDecoder(exact_mode=mode).frames(source_from_uri(path), policy, size, **kw))
    frames = [i for i in items if isinstance(i, Frame)]
    events = [i for i in items if isinstance(i, StreamEvent)]
    assert events and events[-1].kind == "end" and items[-1] is events[-1]
    return frames, events[-1]


def _all_frames(path):
    """(presentation times, key flags) of every frame, by plain PyAV."""
    with av.open(path) as c:
        s = c.streams.video[0]
        out = [(float(f.pts * s.time_base), bool(f.key_frame)) for f in c.decode(s)]
    return np.array([t for t, _ in out]), np.array([k for _, k in out])


def expected_times(path, policy, info):
    """The reference selection applied to the true frame times."""
    times, _ = _all_frames(path)
    targets = policy.target_times(info)
    if not isinstance(targets, np.ndarray):  # fps: endless iterator, cut at the end
        end = times[-1] + 1.0 / info.fps
        tl = []
        for t in targets:
            if t >= end - 1e-3:
                break
            tl.append(t)
        targets = np.array(tl)
    idx = frames_for_targets(times, targets)
    if not policy.repeats:
        idx = np.unique(idx)
    return times[idx]


def assert_same_frames(a, b):
    assert [f.t for f in a] == [f.t for f in b]
    for x, y in zip(a, b):
        assert x.image.dtype == np.uint8 and x.image.shape == y.image.shape
        assert np.array_equal(x.image, y.image), f"pixels differ at t={x.t}"


# --------------------------------------------------------------------------- probe


def test_probe_describes_the_fixtures(h264_mp4, vp9_webm, h264_ts, one_frame_mp4, vfr_mp4):
    d = PyAVDecoder()
    i = d.probe(h264_mp4)
    m = MEDIA["h264_mp4"]
    assert (i.width, i.height) == m["size"] and i.codec == "h264" and i.fps == 25
    assert i.frame_count == 100 and i.frame_count_exact and i.has_audio
    assert i.duration == pytest.approx(4.0) and i.start_time == 0.0
    v = d.probe(vp9_webm)
    assert v.codec == "vp9" and v.has_audio and v.fps == 25 and v.duration == pytest.approx(2.0, abs=0.1)
    t = d.probe(h264_ts)
    assert t.container == "mpegts" and t.start_time > 0 and t.frame_count == 100
    assert not t.frame_count_exact
    assert d.probe(one_frame_mp4).frame_count == 1
    counted = d.probe(vfr_mp4, count=True)
    assert counted.frame_count == MEDIA["vfr_mp4"]["frames"] and counted.frame_count_exact


def test_bad_inputs_fail_before_any_work_with_the_input_named(tmp_path, not_a_video, no_video_track):
    d = PyAVDecoder()
    missing = str(tmp_path / "nope.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = [
        (missing, InputNotFoundError, "no such file"),
        (not_a_video, NotAVideoError, "not a video"),
        (no_video_track, NoVideoTrackError, "no video track"),
        (str(tmp_path), NotAVideoError, "directory"),
        (str(empty), NotAVideoError, "empty"),
    ]
    for path, err, words in cases:
        with pytest.raises(err, match=words) as e:
            d.probe(path)
        assert path in str(e.value) and e.value.uri == path
        # frames() raises at the call, before anything is iterated.
        with pytest.raises(err):
            d.frames(source_from_uri(path), FpsSampling(1), SMALL)
        assert isinstance(e.value, VideoInputError)


def test_absurd_options_are_rejected(h264_mp4):
    for bad in [
        dict(height=100, width=224),
        dict(height=0, width=224),
        dict(height=-16, width=16),
        dict(height=224, width=224, mode="stretch"),
        dict(height=224.0, width=224),
        dict(height=224, width=224, interpolation="smooth"),
    ]:
        with pytest.raises(ValueError):
            FrameSize(**bad)
    d = PyAVDecoder()
    with pytest.raises(ValueError, match="start_time"):
        d.frames(source_from_uri(h264_mp4), FpsSampling(1), SMALL, start_time=-1)
    with pytest.raises(ValueError):
        PyAVDecoder(exact_mode="fastest")


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize("name", ["h264_mp4", "vp9_webm", "vfr_mp4", "h264_ts"])
def test_selected_times_are_the_frames_on_screen_at_the_targets(media, name):
    path = media.path(name)
    info = PyAVDecoder().probe(path, count=(name == "vfr_mp4"))
    for policy in (FpsSampling(1), FpsSampling(7), UniformSampling(10), TsnSampling(6)):
        frames, end = decode(path, policy)
        assert [f.t for f in frames] == pytest.approx(list(expected_times(path, policy, info)), abs=1e-9)
        assert end.details["reason"] == "eof" and end.details["frames"] == len(frames)
        assert [f.index for f in frames] == list(range(len(frames)))
        assert all(f.stream_id == path for f in frames)


@pytest.mark.parametrize("name", ["h264_mp4", "h264_ts", "open_gop_mp4", "vfr_mp4", "vp9_webm"])
def test_fast_modes_are_bit_identical_to_decoding_everything(media, name):
    path = media.path(name)
    policies = [
        FpsSampling(1),
        FpsSampling(3.3),
        UniformSampling(7),
        TsnSampling(5, train=True, seed=3),
        TsnSampling(9, train=True, seed=11),
        FrameIndexSampling([3, 3, 26, 49, 77, 1000]),
    ]
    for policy in policies:
        ref, ref_end = decode(path, policy, mode="full")
        assert ref_end.details["mode"] == "full" and ref_end.details["seeks"] == 0
        for mode in ("seek", "filter"):
            got, end = decode(path, policy, mode=mode)
            assert_same_frames(ref, got)
            assert end.details["reason"] == "eof"


def test_the_filter_skips_work(h264_mp4):
    _, full = decode(h264_mp4, FpsSampling(1), mode="full")
    _, seek = decode(h264_mp4, FpsSampling(1), mode="seek")
    _, filt = decode(h264_mp4, FpsSampling(1), mode="filter")
    assert full.details["fed"] == 100
    # GOP tails after the last wanted frame are cut...
    assert seek.details["fed"] < 100
    # ...and unwanted non-reference B-frames are never fed.
    assert filt.details["fed"] < seek.details["fed"]
    assert filt.details["inspected"] > 0 and filt.details["mode"] == "filter"


def test_bit_identical_on_harder_h264_structures(tmp_path):
    # Interlaced (field pictures), many B-frames with open GOPs and scene cuts: the
    # cases where a wrong dependency assumption would show.
    cases = {
        "interlaced.mp4": "keyint=30:bframes=2:interlaced=1:tff=1",
        "open_sc.ts": "keyint=40:bframes=5:open-gop=1:ref=5:b-adapt=2:scenecut=60",
    }
    for fname, params in cases.items():
        p = str(tmp_path / fname)
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=160x96:rate=30:duration=5",
                "-vf",
                "noise=alls=10:allf=t",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-x264-params",
                params,
                p,
            ],
            check=True,
        )
        for policy in (FpsSampling(1.7), TsnSampling(8, train=True, seed=5)):
            ref, _ = decode(p, policy, mode="full")
            got, _ = decode(p, policy, mode="filter")
            assert_same_frames(ref, got)


def test_sparse_targets_seek_in_long_files(tmp_path):
    p = make_video(str(tmp_path / "long.mp4"), fps=30, seconds=40, size=(128, 96), gop=30)
    ref, _ = decode(p, UniformSampling(4), mode="full")
    got, end = decode(p, UniformSampling(4), mode="filter")
    assert_same_frames(ref, got)
    assert end.details["seeks"] >= 2
    assert end.details["packets"] < 1200 / 2  # most of the file is never read


def test_resume_from_start_time_drops_earlier_frames(h264_mp4, h264_ts):
    for path in (h264_mp4, h264_ts):
        every, _ = decode(path, FpsSampling(5), mode="full")
        t0 = every[0].t
        for mode in ("full", "filter"):
            got, _ = decode(path, FpsSampling(5), mode=mode, start_time=t0 + 1.3)
            assert_same_frames([f for f in every if f.t >= t0 + 1.3 - 1e-6], got)
        frames, _ = decode(path, AllFrames(), start_time=t0 + 2.0)
        assert frames[0].t == pytest.approx(t0 + 2.0) and len(frames) == 50


def test_resume_off_grid_returns_no_frame_before_start_time(tmp_path):
    # 4 fps targets on a 10 fps file: the frame on screen at the first target after
    # start_time (3.75 s) is the one at 3.7 s, before start_time; it must not come back.
    path = make_video(str(tmp_path / "v.mp4"), fps=10, seconds=8, gop=20, size=(64, 48))
    every, _ = decode(path, FpsSampling(4), mode="full")
    start = every[15].t + 1e-5
    for mode in ("full", "filter"):
        got, _ = decode(path, FpsSampling(4), mode=mode, start_time=start)
        assert got[0].t > every[15].t
        assert_same_frames([f for f in every if f.t >= start], got)


def test_all_frames_and_short_videos(h264_mp4, vfr_mp4, one_frame_mp4):
    frames, end = decode(h264_mp4, AllFrames())
    assert [f.t for f in frames] == pytest.approx([k / 25 for k in range(100)])
    times, _ = _all_frames(vfr_mp4)
    vfr, _ = decode(vfr_mp4, AllFrames())
    assert [f.t for f in vfr] == list(times)
    assert np.diff(times[:30]) == pytest.approx(1 / 30) and np.diff(times[30:]) == pytest.approx(0.1)
    one, end = decode(one_frame_mp4, UniformSampling(16))
    assert len(one) == 16 and all(f.t == 0.0 for f in one)  # repeated to keep T fixed
    assert all(np.array_equal(f.image, one[0].image) for f in one)
    fps, _ = decode(one_frame_mp4, FpsSampling(5))
    assert len(fps) == 1


def test_keyframes_only_returns_keyframes_approximately_in_time(h264_mp4, open_gop_mp4):
    for path in (h264_mp4, open_gop_mp4):
        times, keys = _all_frames(path)
        kf, end = decode(path, AllFrames(keyframes_only=True))
        assert [f.t for f in kf] == list(times[keys])
        assert end.details["fed"] == int(keys.sum())
        # Each target gets the last keyframe at or before it.
        got, _ = decode(path, FpsSampling(2, keyframes_only=True))
        ktimes = times[keys]
        tg = np.arange(0, times[-1] + 0.04, 0.5)
        assert [f.t for f in got] == list(np.unique(ktimes[frames_for_targets(ktimes, tg)]))
        # Pixels are the same keyframes the exact decoder gives.
        exact, _ = decode(path, AllFrames())
        by_t = {f.t: f for f in exact}
        for f in kf:
            assert np.array_equal(f.image, by_t[f.t].image)


# --------------------------------------------------------------------------- pixels


def test_frames_are_swscale_resized_and_centre_cropped(h264_mp4):
    with av.open(h264_mp4) as c:
        first = next(c.decode(video=0))
        # 320x240 -> short side 224 -> 299x224, centre crop x 37..261.
        scaled = first.to_ndarray(width=299, height=224, format="gbrp", interpolation="BILINEAR")
        direct = first.to_ndarray(width=64, height=48, format="gbrp", interpolation="BILINEAR")
        full_rgb = first.to_ndarray(format="rgb24")
    assert FrameSize(224, 224).scaled_size(320, 240) == (299, 224)
    f0, _ = decode(h264_mp4, FpsSampling(1), size=FrameSize(224, 224))
    assert f0[0].image.shape == (224, 224, 3) and f0[0].image.flags.c_contiguous
    assert np.array_equal(f0[0].image, scaled[:, 37:261])
    d0, _ = decode(h264_mp4, FpsSampling(1), size=FrameSize(48, 64, mode="direct"))
    assert np.array_equal(d0[0].image, direct)
    a0, _ = decode(h264_mp4, FpsSampling(1), size=FrameSize(48, 64, mode="direct", interpolation="area"))
    assert a0[0].image.shape == (48, 64, 3) and not np.array_equal(a0[0].image, direct)
    # Non-square targets crop the other way.
    assert FrameSize(224, 160).scaled_size(320, 240) == (299, 224)
    assert FrameSize(160, 320).scaled_size(320, 240) == (320, 240)
    # The readable reference: full-resolution RGB, antialiased bilinear in float, crop.
    import torch

    x = torch.from_numpy(full_rgb).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(x, size=(224, 299), mode="bilinear", antialias=True)
    ref = ref[0].permute(1, 2, 0).numpy()[:, 37:261]
    err = np.abs(f0[0].image.astype(np.float32) - ref)
    assert err.mean() < 4.0 and np.median(err) < 1.5  # edges of the pattern differ most (4:2:0 chroma)


def test_display_rotation_is_applied_like_ffmpeg(rotated_mp4):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg CLI not installed")
    w, h = ROTATED["size"]
    raw = subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-i",
            rotated_mp4,
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    ref = np.frombuffer(raw, np.uint8).reshape(w, h, 3)  # FFmpeg autorotates: portrait
    frames, _ = decode(rotated_mp4, AllFrames(), size=FrameSize(w, h, mode="direct"))
    img = frames[0].image
    assert img.shape == (w, h, 3)
    assert np.abs(img.astype(int) - ref).mean() < 1.0
    assert np.abs(np.rot90(img, 2).astype(int) - ref).mean() > 20  # the test can tell


def test_converter_reuses_one_reformatter_across_sizes(h264_mp4):
    conv = FrameConverter(FrameSize(32, 48, mode="direct"))
    with av.open(h264_mp4) as c:
        for i, f in enumerate(c.decode(video=0)):
            assert conv(f).shape == (32, 48, 3)
            if i == 3:
                break
        small = f.reformat(width=160, height=120)  # a mid-stream size change
        assert conv(small).shape == (32, 48, 3)


# --------------------------------------------------------------------------- damage


def test_truncated_file_decodes_what_is_there_and_says_so(truncated_mp4):
    for policy in (AllFrames(), FpsSampling(2)):
        frames, end = decode(truncated_mp4, policy)
        assert len(frames) > 0
        assert end.details["reason"] == "truncated" and end.details["broken_packets"] >= 1
        assert frames[-1].t < 4.0 and end.message


def test_truncated_webm_without_a_frame_index_is_reported_truncated(tmp_path):
    # WebM has no exact frame index; the header's duration still shows the cut.
    full = make_video(str(tmp_path / "full.webm"), codec="vp9", fps=25, seconds=10, gop=25)
    cut = tmp_path / "cut.webm"
    data = open(full, "rb").read()
    cut.write_bytes(data[: len(data) * 45 // 100])
    frames, end = decode(str(cut), FpsSampling(2))
    assert frames and frames[-1].t < 6.0
    assert end.details["reason"] == "truncated" and "container says" in end.message
    _, end_full = decode(full, FpsSampling(2))
    assert end_full.details["reason"] == "eof"


def test_corrupt_file_counts_broken_packets_and_ends_cleanly(corrupt_mp4):
    frames, end = decode(corrupt_mp4, AllFrames())
    assert 50 < len(frames) <= 100
    assert end.details["reason"] == "truncated" and end.details["broken_packets"] > 0


# --------------------------------------------------------------------------- control


def test_stop_event_and_closing_the_iterator(h264_mp4):
    stop = threading.Event()
    it = PyAVDecoder().frames(source_from_uri(h264_mp4), AllFrames(), SMALL, stop=stop)
    first = next(it)
    assert isinstance(first, Frame)
    stop.set()
    rest = list(it)
    assert rest[-1].kind == "end" and rest[-1].details["reason"] == "stopped"
    assert len(rest) < 99
    it2 = PyAVDecoder().frames(source_from_uri(h264_mp4), AllFrames(), SMALL)
    next(it2)
    it2.close()  # releases the container; nothing raised


def test_make_decoder_falls_back_to_pyav_without_a_gpu(caplog):
    dec = make_decoder("auto")
    from vmstream.stages.decode import gpu_available

    if not gpu_available():
        assert isinstance(dec, PyAVDecoder)
    assert isinstance(make_decoder("pyav", exact_mode="full"), PyAVDecoder)
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("nvdec")


def test_gop_workers_reach_pyav_from_the_config():
    from vmstream.pipeline.assembly import make_decoder as from_config
    from vmstream.pipeline.config import load_config

    assert from_config(load_config(overrides={"decode": {"backend": "pyav"}})).gop_workers == 2
    assert from_config(load_config(overrides={"decode": {"backend": "pyav", "gop_workers": 1}})).gop_workers == 1
    assert make_decoder("pyav", gop_workers=3).gop_workers == 3


def test_source_ffmpeg_options_reach_the_demuxer(tmp_path, h264_ts):
    # A raw TS copy named .bin: FFmpeg probes it anyway; forcing a wrong format fails
    # with a clear error naming the input.
    p = str(tmp_path / "stream.bin")
    shutil.copy(h264_ts, p)
    d = PyAVDecoder()
    assert d.probe(p, {"format": "mpegts"}).codec == "h264"
    with pytest.raises(NotAVideoError, match=os.path.basename(p)):
        d.probe(p, {"format": "ivf"})
