"""What the runner's threads share about a run: the streams in flight (each with its stop
flag and the caller's `on_done`), whether the run was stopped, its fatal error, the count
of streams not yet done, and progress reporting.

The decode workers, the inference loop (batching.InferenceLoop) and the sink writer
(sink_writer.SinkWriter) hold the one RunControl of their run; they talk to each other
only through the queues between them and this object, never through the runner."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from vmstream.pipeline.report import RunReport
from vmstream.records import StreamDone

log = logging.getLogger(__name__)

# Seconds a blocked put/get waits before it looks again at the stop flag and the fatal error.
POLL = 0.1

OnDone = Callable[[object, str, Optional[str]], None]


class StreamJob:
    """One submitted stream: its source, who to tell when it is done, and its stop flag."""

    __slots__ = ("source", "on_done", "status", "error", "stop")

    def __init__(self, source, on_done: Optional[OnDone] = None):
        self.source = source
        self.on_done = on_done
        self.status = "pending"
        self.error: Optional[str] = None
        # Set by stop() (all streams) or the runner's cancel(stream_id) (one): the
        # decoder ends the stream with reason "stopped" and a snapshot is saved.
        self.stop = threading.Event()


class RunControl:
    """The run's shared state. `progress(item)`, when given, sees ("stream", id, info) as
    a stream starts, every record written, and ("done", id, status) as a stream ends."""

    def __init__(self, report: RunReport, progress: Optional[Callable[[object], None]] = None):
        self.report = report
        self.progress = progress
        self._jobs: dict[str, StreamJob] = {}
        self._stop = threading.Event()  # stop producing: decoders end their streams
        self._fatal: Optional[BaseException] = None
        self._idle = threading.Condition()
        self._outstanding = 0  # submitted streams whose StreamDone has not passed the sinks

    # ----------------------------------------------------------------- streams

    def add(self, source, on_done: Optional[OnDone] = None) -> StreamJob:
        """A new stream in flight; ValueError when one of its id already is."""
        if source.stream_id in self._jobs:
            raise ValueError(f"stream {source.stream_id!r} is already running")
        job = StreamJob(source, on_done)
        with self._idle:
            self._outstanding += 1
        self._jobs[source.stream_id] = job
        return job

    def job(self, stream_id: str) -> Optional[StreamJob]:
        return self._jobs.get(stream_id)

    def running(self) -> list[str]:
        """Stream ids submitted and not yet done."""
        return list(self._jobs)

    def stopping(self, stream_id: str) -> bool:
        """Whether the stream was asked to stop (the whole run, or that stream alone)."""
        job = self._jobs.get(stream_id)
        return job is not None and job.stop.is_set()

    def stop(self) -> None:
        """Every stream ends early; none starts any more."""
        self._stop.set()
        for job in list(self._jobs.values()):
            job.stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stream_done(self, done: StreamDone) -> None:
        """From the sink thread: every record of the stream is written (and flushed, when
        the sink writer was asked to): counted in the report, told to its `on_done`."""
        job = self._jobs.get(done.stream_id)
        self.report.streams += 1
        self.report.statuses[done.stream_id] = done.status
        if done.status == "stopped":
            self.report.streams_stopped += 1
        if done.status in ("failed", "error"):
            self.report.streams_failed += 1
            self.report.failures.append((done.stream_id, job.source.uri if job else "", done.error or done.status))
        if job is not None:
            job.status = done.status
            job.error = done.error
            self._jobs.pop(done.stream_id, None)
            if job.on_done is not None:
                job.on_done(job.source, done.status, done.error)
        self.notify(("done", done.stream_id, done.status))
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block until every stream added is done, or the run failed. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._outstanding > 0 and self._fatal is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(timeout=POLL if remaining is None else min(POLL, remaining))
        return True

    # ----------------------------------------------------------------- failure

    def fail(self, e: BaseException) -> None:
        """The pipeline cannot go on: the first such error is the run's; the run stops."""
        if self._fatal is None:
            self._fatal = e
        self._stop.set()
        with self._idle:
            self._idle.notify_all()

    @property
    def fatal(self) -> Optional[BaseException]:
        return self._fatal

    # ----------------------------------------------------------------- progress

    def notify(self, item) -> None:
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
