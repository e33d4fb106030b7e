"""The worker's jobs: a job message, its parsing, the table of jobs a worker holds
with each partition's committable offset, and what the worker counts of them."""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Optional


@dataclass(eq=False)
class Job:
    """One job message taken from the jobs topic, and where it stands."""

    seq: int
    tp: Any  # kafka TopicPartition
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: list
    timestamp: Optional[int]
    source: Any = None  # vmstream.stages.sources.Source, None for a bad message
    state: str = "new"  # new | deferred | running | dead-letter | done
    retry_at: float = 0.0
    status: Optional[str] = None  # the runner's final status
    error: Optional[str] = None
    store_failed: bool = False  # its snapshot could not be loaded (retry, not dead-letter)
    revoked: bool = False
    fenced: bool = False  # revoked and still in the runner: its snapshot writes are dropped
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def where(self) -> str:
        return f"{self.tp.topic}[{self.tp.partition}]@{self.offset}"

    @property
    def stream_id(self) -> Optional[str]:
        return self.source.stream_id if self.source is not None else None


@dataclass
class WorkerStats:
    """What a worker counts (the loop and the hand-over add to it), logged when it stops."""

    jobs: int = 0  # taken from the jobs topic
    done: int = 0
    dead_lettered: int = 0
    revoked: int = 0  # given up with their partitions
    retried: int = 0
    commits: int = 0

    def format(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


# A job is a URI, a stream id and a few options: far below these. Both bounds are
# checked on the raw bytes before any parsing, so a hostile record (a gigabyte, or
# `[[[[...` nested past the parser's recursion limit) costs one linear scan.
MAX_JOB_BYTES = 64 << 10
MAX_JOB_DEPTH = 16
_JSON_TOKEN = re.compile(rb'[\[\]{}"\\]')


def json_depth(value: bytes) -> int:
    """How deep `value`'s brackets nest (outside strings): one pass over the brackets,
    quotes and backslashes, no parsing, no recursion."""
    depth = deepest = 0
    in_string = False
    skip = -1  # the position of a character escaped by a backslash
    for m in _JSON_TOKEN.finditer(value):
        pos, tok = m.start(), m.group()
        if pos == skip:
            continue
        if in_string:
            if tok == b"\\":
                skip = pos + 1
            elif tok == b'"':
                in_string = False
        elif tok == b'"':
            in_string = True
        elif tok in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif tok in (b"]", b"}"):
            depth -= 1
    return deepest


def check_job_bounds(value: bytes) -> None:
    """ValueError when a job message is too big or too deeply nested to parse."""
    if len(value) > MAX_JOB_BYTES:
        raise ValueError(f"job message is {len(value)} bytes; a job may have at most {MAX_JOB_BYTES}")
    depth = json_depth(value)
    if depth > MAX_JOB_DEPTH:
        raise ValueError(f"job message nests {depth} levels deep; a job may nest at most {MAX_JOB_DEPTH}")


def parse_job(value: Optional[bytes]) -> dict:
    """The job dict in a message value; ValueError saying what is wrong."""
    if value is None:
        raise ValueError("empty job message (no value)")
    check_job_bounds(value)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"job message is not UTF-8 text: {e}") from None
    try:
        job = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"job message is not JSON: {e}") from None
    if not isinstance(job, dict):
        raise ValueError(f"job message must be a JSON object, got {type(job).__name__}")
    return job


class OffsetLedger:
    """The offsets taken from one partition, in order, and which of them are done.

    `commit_offset()` is what may be committed: one past the last offset of the done
    prefix (so the first offset not done yet, or one past the last when all are);
    None until the prefix grows past what was committed. Offsets need not be
    contiguous (compacted or transactional logs have gaps)."""

    def __init__(self) -> None:
        self._open: "OrderedDict[int, bool]" = OrderedDict()
        self._next: Optional[int] = None  # one past the last offset of the done prefix
        self._committed: Optional[int] = None

    def add(self, offset: int) -> None:
        last = next(reversed(self._open)) if self._open else (self._next - 1 if self._next is not None else None)
        if last is not None and offset <= last:
            raise ValueError(f"offset {offset} taken after {last}: offsets must come in order")
        self._open[offset] = False

    def finish(self, offset: int) -> None:
        if offset in self._open:
            self._open[offset] = True

    def commit_offset(self) -> Optional[int]:
        """The offset to commit now, or None when it is unchanged since `committed()`."""
        while self._open:
            first = next(iter(self._open))
            if not self._open[first]:
                break
            del self._open[first]
            self._next = first + 1
        if self._next is None or self._next == self._committed:
            return None
        return self._next

    def committed(self, offset: int) -> None:
        self._committed = offset

    @property
    def unfinished(self) -> list[int]:
        return [o for o, done in self._open.items() if not done]


