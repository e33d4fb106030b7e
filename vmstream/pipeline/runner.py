"""The runner: decode, inference and sinks in their own threads, joined by bounded queues.

    decode workers (one thread per active stream, up to runner.max_streams)
        Source -> Decoder.frames -> Segmenter [-> AudioStage] -> seg_q
    inference thread
        seg_q -> one FIFO per stream -> batches of ready segments of distinct streams
        -> InferenceStage (states kept per stream) -> out_q
    sink thread
        out_q -> every sink; at snapshot points: flush all sinks, then save snapshots

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
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from vmstream.records import EndReason, Segment, StreamEvent, StreamSummary, end_reason, stream_status
from vmstream.stages.sinks.base import Sink

log = logging.getLogger(__name__)

# Seconds a blocked put/get waits before re-checking the stop flag.
_POLL = 0.1
# A resumed stream starts decoding just after its last segment's end time: past the
# decoders' own tolerance for time rounding (sampling.TIME_EPS, 1 us), so that frame is
# not returned again, and far below any frame interval.
_RESUME_EPS = 1e-5


@dataclass
class _Snap:
    """Marker in the output queue: save this snapshot once everything before it is durable."""

    snap: dict


@dataclass
class _Done:
    """Marker: the stream's records are all in the queue before this."""

    stream_id: str
    status: str
    error: Optional[str] = None


@dataclass
class _Restore:
    """Marker in a stream's FIFO: restore the model state before its next segment."""

    snap: dict


@dataclass
class StageTimes:
    items: int = 0
    busy_s: float = 0.0


@dataclass
class RunReport:
    wall_s: float = 0.0
    streams: int = 0
    streams_failed: int = 0
    streams_stopped: int = 0  # ended early by stop()/cancel(): resumable from a snapshot
    segments: int = 0
    frames: int = 0
    decode: StageTimes = field(default_factory=StageTimes)
    inference: StageTimes = field(default_factory=StageTimes)
    sinks: StageTimes = field(default_factory=StageTimes)
    sink_busy: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # (stream_id, uri, message)
    summaries: list = field(default_factory=list)
    stopped: bool = False  # stop() was called (streams_stopped says which streams it cut short)
    statuses: dict = field(default_factory=dict)  # stream_id -> final status

    def bottleneck(self) -> str:
        # Decode busy time is summed over its threads; normalise by the wall time of
        # the run, so "busy fraction" compares stages fairly.
        busy = {"decode": self.decode.busy_s, "inference": self.inference.busy_s, "sinks": self.sinks.busy_s}
        return max(busy, key=busy.get)

    def format(self) -> str:
        w = max(self.wall_s, 1e-9)
        lines = [
            f"run: {self.streams} streams ({self.streams_failed} failed), {self.segments} segments, "
            f"{self.frames} frames in {self.wall_s:.1f} s",
            f"  decode     {self.frames / w:8.1f} frames/s   busy {self.decode.busy_s:7.1f} s "
            f"({100 * self.decode.busy_s / w:5.1f}% of wall, summed over threads)",
            f"  inference  {self.segments / w:8.2f} segments/s busy {self.inference.busy_s:7.1f} s "
            f"({100 * self.inference.busy_s / w:5.1f}%)",
            f"  sinks      {self.sinks.items / w:8.1f} records/s  busy {self.sinks.busy_s:7.1f} s "
            f"({100 * self.sinks.busy_s / w:5.1f}%)"
            + ("" if not self.sink_busy else "  [" + ", ".join(f"{k} {v:.1f}s" for k, v in self.sink_busy.items()) + "]"),
            f"  bottleneck: {self.bottleneck()}",
        ]
        for sid, uri, msg in self.failures:
            lines.append(f"  FAILED {msg}" if msg.startswith((sid, uri or sid)) else f"  FAILED {sid}: {msg}")
        return "\n".join(lines)


class _Job:
    __slots__ = ("source", "on_done", "status", "error", "stop")

    def __init__(self, source, on_done):
        self.source = source
        self.on_done = on_done
        self.status = "pending"
        self.error: Optional[str] = None
        # Set by runner.stop() (all streams) or runner.cancel(stream_id) (one): the
        # decoder ends the stream with reason "stopped" and a snapshot is saved.
        self.stop = threading.Event()


