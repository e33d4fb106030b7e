"""Sampling policies: pure functions from stream info to target times."""

import itertools
import math

import numpy as np
import pytest

from vmstream.stages.media import StreamInfo
from vmstream.stages.sampling import (
    SAMPLING_KINDS,
    AllFrames,
    FpsSampling,
    FrameIndexSampling,
    TsnSampling,
    UniformSampling,
    frames_for_targets,
    make_policy,
    parse_policy,
    stream_length,
)


def info(n=300, fps=30.0, start=0.0, uri="v.mp4", **kw):
    return StreamInfo(
        uri=uri,
        width=64,
        height=48,
        codec="h264",
        fps=fps,
        duration=None if n is None or fps is None else n / fps,
        frame_count=n,
        frame_count_exact=n is not None,
        start_time=start,
        **kw,
    )


def test_frames_for_targets_is_the_frame_on_screen():
    ft = np.array([0.0, 0.04, 0.08, 0.12])
    # Exactly on a frame, just before the next, before the first, after the last.
    assert frames_for_targets(ft, [0.04, 0.0799, -1.0, 5.0]).tolist() == [1, 1, 0, 3]
    # Float noise below the eps does not fall back to the previous frame.
    assert frames_for_targets(ft, [0.08 - 1e-9]).tolist() == [2]
    with pytest.raises(ValueError):
        frames_for_targets([], [0.0])
    with pytest.raises(ValueError):
        frames_for_targets([0.1, 0.0], [0.0])


def test_fps_targets_follow_the_stream_clock_without_drift():
    i = info(n=36000, fps=30.0, start=1.5)  # 20 minutes
    ts = list(FpsSampling(1.0).target_times(i))
    assert ts[0] == 1.5 and ts[1] == 2.5
    # start + k / fps, not accumulated: the 1200th target is exact.
    assert ts[1200] == 1.5 + 1200.0
    # Ends shortly after the duration (a short estimate must not lose the tail).
    assert 1.5 + 1200 <= ts[-1] < 1.5 + 1200 + 1.0 + 1e-9
    # Endless for a stream without a duration.
    live = StreamInfo("rtsp://x", 64, 48, "h264", live=True)
    assert len(list(itertools.islice(FpsSampling(2.0).target_times(live), 1000))) == 1000


def test_uniform_spans_first_to_last_frame_and_repeats_on_short_videos():
    i = info(n=100, fps=25.0)
    t = UniformSampling(5).target_times(i)
    idx = frames_for_targets(np.arange(100) / 25.0, t)
    assert idx.tolist() == [0, 25, 50, 74, 99]
    # A one-frame video still yields N targets (all on its frame), like the official loaders.
    t1 = UniformSampling(16).target_times(info(n=1, fps=25.0))
    assert len(t1) == 16 and np.all(t1 == 0.0)
    assert UniformSampling(1).frame_indices(100).tolist() == [49]
    assert UniformSampling(8).repeats and not FpsSampling(1).repeats