class JobTable:
    """The jobs a worker holds (taken and not done, in arrival order), each partition's
    OffsetLedger, and the streams fenced off the state store.

    Shared by the main loop, the runner's sink thread (completions, snapshot writes)
    and the rebalance listener; every method takes `lock` (re-entrant, so a caller may
    hold it around several calls)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.jobs: "OrderedDict[int, Job]" = OrderedDict()
        self.ledgers: dict = {}  # TopicPartition -> OffsetLedger
        self._fenced: dict[str, int] = {}  # stream id -> revoked jobs of it still in the runner
        self._store_failures: dict[str, str] = {}
        self._seq = 0

    # ----------------------------------------------------------------- taking and finishing

    def take(self, tp: Any, m: Any) -> Optional[Job]:
        """Hold the job in message `m` from partition `tp`; None when that offset was
        taken already (delivered again after the position moved back)."""
        with self.lock:
            self._seq += 1
            job = Job(self._seq, tp, m.offset, m.key, m.value, list(m.headers or []), m.timestamp)
            try:
                self.ledgers.setdefault(tp, OffsetLedger()).add(m.offset)
            except ValueError:
                return None
            self.jobs[job.seq] = job
            return job

    def finish(self, job: Job) -> None:
        """The job is done: its offset may be committed once the ones before it are."""
        with self.lock:
            job.state = "done"
            self.jobs.pop(job.seq, None)
            ledger = self.ledgers.get(job.tp)
            if ledger is not None:
                ledger.finish(job.offset)

    def complete(self, job: Job, status: str, error: Optional[str]) -> None:
        """Record the runner's verdict on `job` (from the runner's sink thread): the
        job has left the runner (`job.finished` is set)."""
        with self.lock:
            job.status, job.error = status, error
            if job.stream_id in self._store_failures and status in ("error", "failed"):
                job.store_failed = True
                job.error = self._store_failures.pop(job.stream_id)
            if job.fenced:
                self.unfence(job)
        job.finished.set()

    def deferred(self) -> list[Job]:
        with self.lock:
            return [j for j in self.jobs.values() if j.state == "deferred"]

    def deferred_before(self, job: Job) -> bool:
        """Whether an earlier job of the same stream is waiting its turn."""
        with self.lock:
            return any(
                j.state == "deferred" and j.stream_id == job.stream_id and j.seq < job.seq for j in self.jobs.values()
            )

    def note_store_failure(self, stream_id: str, exc: BaseException) -> None:
        with self.lock:
            self._store_failures[stream_id] = f"loading the stream's snapshot failed: {type(exc).__name__}: {exc}"

    # ----------------------------------------------------------------- offsets

    def commit_offsets(self) -> dict:
        """{TopicPartition: offset} that may be committed now (changed ones only)."""
        with self.lock:
            offsets = {}
            for tp, ledger in self.ledgers.items():
                off = ledger.commit_offset()
                if off is not None:
                    offsets[tp] = off
            return offsets

    def committed(self, offsets: dict) -> None:
        with self.lock:
            for tp, off in offsets.items():
                ledger = self.ledgers.get(tp)
                if ledger is not None:
                    ledger.committed(off)

    # ----------------------------------------------------------------- partitions leaving

    def pop_jobs(self, tps: Iterable[Any]) -> list[Job]:
        """Stop holding the jobs taken from `tps`; returns them."""
        tps = set(tps)
        with self.lock:
            gone = [j for j in self.jobs.values() if j.tp in tps]
            for job in gone:
                self.jobs.pop(job.seq, None)
            return gone

    def held(self, tps: Iterable[Any]) -> list[Job]:
        tps = set(tps)
        with self.lock:
            return [j for j in self.jobs.values() if j.tp in tps]

    def release(self, tps: Iterable[Any], jobs: Iterable[Job]) -> dict:
        """Forget the ledgers of `tps`; returns what may be committed for them. Those
        of `jobs` that finished ok count as done (even if the main loop has not seen
        them yet); cancelled ones do not."""
        jobs = list(jobs)
        out = {}
        with self.lock:
            for tp in tps:
                ledger = self.ledgers.pop(tp, None)
                if ledger is None:
                    continue
                for job in jobs:
                    if job.tp == tp and job.finished.is_set() and job.status in ("ok", "truncated"):
                        ledger.finish(job.offset)
                off = ledger.commit_offset()
                if off is not None:
                    out[tp] = off
        return out

    def drop_ledgers(self, tps: Iterable[Any]) -> None:
        with self.lock:
            for tp in tps:
                self.ledgers.pop(tp, None)

    # ----------------------------------------------------------------- fencing

    def fence(self, job: Job) -> None:
        """Drop the snapshot writes of `job`'s stream until the job leaves the runner."""
        with self.lock:
            if not job.fenced:
                job.fenced = True
                self._fenced[job.stream_id] = self._fenced.get(job.stream_id, 0) + 1

    def unfence(self, job: Job) -> None:
        with self.lock:
            if job.fenced:
                job.fenced = False
                n = self._fenced.get(job.stream_id, 0) - 1
                if n > 0:
                    self._fenced[job.stream_id] = n
                else:
                    self._fenced.pop(job.stream_id, None)

    def fenced_stream(self, stream_id: str) -> bool:
        with self.lock:
            return stream_id in self._fenced
