"""The runner: decode, inference and sinks in their own threads, joined by bounded queues.

    decode workers (one thread per active stream, up to max_streams)
        Source -> the stream's plan (decode -> segment [-> audio]) -> seg_q
    inference thread (batching.InferenceLoop)
        seg_q -> one FIFO per stream -> batches of ready segments of distinct streams
        -> InferenceStage (states kept per stream) -> out_q
    sink thread (sink_writer.SinkWriter)
        out_q -> every sink; at snapshot points: flush all sinks, then save snapshots

What a stream is made of is the plan's (plan.StreamPlan); when its snapshots are taken,
saved and dropped is the snapshot keeper's (snapshot_keeper.SnapshotKeeper); which
streams are in flight, which were asked to stop, the run's fatal error and progress are
the run control's (run_control.RunControl), which all three kinds of thread hold. The
runner keeps the threads, the queues, the streams waiting for a decoder, and decoding.
Control records (records.Resume, SaveSnapshot, StreamDone) travel in the queues in
stream order with the data.

Decoding overlaps the model (PyAV releases the GIL while decoding, torch while
computing), and the bounded queues make a slow sink slow the sources down instead of
filling memory. A snapshot of a stream is saved only after every result up to it is
durable in the sinks, so a stream resumed from it loses nothing.

The runner takes sources at any time (`submit`), which is what the Kafka worker does;
`run(sources)` is the one-shot form the CLI uses.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Callable, Iterable, Optional, Sequence

from vmstream.errors import UserError
from vmstream.pipeline.batching import InferenceLoop
from vmstream.pipeline.disk_full import DiskFullError
from vmstream.pipeline.plan import StreamPlan
from vmstream.pipeline.report import RunReport
from vmstream.pipeline.run_control import POLL, RunControl, StreamJob
from vmstream.pipeline.sink_writer import SinkWriter
from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
from vmstream.records import Frame, StreamDone, StreamEvent, end_reason, stream_status
from vmstream.stages.inference import InferenceStage
from vmstream.stages.sinks.base import Sink

log = logging.getLogger(__name__)


class Runner:
    """Runs streams through `plan`, `inference` and `sinks`; `snapshots` loads and saves
    their snapshots."""

    def __init__(
        self,
        *,
        plan: StreamPlan,
        inference: InferenceStage,
        sinks: Sequence[Sink],
        snapshots: Optional[SnapshotKeeper] = None,
        queue_size: int = 8,
        max_streams: int = 2,
        max_batch: int = 4,
        flush_on_stream_end: bool = False,
        progress: Optional[Callable[[object], None]] = None,
    ):
        self.plan = plan
        self.inference = inference
        self.sinks = list(sinks)
        self.snapshots = snapshots or SnapshotKeeper(None, inference)
        self.max_streams = max_streams
        self.report = RunReport()
        self.control = RunControl(self.report, progress)

        self._seg_q: "queue.Queue" = queue.Queue(maxsize=queue_size)
        self._out_q: "queue.Queue" = queue.Queue(maxsize=max(4 * queue_size, 16))
        self._pending: "deque[StreamJob]" = deque()
        self._pending_lock = threading.Condition()
        self._closing = False
        self._shutdown_decoders = False
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._started = False
        self._decode_lock = threading.Lock()
        self._batcher = InferenceLoop(
            inference=inference,
            snapshots=self.snapshots,
            seg_q=self._seg_q,
            out_q=self._out_q,
            control=self.control,
            report=self.report,
            max_batch=max_batch,
        )
        self._writer = SinkWriter(
            sinks=self.sinks,
            snapshots=self.snapshots,
            out_q=self._out_q,
            control=self.control,
            report=self.report,
            flush_on_stream_end=flush_on_stream_end,
        )

    @property
    def state_store(self):
        return self.snapshots.store

    # ----------------------------------------------------------------- public

    def start(self) -> "Runner":
        if self._started:
            return self
        self._started = True
        self._t0 = time.perf_counter()
        for i in range(self.max_streams):
            t = threading.Thread(target=self._decode_worker, name=f"vmstream-decode-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._infer_thread = threading.Thread(target=self._batcher.run, name="vmstream-inference", daemon=True)
        self._sink_thread = threading.Thread(target=self._writer.run, name="vmstream-sinks", daemon=True)
        self._infer_thread.start()
        self._sink_thread.start()
        return self

    def submit(self, source, on_done: Optional[Callable[[object, str, Optional[str]], None]] = None) -> None:
        """Queue a stream. `on_done(source, status, error)` is called (from the sink
        thread) once all its records are written and flushed when
        `flush_on_stream_end`: status "ok", "truncated", "error", "failed" (unusable
        input), or "stopped" (the runner stopped first; a snapshot was saved)."""
        if self._closing:
            raise RuntimeError("runner is closing; no new sources")
        job = self.control.add(source, on_done)
        with self._pending_lock:
            self._pending.append(job)
            self._pending_lock.notify()

    def stop(self) -> None:
        """Stop producing (SIGINT/SIGTERM): streams end early, snapshots are saved,
        sinks flushed; `wait`/`close` then return."""
        self.control.stop()
        with self._pending_lock:
            self._pending_lock.notify_all()

    def cancel(self, stream_id: str) -> bool:
        """Stop one stream the way `stop()` stops all (snapshot saved, reported as
        "stopped" to its on_done), e.g. when a Kafka rebalance moves its job to another
        worker. False if the stream is not running or queued here."""
        job = self.control.job(stream_id)
        if job is None:
            return False
        job.stop.set()
        with self._pending_lock:
            if job in self._pending:
                self._pending.remove(job)
                self._put_seg(StreamDone(stream_id, "stopped"), force=True)
        return True

    def running(self) -> list[str]:
        """Stream ids submitted and not yet done."""
        return self.control.running()

    @property
    def stopped(self) -> bool:
        return self.control.stopped

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until every submitted stream is done (or stopped). True when idle."""
        if not self.control.wait_idle(timeout):
            return False
        fatal = self.control.fatal
        if fatal is not None:
            raise RuntimeError(f"pipeline failed: {fatal}") from fatal
        return True

    def close(self) -> RunReport:
        """Finish: wait for the threads, flush and close every sink. Returns the report."""
        self._closing = True
        self._shutdown_decoders = True
        with self._pending_lock:
            self._pending_lock.notify_all()
        for t in self._threads:
            t.join()
        self._seg_q.put(None)  # inference: no more input
        self._infer_thread.join()
        self._sink_thread.join()
        errors = self._writer.close()
        self.report.wall_s = time.perf_counter() - self._t0
        self.report.stopped = self.control.stopped
        self.report.inference.busy_s = self.inference.stats.busy_s
        fatal = self.control.fatal
        # A full disk: one line (disk_full.DiskFullError), whichever write met it first.
        full = next((e for e in (fatal, *self._writer.close_failures) if isinstance(e, DiskFullError)), None)
        if full is not None:
            raise full
        if isinstance(fatal, UserError):  # one line too (a damaged result part found mid-run)
            raise fatal
        if fatal is not None:
            raise RuntimeError(f"pipeline failed: {fatal}") from fatal
        if errors:
            raise RuntimeError("sinks failed to close: " + "; ".join(errors))
        return self.report

    def run(self, sources: Iterable) -> RunReport:
        """Process `sources` to the end (or until `stop()`), then close."""
        self.start()
        try:
            for s in sources:
                self.submit(s)
            self.wait()
        finally:
            report = self.close()
        return report

    # ----------------------------------------------------------------- decode

    def _next_job(self) -> Optional[StreamJob]:
        with self._pending_lock:
            while True:
                if self._pending and not self.control.stopped:
                    return self._pending.popleft()
                if self.control.stopped:
                    # Streams never started: report them stopped (nothing to snapshot).
                    while self._pending:
                        job = self._pending.popleft()
                        self._put_seg(StreamDone(job.source.stream_id, "stopped"), force=True)
                    return None
                if self._shutdown_decoders:
                    return None
                self._pending_lock.wait(timeout=POLL)

    def _put_seg(self, item, force: bool = False) -> bool:
        # `force` items (errors, ends) wait for room even while stopping; only a fatal
        # pipeline failure (nobody consumes any more) gives up.
        while self.control.fatal is None:
            try:
                self._seg_q.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def _decode_worker(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                self._decode_stream(job)
            except BaseException as e:  # a stream's failure must never kill the worker
                log.exception("stream %s failed", job.source.stream_id)
                ev = StreamEvent(
                    stream_id=job.source.stream_id,
                    kind="error",
                    message=f"{type(e).__name__}: {e}",
                    uri=job.source.uri,
                    details={"reason": "error"},
                )
                self._put_seg(ev, force=True)
                self._put_seg(StreamDone(job.source.stream_id, "error", str(e)), force=True)

    def _decode_stream(self, job: StreamJob) -> None:
        from vmstream.stages.decode.base import VideoInputError

        src = job.source
        sid = src.stream_id
        resume = self.snapshots.resume_point(sid)
        try:
            info = self.plan.probe(src)
            # Its version, the snapshot's fit and the id's claim (versions.py).
            start, resume = self.snapshots.begin(src, resume)
        except (VideoInputError, ValueError) as e:
            # Unusable input: reported and skipped; the others go on.
            log.error("skipping %s: %s", src.uri, e)
            self._put_seg(
                StreamEvent(
                    stream_id=sid,
                    kind="error",
                    message=str(e),
                    uri=src.uri,
                    details={"reason": getattr(e, "reason", "bad_input")},
                ),
                force=True,
            )
            self._put_seg(StreamDone(sid, "failed", str(e)), force=True)
            return
        self.control.notify(("stream", sid, info))
        self._put_seg(start, force=True)
        if resume is not None:
            self._put_seg(resume, force=True)
        if self.control.stopped:
            job.stop.set()
        items = self.plan.items(
            src, info, resume=resume.snapshot if resume else None, stop=job.stop, on_frames=self._counted
        )
        status, err = "ok", None
        it = iter(items)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    with self._decode_lock:
                        self.report.decode.busy_s += time.perf_counter() - t0
                if isinstance(item, StreamEvent) and item.kind == "end":
                    status = stream_status(end_reason(item))
                    err = None if status in ("ok", "stopped") else item.message
                if not self._put_seg(item):
                    return
        finally:
            close = getattr(it, "close", None)
            if close:
                close()
        self._put_seg(StreamDone(sid, status, err), force=True)

    def _counted(self, frames):
        for item in frames:
            if isinstance(item, Frame):
                self.report.frames += 1
            yield item
