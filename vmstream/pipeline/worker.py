"""The Kafka worker: `vmstream worker --config FILE`.

Workers in one consumer group (`kafka.group_id`) share the jobs topic
(`kafka.jobs_topic`). A job is a JSON message naming a stream and where to read it:

    {"stream_id": "cam-7", "uri": "rtsp://10.0.0.7/stream", "options": {...}, "live": true}
    {"uri": "/data/videos/match.mp4"}                    # stream id = the absolute path

(`vmstream.stages.sources.source_from_job` validates it). Key job messages by stream
id: a stream's jobs then share a partition, so two workers never run one stream at
once (a worker runs two jobs of one stream one after the other). A worker runs its jobs
through the pipeline runner, at most `runner.max_streams` at a time, and publishes
results, events and summaries to Kafka (plus the local Parquet / FAISS outputs its
config asks for). Every `runner.snapshot_every` segments the runner flushes the sinks
and saves each stream's state to the compacted state topic (`KafkaStateStore`), so a
stream resumes on another worker after a crash or a rebalance: no segment lost,
duplicates only since the last snapshot (same uids: readers and the FAISS / Parquet
sinks de-duplicate).

Offsets: auto-commit is off. A partition's offset is committed only past jobs that
are done (their results acknowledged by the broker: the runner flushes the sinks
before it reports a stream done), i.e. up to the first job not yet done. A crash
therefore re-delivers every unfinished job, and also finished jobs that sat behind an
unfinished one in the same partition (these run again from the start: at-least-once).

Rebalances use the cooperative-sticky assignor (KIP-429), so a worker joining or
leaving moves only the partitions it must, and running jobs on other partitions go
on. When a partition is revoked, the worker cancels the jobs taken from it (the
runner saves their snapshots), waits for that (bounded by `revoke_timeout_s`, while
the consumer keeps heartbeating), commits what is done, and gives the partition up;
the next owner gets the unfinished jobs again and resumes them from the snapshots.
A job whose cancellation outlasts the wait is fenced: its later snapshot writes are
dropped, so they cannot overwrite the new owner's. Partitions *lost* (the group
evicted this worker) are fenced at once and nothing is committed.

Failures: a message that is not a valid job (not UTF-8 JSON, missing or bad fields)
and a job whose input fails (status "failed": missing / not a video; "error": decode
error) go to `kafka.dead_letter_topic` with the error, the original message and where
it came from; once that is acknowledged the job's offset counts as done and the
worker goes on. A job whose snapshot cannot be loaded (state topic unreachable) is an
infrastructure failure, not the job's: it is retried after a backoff.

Threads: kafka-python's consumer is not thread-safe, so only the worker's main thread
touches it (and the rebalance listener, which kafka-python runs while the main
thread is inside `poll`). The runner reports finished streams from its sink thread;
those reports reach the main thread through a queue.

SIGINT / SIGTERM: stop taking jobs, stop the runner (snapshots saved, sinks flushed),
commit what is done, leave the group (the others take the partitions over at once).
A second signal exits immediately.
"""
from __future__ import annotations

import base64
import functools
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from vmstream.errors import UserError

log = logging.getLogger(__name__)

# Job message values above this are cut in their dead-letter copy (the dead-letter
# topic has the broker's default 1 MB message limit).
_DLQ_ORIGINAL_MAX = 256 << 10
_DLQ_ERROR_MAX = 8 << 10

_ASSIGNORS = ("range", "roundrobin", "sticky", "cooperative-sticky")


# --------------------------------------------------------------------------- offsets


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


# --------------------------------------------------------------------------- jobs


@dataclass(eq=False)
class _Job:
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


