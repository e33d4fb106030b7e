"""The inference loop alone, without a runner: real queues, a real tiny model, and the
run control a runner would hand it."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from vmstream.pipeline.batching import InferenceLoop
from vmstream.pipeline.report import RunReport
from vmstream.pipeline.run_control import RunControl
from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
from vmstream.pipeline.snapshots import LocalStateStore
from vmstream.records import (
    SaveSnapshot,
    Segment,
    SegmentResult,
    StreamDone,
    StreamEvent,
    StreamStart,
    StreamSummary,
    end_reason,
)
from vmstream.stages.inference import InferenceStage
from vmstream.stages.media import Source

SECONDS = 2.0  # one segment's span


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=5)


def _segments(stream_id: str, n: int, seed: int) -> list[Segment]:
    g = torch.Generator().manual_seed(seed)
    return [
        Segment(stream_id, i, i * SECONDS, (i + 1) * SECONDS, torch.randn(3, 4, 32, 32, generator=g), uri=stream_id)
        for i in range(n)
    ]


def _end(stream_id: str, n: int, reason: str = "eof") -> StreamEvent:
    return StreamEvent(stream_id=stream_id, kind="end", t_start=0.0, t_end=n * SECONDS, details={"reason": reason})


def _loop(model, control: RunControl, *, store=None, max_batch: int = 2, out_size: int = 0):
    inference = InferenceStage(model)
    loop = InferenceLoop(
        inference=inference,
        snapshots=SnapshotKeeper(store, inference),
        seg_q=queue.Queue(),
        out_q=queue.Queue(maxsize=out_size),
        control=control,
        report=control.report,
        max_batch=max_batch,
    )
    return loop, inference


def _drain(q: "queue.Queue") -> list:
    out = []
    while (item := q.get(timeout=60)) is not None:
        out.append(item)
    return out


def test_streams_batch_together_and_each_gets_what_it_gets_alone(model):
    """Two streams' segments run in shared batches; every stream's results and summary
    equal those of the stage run over that stream alone, one segment at a time, and
    each stream's records leave in its own order, its StreamDone last."""
    control = RunControl(RunReport())
    loop, inference = _loop(model, control, max_batch=2)
    streams = {"a": _segments("a", 3, seed=1), "b": _segments("b", 3, seed=2)}
    for sid in streams:
        loop.seg_q.put(StreamStart(sid, "v1"))
    for i in range(3):
        for segs in streams.values():
            loop.seg_q.put(segs[i])
    for sid in streams:
        loop.seg_q.put(_end(sid, 3))
        loop.seg_q.put(StreamDone(sid, "ok"))
    loop.seg_q.put(None)

    loop.run()

    out = _drain(loop.out_q)
    assert loop.out_q.empty()
    assert control.fatal is None and control.report.segments == 6
    assert inference.stats.per_batch_size.get(2, 0) >= 1, "the streams were never batched together"
    for sid, segs in streams.items():
        mine = [r for r in out if r.stream_id == sid]
        kinds = [type(r).__name__ for r in mine]
        assert kinds == ["StreamStart"] + ["SegmentResult"] * 3 + ["StreamEvent", "StreamSummary", "StreamDone"]
        assert [r.segment_index for r in mine if isinstance(r, SegmentResult)] == [0, 1, 2]
        assert mine[-1] == StreamDone(sid, "ok")

        alone = list(InferenceStage(model).run([*segs, _end(sid, 3)]))
        want = np.stack([r.embedding for r in alone if isinstance(r, SegmentResult)])
        got = np.stack([r.embedding for r in mine if isinstance(r, SegmentResult)])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        (summary,) = [r for r in mine if isinstance(r, StreamSummary)]
        (want_summary,) = [r for r in alone if isinstance(r, StreamSummary)]
        assert summary.label_ids == want_summary.label_ids and summary.segment_count == 3


def test_a_stopped_stream_keeps_its_queued_segments_for_its_resume(model, tmp_path):
    """Asked to stop after its first segment, a stream's queued segments are not run:
    whatever the decoder saw after them, it ends "stopped", with a snapshot taken after
    the one segment that ran, and no summary."""
    control = RunControl(RunReport())
    job = control.add(Source("a", "a.mp4"))
    loop, inference = _loop(model, control, store=LocalStateStore(tmp_path / "state"))
    segs = _segments("a", 3, seed=1)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    loop.seg_q.put(StreamStart("a", "v1"))
    loop.seg_q.put(segs[0])
    assert isinstance(loop.out_q.get(timeout=60), StreamStart)
    first = loop.out_q.get(timeout=60)
    assert isinstance(first, SegmentResult) and first.segment_index == 0

    job.stop.set()
    for item in (segs[1], segs[2], _end("a", 3), StreamDone("a", "ok"), None):
        loop.seg_q.put(item)
    rest = _drain(loop.out_q)
    thread.join(timeout=60)

    assert [type(r).__name__ for r in rest] == ["StreamEvent", "SaveSnapshot", "StreamDone"]
    end, snap, done = rest
    assert end.kind == "end" and end_reason(end) == "stopped"
    assert isinstance(snap, SaveSnapshot) and snap.snapshot["next_index"] == 1
    assert snap.snapshot["t_end"] == segs[0].t_end
    assert done == StreamDone("a", "stopped")
    assert not inference.has_stream("a")  # its state lives on in the snapshot only
    assert control.report.segments == 1


def test_an_error_of_the_model_is_the_runs_fatal_error(model):
    """A segment the model cannot take (two colour channels) fails the run: the error
    is the control's, the run stops, and the loop still reads its queue to the end (the
    decoders never block) and ends the output with its None."""
    control = RunControl(RunReport())
    loop, _ = _loop(model, control)
    bad = Segment("a", 0, 0.0, SECONDS, torch.zeros(2, 4, 32, 32))
    for item in (StreamStart("a", "v1"), bad, *_segments("b", 2, seed=3), StreamDone("a", "ok"), None):
        loop.seg_q.put(item)

    loop.run()

    assert isinstance(control.fatal, ValueError) and "clip must be [B, 3, T, H, W]" in str(control.fatal)
    assert control.stopped
    assert loop.seg_q.empty()
    out = _drain(loop.out_q)
    assert not any(isinstance(r, SegmentResult) for r in out)


def test_after_a_fatal_error_a_full_output_queue_does_not_hold_the_loop(model):
    """Once the run failed, nobody may be reading the output: the loop gives up a record
    that finds no room rather than wait for ever (only the final None waits)."""
    control = RunControl(RunReport())
    loop, _ = _loop(model, control, out_size=1)
    loop.out_q.put("occupied")
    control.fail(RuntimeError("the sinks failed"))
    finished = threading.Event()

    def put():
        loop.put_out(StreamStart("a", "v1"))
        finished.set()

    threading.Thread(target=put, daemon=True).start()
    assert finished.wait(timeout=10)
    assert loop.out_q.get_nowait() == "occupied" and loop.out_q.empty()
