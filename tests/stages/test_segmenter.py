"""Segmenter: frames into normalised [3, T, H, W] segments; events pass through."""

import math

import numpy as np
import pytest
import torch

from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD
from vmstream.records import Frame, Segment, StreamEvent
from vmstream.stages.decode.pyav import PyAVDecoder
from vmstream.stages.media import AudioChunk, AudioFormat, AudioTrack, FrameSize
from vmstream.stages.sampling import FpsSampling
from vmstream.stages.segmenter import (
    Segmenter,
    frames_to_pixels,
    group_by_shape,
    normalize_reference,
    stack_segments,
)
from vmstream.stages.sources import source_from_uri

RNG = np.random.default_rng(0)


def frames(n, sid="s", t0=0.0, dt=1.0, h=32, w=32, gap_at=None):
    out = []
    for i in range(n):
        img = RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        gap = (t0 + (i - 1) * dt, t0 + i * dt) if gap_at == i else None
        out.append(Frame(stream_id=sid, index=i, t=t0 + i * dt, image=img, gap=gap))
    return out


def end(sid="s", n=0):
    return StreamEvent(sid, "end", details={"frames": n, "reason": "eof"}, uri=f"{sid}.mp4")


def test_fast_normalisation_matches_the_reference():
    imgs = [f.image for f in frames(5, h=48, w=64)]
    fast = frames_to_pixels(imgs)
    ref = normalize_reference(imgs)
    assert fast.shape == (3, 5, 48, 64) and fast.dtype == torch.float32 and fast.is_contiguous()
    assert torch.allclose(fast, ref, atol=1e-6, rtol=0)
    # The definition, spelled out for one pixel.
    c, t, y, x = 2, 3, 10, 20
    want = (imgs[t][y, x, c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    assert math.isclose(float(fast[c, t, y, x]), want, abs_tol=1e-6)
    tens = frames_to_pixels([torch.from_numpy(i) for i in imgs])
    assert torch.equal(tens, fast)
    with pytest.raises(ValueError):
        frames_to_pixels([np.zeros((8, 8), np.uint8)])


def test_full_and_partial_segments_with_is_last():
    seg = Segmenter(num_frames=4)
    out = list(seg.segments(frames(10) + [end(n=10)], uri="s.mp4"))
    segs = [o for o in out if isinstance(o, Segment)]
    assert [s.num_frames for s in segs] == [4, 4, 2]
    assert [s.index for s in segs] == [0, 1, 2]
    assert [s.is_last for s in segs] == [False, False, True]
    assert segs[1].t_start == 4.0 and segs[1].t_end == 7.0
    assert segs[1].frame_times == (4.0, 5.0, 6.0, 7.0)
    assert isinstance(out[-1], StreamEvent) and out[-1].kind == "end"
    assert all(s.uri == "s.mp4" for s in segs)


def test_drop_last_and_exact_multiples():
    segs = [o for o in Segmenter(4, drop_last=True).segments(frames(10) + [end()]) if isinstance(o, Segment)]
    assert [s.num_frames for s in segs] == [4, 4] and segs[-1].is_last
    segs = [o for o in Segmenter(5).segments(frames(10) + [end()]) if isinstance(o, Segment)]
    assert [s.num_frames for s in segs] == [5, 5] and [s.is_last for s in segs] == [False, True]
    # Shorter than one segment: kept with its true length, or nothing when dropped.
    assert [o.num_frames for o in Segmenter(16).segments(frames(3) + [end()]) if isinstance(o, Segment)] == [3]
    assert not [o for o in Segmenter(16, drop_last=True).segments(frames(3) + [end()]) if isinstance(o, Segment)]


def test_pixels_are_the_frames_in_order():
    fs = frames(4)
    (s,) = [o for o in Segmenter(4).segments(fs + [end()]) if isinstance(o, Segment)]
    assert torch.equal(s.pixels, frames_to_pixels([f.image for f in fs]))


def test_gaps_attach_to_the_next_segment_once():
    fs = frames(8, gap_at=5)
    gap_event = StreamEvent("s", "gap", t_start=4.0, t_end=5.0)
    items = fs[:5] + [gap_event] + fs[5:] + [end()]
    out = list(Segmenter(4).segments(items))
    segs = [o for o in out if isinstance(o, Segment)]
    assert segs[0].gaps == () and segs[1].gaps == ((4.0, 5.0),)  # event and Frame.gap: once
    assert gap_event in out


def test_events_pass_through_and_streams_interleave():
    a, b = frames(6, sid="a"), frames(3, sid="b", t0=100.0)
    err = StreamEvent("a", "error", message="hiccup")
    items = [a[0], b[0], a[1], b[1], a[2], err, b[2], a[3], end("b"), a[4], a[5], end("a")]
    out = list(
        Segmenter(
            2,
        ).segments(items, first_index=7)
    )
    sa = [o for o in out if isinstance(o, Segment) and o.stream_id == "a"]
    sb = [o for o in out if isinstance(o, Segment) and o.stream_id == "b"]
    assert [s.index for s in sa] == [7, 8, 9] and [s.is_last for s in sa] == [False, False, True]
    assert [s.num_frames for s in sb] == [2, 1] and sb[-1].is_last
    assert err in out
    assert [o.kind for o in out if isinstance(o, StreamEvent)] == ["error", "end", "end"]
    with pytest.raises(ValueError):
        Segmenter(0)
    with pytest.raises(TypeError):
        list(Segmenter(2).segments([42]))


def test_audio_records_pass_through_in_order():
    """Audio read in the decoder's pass travels beside the frames to the audio stage."""
    track = AudioTrack("a", AudioFormat(16000))
    chunk = AudioChunk("a", np.zeros(160, np.float32), 0.0)
    fr = frames(3, sid="a")
    out = list(Segmenter(2).segments([track, fr[0], chunk, fr[1], fr[2], end("a")]))
    assert [type(o).__name__ for o in out] == ["AudioTrack", "AudioChunk", "Segment", "Segment", "StreamEvent"]
    assert out[0] is track and out[1] is chunk


def test_a_caller_that_stops_early_still_gets_the_buffered_frames():
    segs = [o for o in Segmenter(4).segments(frames(6)) if isinstance(o, Segment)]
    assert [s.num_frames for s in segs] == [4, 2] and segs[-1].is_last


def test_stack_segments_for_a_batch():
    s1 = [o for o in Segmenter(4).segments(frames(8, sid="x") + [end("x")]) if isinstance(o, Segment)]
    s2 = [o for o in Segmenter(4).segments(frames(6, sid="y") + [end("y")]) if isinstance(o, Segment)]
    batch = stack_segments([s1[0], s2[0]])
    assert batch.shape == (2, 3, 4, 32, 32)
    assert torch.equal(batch[1], s2[0].pixels)
    with pytest.raises(ValueError, match="group_by_shape"):
        stack_segments([s1[0], s2[1]])
    groups = group_by_shape([s1[0], s2[1], s1[1]])
    assert [len(g) for g in groups] == [2, 1]


def test_on_a_decoded_file(h264_mp4):
    src = source_from_uri(h264_mp4)
    items = PyAVDecoder().frames(src, FpsSampling(5), FrameSize(64, 64))
    out = list(Segmenter(8).segments(items, uri=src.uri))
    segs = [o for o in out if isinstance(o, Segment)]
    assert [s.num_frames for s in segs] == [8, 8, 4]
    assert segs[0].pixels.shape == (3, 8, 64, 64)
    assert segs[1].t_start == pytest.approx(1.6) and segs[-1].is_last
    # ImageNet-normalised values: roughly zero-centred, within the possible range.
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert lo - 1e-5 <= float(segs[0].pixels.min()) and float(segs[0].pixels.max()) <= hi + 1e-5
    assert out[-1].kind == "end" and out[-1].details["frames"] == 20
