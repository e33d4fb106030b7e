"""The runner end to end: real encoded videos -> decode -> segments -> VideoMamba's
recurrent mode -> Parquet + FAISS + console, with a tiny checkpoint made here."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from vmstream.cli import main
from vmstream.pipeline.assembly import build_runner
from vmstream.pipeline.config import load_config
from vmstream.pipeline.sequential import embed_video
from vmstream.records import SegmentResult, segment_uid
from vmstream.stages.sources import resolve_sources
from vmstream.store import VideoStore
from vmstream.store.results import read_table


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    model = make_tiny_model(seed=3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _cfg(out, ckpt, **sets):
    base = {
        "model": {"checkpoint": ckpt, "name": None, "top_k": 3, "max_batch": 4},
        "decode": {"fps": 4.0, "img_size": 32},
        "output": {"dir": str(out), "console": False},
        "runner": {"progress": False, "snapshot_every": 2},
    }
    return load_config(overrides=base, sets=[f"{k}={v}" for k, v in sets.items()])


def test_precision_bf16_from_the_config_reaches_the_model(tmp_path, tiny_ckpt, h264_mp4):
    from vmstream.models.precision import precision_of
    from vmstream.pipeline.assembly import load_pipeline_model

    assert precision_of(load_pipeline_model(_cfg(tmp_path / "a", tiny_ckpt))) == "fp32"
    cfg = _cfg(tmp_path / "out", tiny_ckpt, **{"model.precision": "bf16"})
    model = load_pipeline_model(cfg)
    assert precision_of(model) == "bf16"
    report = build_runner(cfg, model=model).run(resolve_sources([h264_mp4]))
    assert report.streams == 1 and report.streams_failed == 0 and report.segments == 4
    seg = read_table(tmp_path / "out", "segments").to_pandas()
    assert all(np.isfinite(np.asarray(e)).all() for e in seg.embedding)


def test_single_file_writes_parquet_index_and_summary(tmp_path, tiny_ckpt, h264_mp4):
    # 4 s at 4 fps = 16 frames = 4 segments of T=4 (the checkpoint's num_frames).
    cfg = _cfg(tmp_path / "out", tiny_ckpt)
    runner = build_runner(cfg)
    report = runner.run(resolve_sources([h264_mp4]))
    assert report.streams == 1 and report.streams_failed == 0 and report.segments == 4
    seg = read_table(tmp_path / "out", "segments").to_pandas().sort_values("segment_index")
    assert list(seg.segment_index) == [0, 1, 2, 3]
    assert seg.t_start.is_monotonic_increasing and (seg.t_end >= seg.t_start).all()
    assert all(len(e) == 32 for e in seg.embedding) and all(len(lab) == 3 for lab in seg.labels)
    assert seg.uid.is_unique and list(seg.uid) == [segment_uid(seg.stream_id.iloc[0], i) for i in range(4)]
    summaries = read_table(tmp_path / "out", "summaries").to_pandas()
    assert len(summaries) == 1 and summaries.segment_count.iloc[0] == 4 and summaries.status.iloc[0] == "ok"
    events = read_table(tmp_path / "out", "events").to_pandas()
    assert (events.kind == "end").sum() == 1
    store = VideoStore(tmp_path / "out" / "index", readonly=True)
    assert len(store.ids) == 4 and store.dim == 32
    # Readable without vmstream: plain pandas over the part-file directory.
    assert len(pd.read_parquet(tmp_path / "out" / "segments")) == 4


def test_runner_equals_sequential_recurrent_mode(tmp_path, tiny_ckpt, h264_mp4):
    """Threads, queues and batching change nothing: the runner's embeddings equal
    model.forward_segment applied segment after segment with the carried state."""
    cfg = _cfg(tmp_path / "out", tiny_ckpt)
    build_runner(cfg).run(resolve_sources([h264_mp4]))
    got = read_table(tmp_path / "out", "segments").to_pandas().sort_values("segment_index")
    from vmstream.models import load_model

    model = load_model(tiny_ckpt, img_size=32)
    embs, spans = embed_video(cfg, model, h264_mp4)
    np.testing.assert_allclose(np.stack(got.embedding.to_numpy()), embs, rtol=1e-5, atol=1e-5)
    assert [tuple(s) for s in spans] == list(zip(got.t_start, got.t_end))


def test_many_streams_batched_match_one_by_one(tmp_path, tiny_ckpt, h264_mp4, vp9_webm_noaudio, h264_ts):
    srcs = [h264_mp4, vp9_webm_noaudio, h264_ts]
    cfg = _cfg(tmp_path / "batched", tiny_ckpt, **{"runner.max_streams": 3, "model.max_batch": 3})
    runner = build_runner(cfg)
    report = runner.run(resolve_sources(srcs))
    assert report.streams == 3 and report.streams_failed == 0
    assert max(runner.inference.stats.per_batch_size) >= 2, "streams were never batched together"
    batched = read_table(tmp_path / "batched", "segments").to_pandas().set_index("uid").sort_index()
    one = _cfg(tmp_path / "single", tiny_ckpt, **{"runner.max_streams": 1, "model.max_batch": 1})
    build_runner(one).run(resolve_sources(srcs))
    single = read_table(tmp_path / "single", "segments").to_pandas().set_index("uid").sort_index()
    assert list(batched.index) == list(single.index)
    np.testing.assert_allclose(
        np.stack(batched.embedding.to_numpy()), np.stack(single.embedding.to_numpy()), rtol=1e-4, atol=1e-5
    )


def test_directory_run_bad_files_fail_alone(tmp_path, tiny_ckpt, video_dir, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            video_dir,
            "--checkpoint",
            tiny_ckpt,
            "--out",
            str(out),
            "--fps",
            "4",
            "--set",
            "decode.img_size=32",
            "--no-progress",
        ]
    )
    assert rc == 1  # some inputs failed; the good ones are done
    seg = read_table(out, "segments").to_pandas()
    assert sorted(set(seg.stream_id.map(lambda s: s.rsplit("/", 1)[-1]))) == ["a.mp4", "b.webm"]
    events = read_table(out, "events").to_pandas()
    errors = events[events.kind == "error"]
    names = " ".join(errors.uri)
    assert "broken.mp4" in names and "sound.mp4" in names
    err = capsys.readouterr().err
    assert "FAILED" in err and "broken.mp4" in err


def test_cli_run_then_search(tmp_path, tiny_ckpt, h264_mp4, vp9_webm_noaudio, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                h264_mp4,
                vp9_webm_noaudio,
                "--checkpoint",
                tiny_ckpt,
                "--out",
                str(out),
                "--fps",
                "4",
                "--set",
                "decode.img_size=32",
                "--no-progress",
            ]
        )
        == 0
    )
    timeline = capsys.readouterr().out
    assert "stream" in timeline  # the console timeline and its summary table
    store = VideoStore(out / "index", readonly=True)
    uid = int(store.ids.table.column("uid")[0].as_py())
    assert main(["search", "--index", str(out), "--id", str(uid), "-k", "3", "--json"]) == 0
    hits = capsys.readouterr().out.strip().splitlines()
    assert len(hits) == 3 and str(uid) not in [h.split('"uid": ')[1].split(",")[0] for h in hits]
    # A query video: the same file must find its own segments first.
    assert main(["search", "--index", str(out), "--video", h264_mp4, "-k", "4", "--json"]) == 0
    import json

    hits = [json.loads(h) for h in capsys.readouterr().out.strip().splitlines()]
    assert hits and hits[0]["uri"].endswith(h264_mp4.rsplit("/", 1)[-1])
    sid = hits[0]["stream_id"]
    assert main(["search", "--index", str(out), "--stream", sid, "--at", "1.5", "-k", "2"]) == 0


def test_query_video_is_embedded_with_the_stores_sampling(tmp_path, tiny_ckpt, h264_mp4, capsys):
    """--checkpoint names the model anew, but decoding and segmenting still come from the
    store's run (here non-default fps and T): the same video at --at finds its own segment."""
    import json

    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                h264_mp4,
                "--checkpoint",
                tiny_ckpt,
                "--out",
                str(out),
                "--fps",
                "6",
                "--segment-frames",
                "2",
                "--set",
                "decode.img_size=32",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    store = VideoStore(out / "index", readonly=True)
    assert len(store) >= 4
    assert (
        main(
            [
                "search",
                "--index",
                str(out),
                "--video",
                h264_mp4,
                "--at",
                "1.0",
                "-k",
                "3",
                "--json",
                "--checkpoint",
                tiny_ckpt,
            ]
        )
        == 0
    )
    hits = [json.loads(h) for h in capsys.readouterr().out.strip().splitlines()]
    own = [h for h in hits if h["t_start"] <= 1.0 <= h["t_end"] + 1 / 6]
    assert own and own[0]["score"] >= hits[0]["score"] - 1e-5 and own[0]["score"] > 0.9999