class Runner:
    """Wires a decoder, a segmenter factory, the inference stage and sinks.

    `segmenter_factory(source)` returns an object with
    `.segments(items, uri=, first_index=) -> iterator of Segment | StreamEvent`; `audio_factory(source)`
    (optional) returns a stage with `.run(segments) -> segments` that attaches audio.
    """

    def __init__(
        self,
        *,
        decoder,
        policy,
        size,
        segmenter_factory: Callable,
        inference,
        sinks: Sequence[Sink],
        state_store=None,
        audio_factory: Optional[Callable] = None,
        queue_size: int = 8,
        max_streams: int = 2,
        max_batch: int = 4,
        snapshot_every: int = 10,
        flush_on_stream_end: bool = False,
        progress: Optional[Callable[[object], None]] = None,
    ):
        self.decoder = decoder
        self.policy = policy
        self.size = size
        self.segmenter_factory = segmenter_factory
        self.audio_factory = audio_factory
        self.inference = inference
        self.sinks = list(sinks)
        self.state_store = state_store
        self.max_streams = max_streams
        self.max_batch = max_batch
        self.snapshot_every = snapshot_every
        self.flush_on_stream_end = flush_on_stream_end
        self.progress = progress
        # Segments the inference thread holds beyond the bounded queue: enough to batch
        # max_batch streams with one in reserve each.
        self._fifo_limit = 2 * max(1, max_batch)

        self._seg_q: "queue.Queue" = queue.Queue(maxsize=queue_size)
        self._out_q: "queue.Queue" = queue.Queue(maxsize=max(4 * queue_size, 16))
        self._pending: "deque[_Job]" = deque()
        self._pending_lock = threading.Condition()
        self._stop = threading.Event()  # stop producing: decoders end their streams
        self._closing = False
        self._active = 0
        self._jobs: dict[str, _Job] = {}
        self._threads: list[threading.Thread] = []
        self._fatal: Optional[BaseException] = None
        self._idle = threading.Condition()
        self._outstanding = 0  # submitted streams whose _Done has not passed the sinks
        self.report = RunReport()
        self._t0 = 0.0
        self._started = False
        self._decode_lock = threading.Lock()
        self._cut: set[str] = set()  # stopped streams whose queued segments were dropped

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
        self._infer_thread = threading.Thread(target=self._inference_loop, name="vmstream-inference", daemon=True)
        self._sink_thread = threading.Thread(target=self._sink_loop, name="vmstream-sinks", daemon=True)
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
        if source.stream_id in self._jobs:
            raise ValueError(f"stream {source.stream_id!r} is already running")
        job = _Job(source, on_done)
        with self._idle:
            self._outstanding += 1
        self._jobs[source.stream_id] = job
        with self._pending_lock:
            self._pending.append(job)
            self._pending_lock.notify()

    def stop(self) -> None:
        """Stop producing (SIGINT/SIGTERM): streams end early, snapshots are saved,
        sinks flushed; `wait`/`close` then return."""
        self._stop.set()
        for job in list(self._jobs.values()):
            job.stop.set()
        with self._pending_lock:
            self._pending_lock.notify_all()

    def cancel(self, stream_id: str) -> bool:
        """Stop one stream the way `stop()` stops all (snapshot saved, reported as
        "stopped" to its on_done), e.g. when a Kafka rebalance moves its job to another
        worker. False if the stream is not running or queued here."""
        job = self._jobs.get(stream_id)
        if job is None:
            return False
        job.stop.set()
        with self._pending_lock:
            if job in self._pending:
                self._pending.remove(job)
                self._put_seg(_Done(stream_id, "stopped"), force=True)
        return True

    def running(self) -> list[str]:
        """Stream ids submitted and not yet done."""
        return list(self._jobs)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until every submitted stream is done (or stopped). True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._outstanding > 0 and self._fatal is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(timeout=_POLL if remaining is None else min(_POLL, remaining))
        if self._fatal is not None:
            raise RuntimeError(f"pipeline failed: {self._fatal}") from self._fatal
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
        errors = []
        for s in self.sinks:
            t0 = time.perf_counter()
            try:
                s.close()
            except Exception as e:  # report every sink's failure, not only the first
                errors.append(f"{s.name}: {e}")
                log.exception("sink %s failed to close", s.name)
            self.report.sink_busy[s.name] = self.report.sink_busy.get(s.name, 0.0) + time.perf_counter() - t0
        self.report.wall_s = time.perf_counter() - self._t0
        self.report.stopped = self._stop.is_set()
        self.report.inference.busy_s = self.inference.stats.busy_s
        if self._fatal is not None:
            raise RuntimeError(f"pipeline failed: {self._fatal}") from self._fatal
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

    _shutdown_decoders = False

    def _next_job(self) -> Optional[_Job]:
        with self._pending_lock:
            while True:
                if self._pending and not self._stop.is_set():
                    return self._pending.popleft()
                if self._stop.is_set():
                    # Streams never started: report them stopped (nothing to snapshot).
                    while self._pending:
                        job = self._pending.popleft()
                        self._put_seg(_Done(job.source.stream_id, "stopped"), force=True)
                    return None
                if self._shutdown_decoders:
                    return None
                self._pending_lock.wait(timeout=_POLL)

    def _put_seg(self, item, force: bool = False) -> bool:
        # `force` items (errors, ends) wait for room even while stopping; only a fatal
        # pipeline failure (nobody consumes any more) gives up.
        while self._fatal is None:
            try:
                self._seg_q.put(item, timeout=_POLL)
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
                ev = StreamEvent(stream_id=job.source.stream_id, kind="error",
                                 message=f"{type(e).__name__}: {e}", uri=job.source.uri,
                                 details={"reason": "error"})
                self._put_seg(ev, force=True)
                self._put_seg(_Done(job.source.stream_id, "error", str(e)), force=True)

    def _decode_stream(self, job: _Job) -> None:
        from vmstream.stages.decode.base import VideoInputError, probe_for_policy

        src = job.source
        sid = src.stream_id
        snap = self.state_store.load(sid) if self.state_store is not None else None
        start_time, start_index = 0.0, 0
        if snap is not None:
            start_time = float(snap["t_end"]) + _RESUME_EPS
            start_index = int(snap["next_index"])
            log.info("stream %s: resuming at segment %d (t > %.3f s) from its snapshot", sid, start_index,
                     snap["t_end"])
        try:
            # The decoder's own rule (re-probe for an exact length when the policy
            # needs one), so what passes here decodes, and `frames` reuses the probe.
            info = probe_for_policy(self.decoder, src.uri, src.options, self.policy)
        except (VideoInputError, ValueError) as e:
            # Unusable input: reported and skipped; the others go on.
            reason = getattr(e, "reason", "bad_input")
            log.error("skipping %s: %s", src.uri, e)
            self._put_seg(StreamEvent(stream_id=sid, kind="error", message=str(e), uri=src.uri,
                                      details={"reason": reason}), force=True)
            self._put_seg(_Done(sid, "failed", str(e)), force=True)
            return
        self._notify(("stream", sid, info))
        if snap is not None:
            self._put_seg(_Restore(snap), force=True)
        if self._stop.is_set():
            job.stop.set()
        audio = self.audio_factory(src) if self.audio_factory is not None and info.has_audio else None
        # A stage that says its `audio_format` gets the audio in the decoder's pass (one read).
        fmt = getattr(audio, "audio_format", None)
        frames = self.decoder.frames(src, self.policy, self.size, start_time, stop=job.stop, info=info,
                                     **({"audio": fmt} if fmt is not None else {}))
        items = self.segmenter_factory(src).segments(_counted(frames, self.report), uri=src.uri,
                                                     first_index=start_index)
        if audio is not None:
            items = audio.run(items)
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
        self._put_seg(_Done(sid, status, err), force=True)

    # ----------------------------------------------------------------- inference

    def _inference_loop(self) -> None:
        fifos: "OrderedDict[str, deque]" = OrderedDict()
        finished_input = False
        try:
            while True:
                # Block for the first item only when nothing is ready.
                ready = any(fifos.values())
                # Take input only while the FIFOs are short: they hold decoded segments,
                # and unbounded they would let a fast decoder park a whole video here
                # (memory; and a stop or cancel would wait behind all of it).
                buffered = sum(len(q) for q in fifos.values())
                if not finished_input and (not ready or buffered < self._fifo_limit):
                    try:
                        item = self._seg_q.get(timeout=None if not ready else 0)
                        if item is None:
                            finished_input = True
                        else:
                            fifos.setdefault(_sid(item), deque()).append(item)
                            buffered += 1
                        # Drain what else is there, so streams can be batched.
                        while not finished_input and buffered < self._fifo_limit:
                            item = self._seg_q.get_nowait()
                            if item is None:
                                finished_input = True
                                break
                            fifos.setdefault(_sid(item), deque()).append(item)
                            buffered += 1
                    except queue.Empty:
                        pass
                if not any(fifos.values()):
                    if finished_input:
                        break
                    continue
                self._inference_step(fifos)
                for k in [k for k, v in fifos.items() if not v]:
                    del fifos[k]
        except BaseException as e:
            log.exception("inference failed")
            self._fail(e)
            while not finished_input:  # drain so decode threads never block
                finished_input = self._seg_q.get() is None
        finally:
            self._put_out(None, force=True)

    def _inference_step(self, fifos: "OrderedDict[str, deque]") -> None:
        batch: list[Segment] = []
        # Non-segment items at the head of a FIFO are handled in stream order first.
        for sid in list(fifos):
            q = fifos[sid]
            while q and not isinstance(q[0], Segment):
                self._handle_marker(q.popleft())
            if q and self._stopping(sid):
                self._cut_stream(sid, q)
                continue
            if q and len(batch) < self.max_batch:
                batch.append(q.popleft())
        # Round robin: streams served now go to the back.
        for s in batch:
            fifos.move_to_end(s.stream_id)
        if not batch:
            return
        results = self.inference.process(batch)
        for seg, res in zip(batch, results):
            self._put_out(res)
            self.report.segments += 1
            if self.snapshot_every and (seg.index + 1) % self.snapshot_every == 0 and self.state_store is not None:
                self._put_out(_Snap(self.inference.snapshot(seg.stream_id)))

    def _stopping(self, stream_id: str) -> bool:
        job = self._jobs.get(stream_id)
        return job is not None and job.stop.is_set()

    def _cut_stream(self, stream_id: str, q: deque) -> None:
        """A stopped stream's segments still queued are dropped, so a stop takes effect
        within one inference step. Nothing is lost: the stream ends "stopped" and its
        snapshot (taken after the last segment processed) resumes right there."""
        dropped = 0
        while q and isinstance(q[0], Segment):
            q.popleft()
            dropped += 1
        if dropped:
            self._cut.add(stream_id)
            log.debug("stream %s: stopping, %d queued segments left for the resume", stream_id, dropped)

    def _handle_marker(self, item) -> None:
        if isinstance(item, (StreamEvent, _Done)) and item.stream_id in self._cut:
            item = self._as_stopped(item)
        if isinstance(item, _Restore):
            self.inference.restore(item.snap)
        elif isinstance(item, StreamEvent):
            if item.kind == "end" and end_reason(item) == EndReason.STOPPED.value:
                # Interrupted, not finished: keep the stream resumable.
                self._put_out(item)
                if self.inference.has_stream(item.stream_id) and self.state_store is not None:
                    self._put_out(_Snap(self.inference.snapshot(item.stream_id)))
                self.inference.drop(item.stream_id)
                return
            self._put_out(item)
            if item.kind == "end":
                summary = self.inference.end_stream(item)
                if summary is not None:
                    self._put_out(summary)
        elif isinstance(item, _Done):
            if item.status == "error" and self.inference.has_stream(item.stream_id):
                self.inference.drop(item.stream_id)
            self._put_out(item)
        else:
            raise TypeError(f"unexpected item in the segment queue: {type(item).__name__}")

    def _as_stopped(self, item):
        # Segments were dropped for the stop: whatever the decoder saw after them (the
        # file's end, say), this stream ended early and must resume, not be "done".
        if isinstance(item, _Done):
            self._cut.discard(item.stream_id)
            return _Done(item.stream_id, "stopped") if item.status in ("ok", "truncated") else item
        if item.kind == "end" and end_reason(item) in (EndReason.EOF.value, EndReason.TRUNCATED.value):
            details = dict(item.details or {}, reason=EndReason.STOPPED.value)
            return StreamEvent(stream_id=item.stream_id, kind="end", t_start=item.t_start, t_end=item.t_end,
                               message="stopped by the caller", details=details, uri=item.uri)
        return item

    def _put_out(self, item, force: bool = False) -> None:
        while True:
            try:
                self._out_q.put(item, timeout=_POLL)
                return
            except queue.Full:
                if self._fatal is not None and not force:
                    return

    # ----------------------------------------------------------------- sinks

    def _sink_loop(self) -> None:
        try:
            while True:
                item = self._out_q.get()
                if item is None:
                    break
                if self._fatal is not None:
                    continue  # drain so producers never block forever
                if isinstance(item, _Snap):
                    self._flush_sinks()
                    self.state_store.save(item.snap)
                    continue
                if isinstance(item, _Done):
                    self._stream_done(item)
                    continue
                t0 = time.perf_counter()
                for s in self.sinks:
                    ts = time.perf_counter()
                    s.write(item)
                    self.report.sink_busy[s.name] = self.report.sink_busy.get(s.name, 0.0) + time.perf_counter() - ts
                self.report.sinks.items += 1
                self.report.sinks.busy_s += time.perf_counter() - t0
                if isinstance(item, StreamSummary):
                    self.report.summaries.append(item)
                self._notify(item)
        except BaseException as e:
            log.exception("sink failed")
            self._fail(e)
            # keep draining so upstream threads can finish
            while self._out_q.get() is not None:
                pass

    def _flush_sinks(self) -> None:
        t0 = time.perf_counter()
        for s in self.sinks:
            ts = time.perf_counter()
            s.flush()
            self.report.sink_busy[s.name] = self.report.sink_busy.get(s.name, 0.0) + time.perf_counter() - ts
        self.report.sinks.busy_s += time.perf_counter() - t0

    def _stream_done(self, done: _Done) -> None:
        job = self._jobs.get(done.stream_id)
        self.report.streams += 1
        self.report.statuses[done.stream_id] = done.status
        if done.status == "stopped":
            self.report.streams_stopped += 1
        if done.status in ("failed", "error"):
            self.report.streams_failed += 1
            self.report.failures.append((done.stream_id, job.source.uri if job else "", done.error or done.status))
        if self.flush_on_stream_end or done.status == "stopped":
            self._flush_sinks()
        if self.state_store is not None and done.status not in ("stopped",):
            # Finished (or failed for good): a later run starts it afresh.
            self.state_store.delete(done.stream_id)
        if job is not None:
            job.status = done.status
            job.error = done.error
            self._jobs.pop(done.stream_id, None)
            if job.on_done is not None:
                job.on_done(job.source, done.status, done.error)
        self._notify(("done", done.stream_id, done.status))
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    def _notify(self, item) -> None:
        # Progress reporting is decoration: its failure is logged once and switched off,
        # never a stream's failure (it runs on the decode and sink threads).
        progress = self.progress
        if progress is None:
            return
        try:
            progress(item)
        except Exception as e:
            self.progress = None
            log.warning("progress reporting switched off after an error: %s: %s", type(e).__name__, e)

    def _fail(self, e: BaseException) -> None:
        if self._fatal is None:
            self._fatal = e
        self._stop.set()
        with self._idle:
            self._idle.notify_all()


def _sid(item) -> str:
    if isinstance(item, (Segment, StreamEvent)):
        return item.stream_id
    if isinstance(item, _Restore):
        return item.snap["stream_id"]
    if isinstance(item, _Done):
        return item.stream_id
    raise TypeError(f"unexpected item {type(item).__name__}")


def _counted(frames, report: RunReport):
    from vmstream.records import Frame

    for item in frames:
        if isinstance(item, Frame):
            report.frames += 1
        yield item
