"""The sink thread's work: every record to every sink, a snapshot saved only after the
sinks are flushed, and a stream's end reported once its records are written. A
stream's start tells every sink its version (a fresh start replaces what the sink holds
of the stream) and that version is stamped on each of its records.

It reads the output queue the inference loop fills; the run's control
(run_control.RunControl) hears of each stream's end and of a sink's failure, which is
the run's fatal error (a full disk as one line: disk_full.DiskFullError)."""

from __future__ import annotations

import logging
import queue
import time
from typing import Sequence

from vmstream.errors import UserError
from vmstream.pipeline.disk_full import disk_full, sink_what
from vmstream.pipeline.report import RunReport
from vmstream.pipeline.run_control import RunControl
from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
from vmstream.records import SaveSnapshot, StreamDone, StreamStart, StreamSummary
from vmstream.stages.sinks.base import Sink

log = logging.getLogger(__name__)


class SinkWriter:
    """Reads `out_q` until its `None` and writes each record to every sink. A stream's
    end (StreamDone) flushes the sinks first when `flush_on_stream_end` or the stream
    was stopped, ends the stream's snapshot life (snapshot_keeper.stream_ended), then
    tells `control`. After a failure it only drains `out_q`; `close()` closes the sinks."""

    def __init__(
        self,
        *,
        sinks: Sequence[Sink],
        snapshots: SnapshotKeeper,
        out_q: "queue.Queue",
        control: RunControl,
        report: RunReport,
        flush_on_stream_end: bool = False,
    ):
        self.sinks = list(sinks)
        self.snapshots = snapshots
        self.out_q = out_q
        self.control = control
        self.report = report
        self.flush_on_stream_end = flush_on_stream_end
        self._versions: dict[str, str] = {}
        self._doing: tuple[str, object] = ("results", "the output directory")  # for a full disk's message
        self.close_failures: list[BaseException] = []

    def run(self) -> None:
        try:
            while True:
                item = self.out_q.get()
                if item is None:
                    break
                if self.control.fatal is not None:
                    continue  # drain so producers never block forever
                if isinstance(item, SaveSnapshot):
                    self.flush()
                    self._doing = (f"the snapshot of stream {item.stream_id}", self.snapshots.location)
                    self.snapshots.save(item)
                elif isinstance(item, StreamStart):
                    self._start(item)
                elif isinstance(item, StreamDone):
                    self._end(item)
                else:
                    self._write(item)
        except BaseException as e:
            full = disk_full(e, *self._doing)
            if full is not None:  # one line at the end of the run says it; no traceback
                log.debug("sink failed", exc_info=True)
                e = full
            elif isinstance(e, UserError):  # e.g. a damaged result part found mid-run: its own line
                log.debug("sink failed", exc_info=True)
            else:
                log.exception("sink failed")
            self.control.fail(e)
            while self.out_q.get() is not None:  # keep draining so upstream threads can finish
                pass

    def _start(self, start: StreamStart) -> None:
        self._versions[start.stream_id] = start.version
        for s in self.sinks:
            self._doing = sink_what(s)
            begin = getattr(s, "begin_stream", None)
            if begin is not None:
                begin(start.stream_id, start.version, replace=not start.resumed)

    def _end(self, done: StreamDone) -> None:
        self._versions.pop(done.stream_id, None)
        if self.flush_on_stream_end or done.status == "stopped":
            self.flush()
        self.snapshots.stream_ended(done.stream_id, done.status)
        self.control.stream_done(done)

    def _write(self, item) -> None:
        version = self._versions.get(item.stream_id)
        if version is not None and not getattr(item, "stream_version", True):
            item.stream_version = version
        t0 = time.perf_counter()
        for s in self.sinks:
            ts = time.perf_counter()
            self._doing = sink_what(s)
            s.write(item)
            self.report.add_sink_time(s.name, time.perf_counter() - ts)
        self.report.sinks.items += 1
        self.report.sinks.busy_s += time.perf_counter() - t0
        if isinstance(item, StreamSummary):
            self.report.summaries.append(item)
        self.control.notify(item)

    def flush(self) -> None:
        t0 = time.perf_counter()
        for s in self.sinks:
            ts = time.perf_counter()
            self._doing = sink_what(s)
            s.flush()
            self.report.add_sink_time(s.name, time.perf_counter() - ts)
        self.report.sinks.busy_s += time.perf_counter() - t0

    def close(self) -> list[str]:
        """Close every sink; the failures, one line each (every sink is closed)."""
        errors = []
        for s in self.sinks:
            t0 = time.perf_counter()
            try:
                s.close()
            except Exception as e:  # report every sink's failure, not only the first
                errors.append(f"{s.name}: {e}")
                full = disk_full(e, *sink_what(s))
                if full is not None:
                    log.debug("sink %s failed to close", s.name, exc_info=True)
                    self.close_failures.append(full)
                else:
                    log.exception("sink %s failed to close", s.name)
                    self.close_failures.append(e)
            self.report.add_sink_time(s.name, time.perf_counter() - t0)
        return errors