def test_stop_and_resume_gives_the_uninterrupted_results(tmp_path, tiny_ckpt, media):
    from tests.fixtures.media import make_video

    # 40 segments, more than the queues hold, so the stop lands mid-stream.
    video = make_video(str(tmp_path / "long.mp4"), fps=10, seconds=40, gop=20, size=(64, 48))
    opts = {"runner.snapshot_every": 1, "runner.queue_size": 1}
    full = _cfg(tmp_path / "full", tiny_ckpt, **opts)
    build_runner(full).run(resolve_sources([video]))
    want = read_table(tmp_path / "full", "segments").to_pandas().set_index("uid").sort_index()
    assert len(want) == 40

    cfg = _cfg(tmp_path / "part", tiny_ckpt, **opts)
    seen = []

    def progress(item):
        if isinstance(item, SegmentResult):
            seen.append(item.segment_index)
            if len(seen) == 3:
                runner.stop()

    runner = build_runner(cfg, progress=progress)
    report = runner.run(resolve_sources([video]))
    assert report.stopped
    first = read_table(tmp_path / "part", "segments").to_pandas()
    assert 3 <= len(first) < 40
    # Second run: resumes from the snapshot; sinks upsert what is produced again.
    report = build_runner(cfg).run(resolve_sources([video]))
    assert not report.stopped
    got = read_table(tmp_path / "part", "segments").to_pandas().set_index("uid").sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(
        np.stack(got.embedding.to_numpy()), np.stack(want.embedding.to_numpy()), rtol=1e-5, atol=1e-6
    )
    summ = read_table(tmp_path / "part", "summaries").to_pandas()
    assert summ.segment_count.iloc[-1] == 40