def parse_job(value: Optional[bytes]) -> dict:
    """The job dict in a message value; ValueError saying what is wrong."""
    if value is None:
        raise ValueError("empty job message (no value)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"job message is not UTF-8 text: {e}") from None
    try:
        job = json.loads(text)
    except ValueError as e:
        raise ValueError(f"job message is not JSON: {e}") from None
    if not isinstance(job, dict):
        raise ValueError(f"job message must be a JSON object, got {type(job).__name__}")
    return job


def dead_letter_payload(job: _Job, reason: str, error: str, *, worker_id: str, group_id: str) -> bytes:
    """The dead-letter message value: the error, the original message (as JSON if it
    was JSON, else as text or base64) and where it came from."""
    original: Any
    raw = job.value or b""
    cut = len(raw) > _DLQ_ORIGINAL_MAX
    raw = raw[:_DLQ_ORIGINAL_MAX]
    try:
        original = json.loads(raw.decode("utf-8")) if not cut else raw.decode("utf-8", errors="replace")
    except (UnicodeDecodeError, ValueError):
        try:
            original = raw.decode("utf-8")
        except UnicodeDecodeError:
            original = {"base64": base64.b64encode(raw).decode("ascii")}
    payload = {
        "reason": reason,  # bad_message | failed | error
        "error": error[:_DLQ_ERROR_MAX],
        "stream_id": job.stream_id,
        "uri": job.source.uri if job.source is not None else None,
        "job": None if job.value is None else original,
        "job_truncated": cut,
        "source": {
            "topic": job.tp.topic,
            "partition": job.tp.partition,
            "offset": job.offset,
            "timestamp_ms": job.timestamp,
            "key": None if job.key is None else job.key.decode("utf-8", errors="replace"),
        },
        "worker": worker_id,
        "group_id": group_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return json.dumps(payload).encode("utf-8")


# --------------------------------------------------------------------------- state store guard


class _GuardedStore:
    """The worker's view of the state store for its runner: snapshot writes for
    streams this worker no longer owns are dropped; load failures are noted so the
    job is retried rather than dead-lettered."""

    def __init__(self, store, worker: "Worker"):
        self.store = store
        self.worker = worker

    def load(self, stream_id: str):
        try:
            return self.store.load(stream_id)
        except Exception as e:
            self.worker._store_failed(stream_id, e)
            raise

    def save(self, snap: dict) -> None:
        if self.worker._fenced_stream(snap["stream_id"]):
            log.info("stream %s: not saving its snapshot, its job has moved to another worker", snap["stream_id"])
            return
        self.store.save(snap)

    def delete(self, stream_id: str) -> None:
        if self.worker._fenced_stream(stream_id):
            return
        self.store.delete(stream_id)


# --------------------------------------------------------------------------- rebalance listener


def _loop_sleep(consumer):
    """An awaitable sleep on kafka-python's event loop (where rebalance listeners
    run), so a listener can wait while the loop keeps heartbeating. None when this
    kafka-python has no such loop; then listeners wait by blocking, briefly."""
    net = getattr(getattr(consumer, "_coordinator", None), "_net", None)
    sleep = getattr(net, "sleep", None)
    return sleep if callable(sleep) else None


def _make_listener(worker: "Worker"):
    import kafka

    base = getattr(kafka, "AsyncConsumerRebalanceListener", None)
    if base is not None:

        class AsyncListener(base):
            async def on_partitions_revoked(self, revoked):
                await worker._on_revoked_async(revoked)

            async def on_partitions_assigned(self, assigned):
                worker._on_assigned(assigned)

            async def on_partitions_lost(self, lost):
                worker._on_lost(lost)

        return AsyncListener()

    class SyncListener(kafka.ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            worker._on_revoked_sync(revoked)

        def on_partitions_assigned(self, assigned):
            worker._on_assigned(assigned)

        def on_partitions_lost(self, lost):
            worker._on_lost(lost)

    return SyncListener()


def _broker_trouble(e: BaseException, also: tuple = ()) -> bool:
    """Whether an error from a consumer call is the broker being away or busy (a socket
    error, or a Kafka error marked retriable, or one of `also`): wait and call again."""
    from kafka import errors as E

    if isinstance(e, E.KafkaError):
        return bool(getattr(e, "retriable", False)) or isinstance(e, also)
    return isinstance(e, ConnectionError)


# --------------------------------------------------------------------------- the worker


class Worker:
    """One member of the worker group (see the module doc).

        worker = Worker(cfg)          # cfg: PipelineConfig with a kafka section
        rc = worker.run()             # until stop() / SIGINT / SIGTERM

    `model`, `sinks`, `state_store` replace the configured ones (tests, embedding).
    """

    def __init__(
        self,
        cfg,
        *,
        model=None,
        sinks=None,
        state_store=None,
        poll_timeout_s: float = 0.2,
        revoke_timeout_s: float = 30.0,
        retry_backoff_s: float = 5.0,
        shutdown_timeout_s: float = 120.0,
        commit_timeout_s: float = 10.0,
        install_signals: bool = True,
    ):
        if not cfg.kafka.bootstrap:
            raise UserError("the worker needs Kafka: set kafka.bootstrap in the config or pass --kafka HOST:PORT")
        self.cfg = cfg
        self.poll_timeout_s = poll_timeout_s
        self.revoke_timeout_s = revoke_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.install_signals = install_signals
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._model = model
        self._sinks = sinks
        self._store = state_store
        self._lock = threading.RLock()
        self._jobs: "OrderedDict[int, _Job]" = OrderedDict()  # held jobs not yet done, in arrival order
        self._ledgers: dict = {}  # TopicPartition -> OffsetLedger
        self._completed: "queue.Queue[_Job]" = queue.Queue()
        self._dead_letter_waiting: list[_Job] = []
        self._fenced: dict[str, int] = {}  # stream id -> revoked jobs of it still in the runner
        self._store_failures: dict[str, str] = {}
        self._seq = 0
        self._stop_requested = threading.Event()
        self._poll_failures = 0
        self._poll_warned_at = 0.0
        self._signals = 0
        self.runner = None
        self.consumer = None
        self.dead_letters = None
        self.stats = {"jobs": 0, "done": 0, "dead_lettered": 0, "revoked": 0, "retried": 0, "commits": 0}

    # ----------------------------------------------------------------- public

    def stop(self) -> None:
        """Ask the worker to stop cleanly (thread- and signal-safe)."""
        self._stop_requested.set()

    def run(self) -> int:
        """Serve jobs until stopped. Returns the process exit code (0 on a clean stop,
        1 when the pipeline failed)."""
        from kafka import errors as E

        old_handlers = self._install_signal_handlers()
        try:
            try:
                self._start()
            except (E.KafkaError, ConnectionError, ValueError) as e:  # ValueError: a bad client setting
                self._abort_start()
                raise UserError(f"Kafka at {self.cfg.kafka.bootstrap}: {e}") from None
            except BaseException:
                self._abort_start()
                raise
            rc = 0
            try:
                self._serve()
            except Exception as e:  # the pipeline failed (e.g. a sink gave up on the broker)
                log.error("worker %s: %s: %s; stopping without committing unfinished jobs", self.worker_id,
                          type(e).__name__, e, exc_info=not isinstance(e, RuntimeError))
                rc = 1
            return max(rc, self._shutdown(failed=rc != 0))
        finally:
            self._close_clients()
            for sig, old in old_handlers.items():
                signal.signal(sig, old)

    # ----------------------------------------------------------------- start / stop

    def _install_signal_handlers(self) -> dict:
        old = {}
        if not self.install_signals or threading.current_thread() is not threading.main_thread():
            return old

        def handle(signum, frame):
            self._signals += 1
            if self._signals > 1:
                print("\nvmstream worker: second signal, exiting without cleanup", file=sys.stderr)
                os._exit(130)
            print(f"\nvmstream worker: {signal.Signals(signum).name}: stopping (snapshots, flush, commit; "
                  "again to abort)", file=sys.stderr)
            self.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handle)
        return old

    def _start(self) -> None:
        from kafka import KafkaConsumer

        from vmstream.pipeline.assembly import build_runner, build_sinks, load_pipeline_model
        from vmstream.pipeline.kafka_admin import TopicNames
        from vmstream.pipeline.kafka_state import KafkaStateStore
        from vmstream.stages.sinks.kafka import ReliableProducer

        cfg = self.cfg
        k = cfg.kafka
        self.topics = TopicNames.from_config(k)
        self._ensure_topics()
        consumer_opts = self._consumer_options()
        model = self._model if self._model is not None else load_pipeline_model(cfg)
        if self._store is None:
            self._store = KafkaStateStore(k.bootstrap, self.topics.state, client_config=k.client)
        sinks = self._sinks if self._sinks is not None else build_sinks(cfg, model)
        self.dead_letters = ReliableProducer(k.bootstrap, client_config=k.client)
        self.runner = build_runner(cfg, model=model, sinks=sinks, state_store=_GuardedStore(self._store, self),
                                   flush_on_stream_end=True)
        self.runner.start()
        self.consumer = KafkaConsumer(**consumer_opts)
        self.consumer.subscribe([self.topics.jobs], listener=_make_listener(self))
        self._sleep = _loop_sleep(self.consumer)
        log.info("worker %s: in group %s on %s, up to %d jobs at a time", self.worker_id, k.group_id,
                 self.topics.jobs, self.runner.max_streams)

    def _ensure_topics(self) -> None:
        """Create the topics the worker uses when missing (the project's admin step);
        existing topics keep their partition counts."""
        from vmstream.pipeline.kafka_admin import admin_client, describe_topics, ensure_topics, vmstream_topics

        k = self.cfg.kafka
        try:
            admin = admin_client(k.bootstrap, k.client)
            try:
                have = describe_topics(admin, self.topics.all())
            finally:
                admin.close()
            specs = []
            for s in vmstream_topics(self.topics):
                if s.name in have:
                    s = type(s)(s.name, have[s.name]["partitions"], s.replication_factor, s.configs)
                specs.append(s)
            # Configs of existing topics are the operator's (the admin step reconciles
            # them); differences are only reported here.
            ensure_topics(k.bootstrap, specs, client_config=k.client, update_configs=False)
        except ConnectionError as e:
            raise UserError(f"Kafka at {k.bootstrap}: {e}") from None

    def _consumer_options(self) -> dict:
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

        from vmstream.stages.sinks.kafka import client_options

        k = self.cfg.kafka
        opts: dict[str, Any] = dict(
            bootstrap_servers=k.bootstrap,
            group_id=k.group_id,
            client_id=f"vmstream-worker-{self.worker_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=[CooperativeStickyAssignor],
            max_poll_records=max(1, self.cfg.runner.max_streams),
        )
        try:
            opts.update(client_options(k.client, "consumer"))
            opts.update(client_options(k.consumer, "consumer"))
        except ValueError as e:
            raise UserError(f"kafka.client / kafka.consumer: {e}") from None
        if opts.get("enable_auto_commit"):
            raise UserError("kafka.consumer.enable_auto_commit: the worker commits offsets itself, "
                            "only past finished jobs; auto-commit would lose jobs on a crash")
        opts["enable_auto_commit"] = False
        strategy = opts.get("partition_assignment_strategy")
        if isinstance(strategy, (str, list, tuple)) and any(isinstance(s, str) for s in (
                [strategy] if isinstance(strategy, str) else strategy)):
            opts["partition_assignment_strategy"] = _assignors([strategy] if isinstance(strategy, str) else strategy)
        session_s = opts.get("session_timeout_ms", 45000) / 1000.0
        self._sync_wait_s = max(0.5, session_s / 3)  # for a listener that must block (see _loop_sleep)
        return opts

    def _shutdown(self, failed: bool) -> int:
        """Stop the runner (snapshots), keep the group alive while it drains, commit
        what is done, leave the group."""
        rc = 0
        c = self.consumer
        if c is None:
            return 1 if failed else 0
        log.info("worker %s: stopping: %d job(s) running", self.worker_id, len(self.runner.running()))
        self.runner.stop()
        deadline = time.monotonic() + self.shutdown_timeout_s
        idle = False
        while time.monotonic() < deadline:
            try:
                idle = self.runner.wait(timeout=0)
            except RuntimeError:
                failed = True
                break
            if idle:
                break
            self._pause_all()
            self._poll_nothing()
            self._process_completions(stopping=True)
        if not idle and not failed:
            log.error("worker %s: the runner did not stop within %.0fs", self.worker_id, self.shutdown_timeout_s)
            failed = True
        self._process_completions(stopping=True)
        if not failed:
            try:
                self.dead_letters.flush(timeout_s=30.0)
            except Exception as e:
                log.error("dead-letter topic: %s", e)
            self._check_dead_letters()
            self._commit(final=True)
        try:
            report = self.runner.close()
            log.info("worker %s: %s", self.worker_id, report.format().replace("\n", "; "))
        except RuntimeError as e:
            log.error("worker %s: %s", self.worker_id, e)
            failed = True
        try:
            # Leaving the group hands the partitions over at once; commits are done.
            c.close(autocommit=False)
        except Exception as e:
            log.warning("closing the Kafka consumer: %s", e)
        self.consumer = None
        if failed:
            rc = 1
        log.info("worker %s: stopped (%s)", self.worker_id, ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        return rc

    def _abort_start(self) -> None:
        if self.runner is not None:
            self.runner.stop()
            try:
                self.runner.close()  # closes the sinks (their producers) too
            except Exception as e:
                log.warning("closing the pipeline: %s", e)

    def _close_clients(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception:
                pass
            self.consumer = None
        for closer in (getattr(self.dead_letters, "close", None), getattr(self._store, "close", None)):
            if closer is None:
                continue
            try:
                closer()
            except Exception as e:
                log.warning("closing: %s", e)
        self.dead_letters = None

    # ----------------------------------------------------------------- main loop

    def _serve(self) -> None:
        c = self.consumer
        while not self._stop_requested.is_set():
            self.runner.wait(timeout=0)  # raises RuntimeError once the pipeline has failed
            self._process_completions()
            self._submit_deferred()
            self._check_dead_letters()
            self._commit()
            free = self._free_slots()
            if free <= 0:
                # Full: keep the membership alive and wait for a job to finish (the
                # next one starts as soon as one does). The poll needs a real timeout:
                # kafka-python drives group joins from inside it, and one of 0 ms never
                # gets a rebalance going, which would hold the whole group up.
                self._pause_all()
                self._poll_nothing(timeout_s=self.poll_timeout_s / 2)
                self._wait_completion(self.poll_timeout_s / 2)
                continue
            if c.paused():
                c.resume(*c.paused())
            records = self._poll(self.poll_timeout_s, max(1, free))
            for tp, msgs in records.items():
                for m in msgs:
                    if self._free_slots() <= 0:
                        # Taken while full (a partition assigned since the last pause):
                        # give it back to the fetcher for later.
                        c.seek(tp, m.offset)
                        c.pause(tp)
                        break
                    self._take(tp, m)

    def _free_slots(self) -> int:
        with self._lock:
            deferred = sum(1 for j in self._jobs.values() if j.state == "deferred")
        return self.runner.max_streams - len(self.runner.running()) - deferred

    def _poll(self, timeout_s: float, max_records: int) -> dict:
        """consumer.poll, riding out a broker outage: kafka-python 3 can raise connection
        and timeout errors out of poll (from the coordinator lookup and offset validation
        it runs inside). Those are the broker's trouble, not the worker's: wait and poll
        again (jobs keep running, results wait in the sinks), never stop."""
        from kafka import errors as E

        try:
            records = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except (E.KafkaError, ConnectionError) as e:
            if not _broker_trouble(e):
                raise
            now = time.monotonic()
            if self._poll_failures == 0 or now - self._poll_warned_at > 30:
                log.warning("worker %s: polling the jobs topic: %s: %s (retrying while the broker is away)",
                            self.worker_id, type(e).__name__, e)
                self._poll_warned_at = now
            self._poll_failures += 1
            self._stop_requested.wait(min(self.poll_timeout_s, 1.0))
            return {}
        if self._poll_failures:
            log.info("worker %s: polling again after %d failed poll(s)", self.worker_id, self._poll_failures)
            self._poll_failures = 0
        return records

    def _pause_all(self) -> None:
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)

    def _poll_nothing(self, timeout_s: Optional[float] = None) -> None:
        """Keep the group membership alive (all partitions paused)."""
        t = self.poll_timeout_s if timeout_s is None else timeout_s
        records = self._poll(t, 1)
        for tp, msgs in records.items():
            if msgs:
                self.consumer.seek(tp, msgs[0].offset)
                self.consumer.pause(tp)

    # ----------------------------------------------------------------- jobs in

    def _take(self, tp, m) -> None:
        from vmstream.pipeline.assembly import with_live_options
        from vmstream.stages.sources import source_from_job

        with self._lock:
            self._seq += 1
            job = _Job(self._seq, tp, m.offset, m.key, m.value, list(m.headers or []), m.timestamp)
            try:
                self._ledgers.setdefault(tp, OffsetLedger()).add(m.offset)
            except ValueError:
                # Delivered again after the position moved back (e.g. an offset reset):
                # this worker holds or has finished it already.
                log.warning("job %s: delivered again; already taken, ignoring this copy", job.where)
                return
            self._jobs[job.seq] = job
        self.stats["jobs"] += 1
        try:
            spec = parse_job(m.value)
            (job.source,) = with_live_options(self.cfg, [source_from_job(spec)])
        except ValueError as e:  # SourceSpecError is a ValueError
            log.warning("job %s: bad job message: %s", job.where, e)
            self._dead_letter(job, "bad_message", str(e))
            return
        log.info("job %s: stream %s (%s)", job.where, job.stream_id, job.source.uri)
        self._try_submit(job)

    def _try_submit(self, job: _Job) -> None:
        sid = job.stream_id
        with self._lock:
            earlier = any(j.state == "deferred" and j.stream_id == sid and j.seq < job.seq for j in self._jobs.values())
        if earlier or sid in self.runner.running() or time.monotonic() < job.retry_at:
            # Another job of this stream is still in the runner (e.g. cancelled by a
            # rebalance and not finished yet): this one starts after it.
            job.state = "deferred"
            return
        job.state = "running"
        job.store_failed = False
        try:
            self.runner.submit(job.source, on_done=functools.partial(self._on_done, job))
        except ValueError:  # the stream got into the runner in between
            job.state = "deferred"

    def _submit_deferred(self) -> None:
        with self._lock:
            deferred = [j for j in self._jobs.values() if j.state == "deferred"]
        for job in deferred:
            if job.revoked:
                continue
            self._try_submit(job)

    # ----------------------------------------------------------------- jobs out

    def _on_done(self, job: _Job, source, status: str, error: Optional[str]) -> None:
        # The runner's sink thread: hand over to the main thread.
        with self._lock:
            job.status, job.error = status, error
            if job.stream_id in self._store_failures and status in ("error", "failed"):
                job.store_failed = True
                job.error = self._store_failures.pop(job.stream_id)
            if job.fenced:
                self._unfence(job)
        job.finished.set()
        self._completed.put(job)

    def _store_failed(self, stream_id: str, exc: BaseException) -> None:
        with self._lock:
            self._store_failures[stream_id] = f"loading the stream's snapshot failed: {type(exc).__name__}: {exc}"

    def _fence(self, job: _Job) -> None:
        # Called with the lock held.
        if not job.fenced:
            job.fenced = True
            self._fenced[job.stream_id] = self._fenced.get(job.stream_id, 0) + 1

    def _unfence(self, job: _Job) -> None:
        # Called with the lock held.
        if job.fenced:
            job.fenced = False
            n = self._fenced.get(job.stream_id, 0) - 1
            if n > 0:
                self._fenced[job.stream_id] = n
            else:
                self._fenced.pop(job.stream_id, None)

    def _fenced_stream(self, stream_id: str) -> bool:
        with self._lock:
            return stream_id in self._fenced

    def _process_completions(self, stopping: bool = False) -> None:
        while True:
            try:
                job = self._completed.get_nowait()
            except queue.Empty:
                return
            self._completion(job, stopping)

    def _wait_completion(self, timeout_s: float) -> None:
        try:
            job = self._completed.get(timeout=timeout_s)
        except queue.Empty:
            return
        self._completion(job, stopping=False)

    def _completion(self, job: _Job, stopping: bool) -> None:
        if job.revoked:
            return  # its partition went to another worker, which runs it again
        status = job.status
        if status in ("ok", "truncated"):
            log.info("job %s: stream %s done (%s)", job.where, job.stream_id, status)
            self._finish(job)
        elif status in ("failed", "error") and job.store_failed:
            log.warning("job %s: %s; retrying in %.0fs", job.where, job.error, self.retry_backoff_s)
            self.stats["retried"] += 1
            job.state, job.retry_at = "deferred", time.monotonic() + self.retry_backoff_s
        elif status in ("failed", "error"):
            log.warning("job %s: stream %s %s: %s", job.where, job.stream_id, status, job.error)
            self._dead_letter(job, status, job.error or status)
        elif status == "stopped":
            if not stopping and not self._stop_requested.is_set():
                # Not asked for: run it again (it resumes from its snapshot).
                job.state, job.retry_at = "deferred", time.monotonic() + self.retry_backoff_s
                self.stats["retried"] += 1
            # else: left uncommitted; whoever owns the partition next resumes it
        else:
            log.error("job %s: unknown status %r; leaving it uncommitted", job.where, status)

    def _finish(self, job: _Job) -> None:
        with self._lock:
            job.state = "done"
            self._jobs.pop(job.seq, None)
            ledger = self._ledgers.get(job.tp)
            if ledger is not None:
                ledger.finish(job.offset)
        self.stats["done"] += 1

    def _dead_letter(self, job: _Job, reason: str, error: str) -> None:
        value = dead_letter_payload(job, reason, error, worker_id=self.worker_id, group_id=self.cfg.kafka.group_id)
        headers = [h for h in job.headers if not h[0].startswith("vmstream.dead_letter.")]
        headers += [("vmstream.dead_letter.reason", reason.encode()),
                    ("vmstream.dead_letter.error", error.encode("utf-8", errors="replace")[:1024])]
        key = job.key if job.key is not None else (job.stream_id or "").encode() or None
        self.dead_letters.send(self.topics.dead_letter, value, key=key, headers=headers)
        with self._lock:
            job.state = "dead-letter"
            self._dead_letter_waiting.append(job)
        self.stats["dead_lettered"] += 1

    def _check_dead_letters(self) -> None:
        """Dead-lettered jobs count as done once the dead-letter topic has them."""
        if not self._dead_letter_waiting:
            return
        try:
            self.dead_letters.flush(timeout_s=0.0)
        except TimeoutError:
            return
        with self._lock:
            waiting, self._dead_letter_waiting = self._dead_letter_waiting, []
        for job in waiting:
            if not job.revoked:
                log.info("job %s: in the dead-letter topic %s", job.where, self.topics.dead_letter)
                self._finish(job)

    # ----------------------------------------------------------------- commits

    def _commit(self, final: bool = False) -> None:
        from kafka import errors as E
        from kafka.structs import OffsetAndMetadata

        with self._lock:
            offsets = {}
            for tp, ledger in self._ledgers.items():
                off = ledger.commit_offset()
                if off is not None:
                    offsets[tp] = off
        if not offsets:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                                 timeout_ms=int(self.commit_timeout_s * 1000))
        except (E.KafkaError, ConnectionError) as e:
            # The broker's trouble or the group's own churn: the offsets stay pending
            # and the next commit tries again.
            if not _broker_trouble(e, also=(E.CommitFailedError, E.RebalanceInProgressError,
                                            E.IllegalGenerationError, E.UnknownMemberIdError)):
                raise
            (log.error if final else log.warning)("committing offsets %s: %s%s", _fmt_offsets(offsets), e,
                                                  "" if final else " (will retry)")
            return
        with self._lock:
            for tp, off in offsets.items():
                ledger = self._ledgers.get(tp)
                if ledger is not None:
                    ledger.committed(off)
        self.stats["commits"] += 1
        log.debug("committed %s", _fmt_offsets(offsets))

    # ----------------------------------------------------------------- rebalances

    def _on_assigned(self, assigned) -> None:
        log.info("worker %s: assigned partitions %s", self.worker_id, _fmt_tps(assigned))

    def _on_lost(self, lost) -> None:
        """Evicted from the group: others own these partitions now. Cancel their jobs,
        drop their snapshot writes, commit nothing."""
        log.warning("worker %s: lost partitions %s (evicted from the group); cancelling their jobs",
                    self.worker_id, _fmt_tps(lost))
        self._revoke_jobs(lost, fence=True)
        with self._lock:
            for tp in lost:
                self._ledgers.pop(tp, None)

    def _revoke_jobs(self, tps, fence: bool) -> list[_Job]:
        """Mark the jobs of `tps` revoked and cancel the running ones (their snapshot
        writes dropped from now on when `fence`). Returns the cancelled ones."""
        tps = set(tps)
        cancelled = []
        with self._lock:
            for job in [j for j in self._jobs.values() if j.tp in tps]:
                job.revoked = True
                self._jobs.pop(job.seq, None)
                self.stats["revoked"] += 1
                if job.state == "running" and not job.finished.is_set():
                    if fence:
                        self._fence(job)
                    cancelled.append(job)
            # Dead-lettered but unacknowledged: the next owner tries them again.
            self._dead_letter_waiting = [j for j in self._dead_letter_waiting if j.tp not in tps]
        for job in cancelled:
            self.runner.cancel(job.stream_id)
        return cancelled

    def _fence_unfinished(self, jobs) -> None:
        with self._lock:
            for job in jobs:
                if not job.finished.is_set():
                    self._fence(job)
                    log.warning("job %s: stream %s still stopping after %.0fs; the next owner resumes it from an "
                                "earlier snapshot", job.where, job.stream_id, self.revoke_timeout_s)

    def _revoke_commit_offsets(self, tps, jobs) -> dict:
        """What may be committed for revoked partitions: finished jobs count (even if
        the main thread has not seen them yet); cancelled ones do not."""
        out = {}
        with self._lock:
            for tp in tps:
                ledger = self._ledgers.pop(tp, None)
                if ledger is None:
                    continue
                for job in jobs:
                    if job.tp == tp and job.finished.is_set() and job.status in ("ok", "truncated"):
                        ledger.finish(job.offset)
                off = ledger.commit_offset()
                if off is not None:
                    out[tp] = off
        return out

    def _begin_revoke(self, revoked):
        revoked = set(revoked)
        if not revoked:
            return None
        with self._lock:
            held = [j for j in self._jobs.values() if j.tp in revoked]
        log.info("worker %s: partitions %s revoked; cancelling %d job(s) taken from them", self.worker_id,
                 _fmt_tps(revoked), sum(1 for j in held if j.state == "running"))
        # Not fenced while we wait: their last snapshots are what the next owner resumes from.
        cancelled = self._revoke_jobs(revoked, fence=False)
        return revoked, held, cancelled

    def _end_revoke(self, revoked, held, cancelled) -> None:
        self._fence_unfinished(cancelled)
        offsets = self._revoke_commit_offsets(revoked, held)
        if offsets:
            from kafka.structs import OffsetAndMetadata

            # Asynchronously: this runs on kafka-python's event loop, which a blocking
            # commit would deadlock. It goes out before the group re-joins.
            fut = self.consumer.commit_async({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
            fut.add_errback(lambda e: log.warning("committing revoked partitions' offsets %s: %s",
                                                  _fmt_offsets(offsets), e))
        for job in cancelled:
            if job.finished.is_set():
                log.info("job %s: stream %s handed over (%s)", job.where, job.stream_id, job.status)

    async def _on_revoked_async(self, revoked) -> None:
        begun = self._begin_revoke(revoked)
        if begun is None:
            return
        _, _, cancelled = begun
        deadline = time.monotonic() + self.revoke_timeout_s
        sleep = self._sleep
        if sleep is None:
            deadline = min(deadline, time.monotonic() + self._sync_wait_s)
        while any(not j.finished.is_set() for j in cancelled) and time.monotonic() < deadline:
            if sleep is not None:
                await sleep(0.05)
            else:
                time.sleep(0.05)
        self._end_revoke(*begun)

    def _on_revoked_sync(self, revoked) -> None:
        begun = self._begin_revoke(revoked)
        if begun is None:
            return
        deadline = time.monotonic() + min(self.revoke_timeout_s, self._sync_wait_s)
        for job in begun[2]:
            job.finished.wait(max(0.0, deadline - time.monotonic()))
        self._end_revoke(*begun)


def _assignors(names):
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

    table = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor,
             "sticky": StickyPartitionAssignor, "cooperative-sticky": CooperativeStickyAssignor}
    out = []
    for n in names:
        if not isinstance(n, str):
            out.append(n)
            continue
        if n not in table:
            raise UserError(f"kafka.consumer.partition_assignment_strategy: unknown assignor {n!r} "
                            f"(one of {', '.join(_ASSIGNORS)})")
        out.append(table[n])
    return out


def _fmt_tps(tps) -> str:
    return "[" + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps, key=lambda t: (t.topic, t.partition))) + "]"


def _fmt_offsets(offsets: dict) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]={o}" for tp, o in sorted(offsets.items(), key=lambda x: x[0].partition))


class RepeatFilter(logging.Filter):
    """Lets one record of each kind (logger, level, message template) from kafka-python
    through per `every_s` seconds. kafka-python logs every failed connection attempt
    at ERROR, so a broker outage would bury the worker's own log lines under hundreds
    of lines a second; our producer reports the outage itself (every 10 s)."""

    def __init__(self, every_s: float = 30.0, prefix: str = "kafka"):
        super().__init__()
        self.every_s = every_s
        self.prefix = prefix
        self._last: dict = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self.suppressed += 1
            return False
        self._last[key] = now
        return True
