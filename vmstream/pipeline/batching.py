"""The inference thread's work: one FIFO per stream, batches of ready segments of
distinct streams (round robin), the control records handled in stream order, and a
stopped stream's queued segments left for its resume.

It reads the segment queue the decode workers fill and writes the output queue the sink
writer reads; the run's control (run_control.RunControl) says which streams were asked
to stop and takes its fatal error."""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict, deque

from vmstream.pipeline.batch_size import FixedBatch
from vmstream.pipeline.report import RunReport
from vmstream.pipeline.run_control import POLL, RunControl
from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
from vmstream.records import EndReason, Resume, Segment, StreamDone, StreamEvent, StreamStart, end_reason
from vmstream.stages.inference import InferenceStage

log = logging.getLogger(__name__)


class InferenceLoop:
    """Reads `seg_q` until its `None`, runs the segments through `inference`, and
    writes results, events, summaries, snapshot requests and stream ends to `out_q`
    (then a final `None`). An error of its own is the run's fatal error
    (`control.fail`); it then drains `seg_q` so the decoders never block."""

    def __init__(
        self,
        *,
        inference: InferenceStage,
        snapshots: SnapshotKeeper,
        seg_q: "queue.Queue",
        out_q: "queue.Queue",
        control: RunControl,
        report: RunReport,
        max_batch,
    ):
        self.inference = inference
        self.snapshots = snapshots
        self.seg_q = seg_q
        self.out_q = out_q
        self.control = control
        self.report = report
        # A number, or a policy (pipeline/batch_size.py) that may change the size as the
        # run goes: `limit()` before a step, `observe(batch, seconds)` after it.
        self.batch = max_batch if hasattr(max_batch, "limit") else FixedBatch(max_batch)
        self._cut: set[str] = set()  # stopped streams whose queued segments were dropped

    @property
    def max_batch(self) -> int:
        return self.batch.limit()

    @property
    def fifo_limit(self) -> int:
        # Segments held beyond the bounded queue: enough to batch the size asked for now,
        # with one in reserve each. Unbounded, a fast decoder would park a whole video
        # here (memory; and a stop or cancel would wait behind all of it).
        return 2 * self.batch.limit()

    def run(self) -> None:
        fifos: "OrderedDict[str, deque]" = OrderedDict()
        finished = False
        try:
            while True:
                if not finished:
                    finished = self._take_input(fifos)
                if not any(fifos.values()):
                    if finished:
                        break
                    continue
                self._step(fifos)
                for k in [k for k, v in fifos.items() if not v]:
                    del fifos[k]
        except BaseException as e:
            log.exception("inference failed")
            self.control.fail(e)
            while not finished:  # drain so decode threads never block
                finished = self.seg_q.get() is None
        finally:
            self.put_out(None, force=True)

    def put_out(self, item, force: bool = False) -> None:
        """Onto the output queue, waiting for room; once the run has failed (the sink
        writer only drains) only a `force` item (the final `None`) still waits."""
        while True:
            try:
                self.out_q.put(item, timeout=POLL)
                return
            except queue.Full:
                if self.control.fatal is not None and not force:
                    return

    def _take_input(self, fifos: "OrderedDict[str, deque]") -> bool:
        """Move queued items into the FIFOs; True once the queue's end was read."""
        ready = any(fifos.values())
        buffered = sum(len(q) for q in fifos.values())
        if ready and buffered >= self.fifo_limit:
            return False
        try:
            # Block for the first item only when nothing is ready.
            item = self.seg_q.get(timeout=None if not ready else 0)
            while True:
                if item is None:
                    return True
                fifos.setdefault(item.stream_id, deque()).append(item)
                buffered += 1
                if buffered >= self.fifo_limit:
                    return False
                item = self.seg_q.get_nowait()  # drain what else is there, so streams batch
        except queue.Empty:
            return False

    def _step(self, fifos: "OrderedDict[str, deque]") -> None:
        batch: list[Segment] = []
        limit = self.batch.limit()
        # Control records and events at the head of a FIFO are handled in stream order first.
        for sid in list(fifos):
            q = fifos[sid]
            while q and not isinstance(q[0], Segment):
                self._handle(q.popleft())
            if q and self.control.stopping(sid):
                self._cut_stream(sid, q)
                continue
            if q and len(batch) < limit:
                batch.append(q.popleft())
        for s in batch:  # round robin: streams served now go to the back
            fifos.move_to_end(s.stream_id)
        if not batch:
            return
        t0 = time.perf_counter()
        results = self.inference.process(batch)
        self.batch.observe(len(batch), time.perf_counter() - t0)
        for seg, res in zip(batch, results):
            self.put_out(res)
            self.report.segments += 1
            snap = self.snapshots.after_segment(seg)
            if snap is not None:
                self.put_out(snap)

    def _cut_stream(self, stream_id: str, q: deque) -> None:
        """A stopped stream's queued segments are dropped, so a stop takes effect within
        one inference step. Nothing is lost: the stream ends "stopped" and its snapshot
        (taken after the last segment processed) resumes right there."""
        dropped = 0
        while q and isinstance(q[0], Segment):
            q.popleft()
            dropped += 1
        if dropped:
            self._cut.add(stream_id)
            log.debug("stream %s: stopping, %d queued segments left for the resume", stream_id, dropped)

    def _handle(self, item) -> None:
        if isinstance(item, (StreamEvent, StreamDone)) and item.stream_id in self._cut:
            item = self._as_stopped(item)
        if isinstance(item, Resume):
            self.snapshots.restore(item)
        elif isinstance(item, StreamStart):
            self.put_out(item)
        elif isinstance(item, StreamEvent):
            self.put_out(item)
            if item.kind != "end":
                return
            if end_reason(item) == EndReason.STOPPED.value:
                # Interrupted, not finished: keep the stream resumable.
                snap = self.snapshots.take(item.stream_id)
                if snap is not None:
                    self.put_out(snap)
                self.inference.drop(item.stream_id)
                return
            summary = self.inference.end_stream(item)
            if summary is not None:
                self.put_out(summary)
        elif isinstance(item, StreamDone):
            # A stream the model failed (a non-finite output) ends "error" whatever the
            # decoder saw, so every report of it agrees.
            failure = self.inference.take_failure(item.stream_id)
            if failure and item.status in ("ok", "truncated"):
                item = StreamDone(item.stream_id, "error", failure)
            if item.status == "error":
                self.inference.drop(item.stream_id)
            self.put_out(item)
        else:
            raise TypeError(f"unexpected item in the segment queue: {type(item).__name__}")

    def _as_stopped(self, item):
        # Segments were dropped for the stop: whatever the decoder saw after them (the
        # file's end, say), this stream ended early and must resume, not be "done".
        if isinstance(item, StreamDone):
            self._cut.discard(item.stream_id)
            return StreamDone(item.stream_id, "stopped") if item.status in ("ok", "truncated") else item
        if item.kind == "end" and end_reason(item) in (EndReason.EOF.value, EndReason.TRUNCATED.value):
            details = dict(item.details or {}, reason=EndReason.STOPPED.value)
            return StreamEvent(
                stream_id=item.stream_id,
                kind="end",
                t_start=item.t_start,
                t_end=item.t_end,
                message="stopped by the caller",
                details=details,
                uri=item.uri,
            )
        return item