def test_slow_sink_applies_backpressure(tmp_path, tiny_ckpt, h264_mp4):
    """A sink slower than decoding holds the decoders back through the bounded queues
    instead of piling segments up in memory."""
    import time

    from vmstream.stages.sinks.base import Sink

    class Slow(Sink):
        name = "slow"

        def __init__(self):
            self.n = 0

        def write(self, record):
            if isinstance(record, SegmentResult):
                self.n += 1
                time.sleep(0.05)

    cfg = _cfg(tmp_path / "out", tiny_ckpt, **{"decode.fps": 25, "runner.queue_size": 2})
    slow = Slow()
    runner = build_runner(cfg, sinks=[slow])
    peak = []

    def watch(stop):
        while not stop.is_set():
            peak.append(runner._seg_q.qsize() + runner._out_q.qsize())
            time.sleep(0.005)

    stop = threading.Event()
    t = threading.Thread(target=watch, args=(stop,))
    t.start()
    runner.run(resolve_sources([h264_mp4]))
    stop.set()
    t.join()
    assert slow.n == 25  # 100 frames / T=4
    assert max(peak) <= 2 + runner._out_q.maxsize


def test_cancel_one_stream_keeps_it_resumable(tmp_path, tiny_ckpt, h264_mp4):
    from tests.fixtures.media import make_video
    from vmstream.pipeline.snapshots import LocalStateStore

    long_video = make_video(str(tmp_path / "long.mp4"), fps=10, seconds=30, gop=20, size=(64, 48))
    cfg = _cfg(
        tmp_path / "out", tiny_ckpt, **{"runner.queue_size": 1, "runner.max_streams": 2, "runner.snapshot_every": 1}
    )
    done = {}
    (long_src,) = resolve_sources([long_video])
    (short_src,) = resolve_sources([h264_mp4])

    def progress(item):
        if isinstance(item, SegmentResult) and item.stream_id == long_src.stream_id and item.segment_index == 1:
            runner.cancel(long_src.stream_id)

    runner = build_runner(cfg, progress=progress)
    runner.start()
    runner.submit(long_src, on_done=lambda s, status, err: done.__setitem__(s.stream_id, status))
    runner.submit(short_src, on_done=lambda s, status, err: done.__setitem__(s.stream_id, status))
    runner.wait(timeout=120)
    report = runner.close()
    assert done == {long_src.stream_id: "stopped", short_src.stream_id: "ok"}
    assert not report.stopped
    snap = LocalStateStore(tmp_path / "out" / "state").load(long_src.stream_id)
    assert snap is not None and 2 <= snap["next_index"] < 30
    assert LocalStateStore(tmp_path / "out" / "state").load(short_src.stream_id) is None


def test_bf16_into_an_fp32_store_is_said(tmp_path, tiny_ckpt, h264_mp4, capsys):
    args = [
        "run",
        h264_mp4,
        "--checkpoint",
        tiny_ckpt,
        "--out",
        str(tmp_path / "out"),
        "--fps",
        "4",
        "--set",
        "decode.img_size=32",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*args, "--precision", "bf16"]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "holds fp32 results; this run adds bf16 ones" in warned[0]