def test_tsn_eval_takes_chunk_centres_and_train_is_seeded_within_chunks():
    n, N = 300, 8
    ev = TsnSampling(N).frame_indices(n)
    chunk = (n - 1) / N
    lo = np.round(chunk * np.arange(N)).astype(int)
    hi = np.round(chunk * np.arange(1, N + 1)).astype(int)
    assert ev.tolist() == ((lo + hi) // 2).tolist()
    tr = TsnSampling(N, train=True, seed=7)
    a = tr.target_times(info(n=n))
    b = tr.target_times(info(n=n))
    assert np.array_equal(a, b)  # reproducible per (seed, input)
    other = tr.target_times(info(n=n, uri="other.mp4"))
    assert not np.array_equal(a, other)  # different inputs, different draws
    for _ in range(20):
        idx = tr.frame_indices(n, np.random.default_rng())
        assert np.all((idx >= lo) & (idx <= hi))
    assert np.all(np.diff(ev) > 0)


def test_stream_length_from_any_two_of_count_duration_fps():
    assert stream_length(info(n=100, fps=25.0)) == (100, 25.0)
    no_count = StreamInfo("a", 1, 1, "h264", fps=25.0, duration=4.0)
    assert stream_length(no_count) == (100, 25.0)
    no_fps = StreamInfo("a", 1, 1, "h264", duration=4.0, frame_count=100)
    assert stream_length(no_fps) == (100, 25.0)
    with pytest.raises(ValueError, match="a: this sampling policy needs"):
        stream_length(StreamInfo("a", 1, 1, "h264", fps=25.0))


def test_absurd_options_are_rejected_up_front():
    for bad in (0, -1, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="fps"):
            FpsSampling(bad)
    for bad in (0, -3, 2.5, None, True):
        with pytest.raises(ValueError, match="num_frames"):
            UniformSampling(bad)
        with pytest.raises(ValueError, match="num_frames"):
            TsnSampling(bad)


def test_length_policies_refuse_live_streams():
    live = StreamInfo("rtsp://cam", 0, 0, "", live=True)
    with pytest.raises(ValueError, match="live"):
        UniformSampling(8).check_for(live)
    FpsSampling(1).check_for(live)
    AllFrames().check_for(live)


def test_online_fps_keeps_the_first_frame_of_each_slot():
    sel = FpsSampling(2.0).online()
    times = np.arange(0, 3.0, 1 / 30) + 100.0  # 30 fps wall clock
    kept = [t for t in times if sel.accept(float(t))]
    assert len(kept) == 6
    assert np.allclose(np.diff(kept), 0.5, atol=1e-6)
    # After a jump (a reconnect), it keeps the next frame and does not burst.
    assert sel.accept(200.0) and not sel.accept(200.01) and sel.accept(200.5)
    assert all(AllFrames().online().accept(t) for t in (1.0, 1.0, 2.0))


def test_parse_policy():
    assert parse_policy("fps:2") == FpsSampling(2.0)
    assert parse_policy("fps:0.5:keyframes") == FpsSampling(0.5, keyframes_only=True)
    assert parse_policy("uniform:16") == UniformSampling(16)
    assert parse_policy("tsn:8:train") == TsnSampling(8, train=True)
    assert parse_policy("keyframes") == AllFrames(keyframes_only=True)
    assert parse_policy({"kind": "tsn", "num_frames": 4, "seed": 1}) == TsnSampling(4, seed=1)
    for bad in ("", "fps", "fps:0", "uniform:x", "sometimes:3", {"kind": "fps", "rate": 1}, 5):
        with pytest.raises(ValueError):
            parse_policy(bad)


def test_config_and_cli_sampling_names_are_the_factorys():
    """What users can name (decode.sampling, `run --sampling`) is exactly what the one
    factory makes, TSN included (the pipeline used to build its own, without TSN)."""
    import argparse

    from vmstream.cli.run import add_parser
    from vmstream.pipeline.assembly import sampling_policy
    from vmstream.pipeline.config import load_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    (cli_choices,) = [
        a.choices for a in parser._subparsers._group_actions[0].choices["run"]._actions if a.dest == "sampling"
    ]
    assert tuple(cli_choices) == SAMPLING_KINDS
    want = {
        "fps": FpsSampling(2.0),
        "uniform": UniformSampling(6),
        "tsn": TsnSampling(6),
        "keyframes": AllFrames(keyframes_only=True),
        "all": AllFrames(),
    }
    assert set(want) == set(SAMPLING_KINDS)
    for kind, policy in want.items():
        cfg = load_config(sets=[f"decode.sampling={kind}", "decode.fps=2", "decode.uniform_frames=6"])
        assert sampling_policy(cfg) == policy == make_policy(kind, fps=2, num_frames=6)
    with pytest.raises(ValueError, match="sampling kind 'sometimes'"):
        make_policy("sometimes")


def test_positional_args_mean_the_policy_parameter():
    assert FpsSampling(3).fps == 3 and not FpsSampling(3).keyframes_only
    assert UniformSampling(4).num_frames == 4
    assert math.isclose(FpsSampling(1, keyframes_only=True).fps, 1.0)


def test_frame_index_sampling_for_training_loaders():
    p = FrameIndexSampling([30, 0, 0, 299, 5000])
    assert p.indices == (0, 0, 30, 299, 5000) and p.repeats
    t = p.target_times(info(n=300, fps=30.0, start=2.0))
    assert frames_for_targets(2.0 + np.arange(300) / 30.0, t).tolist() == [0, 0, 30, 299, 299]
    for bad in ([], [-1], ["a"], None):
        with pytest.raises(ValueError):
            FrameIndexSampling(bad)
