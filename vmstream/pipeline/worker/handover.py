"""Rebalances and hand-over: what a worker does when the group moves its partitions.

Revoked (cooperative rebalance): cancel the jobs taken from those partitions (the
runner saves their snapshots), wait for that up to `revoke_timeout_s` while the
consumer keeps heartbeating, commit what is done, give the partitions up. A job whose
cancellation outlasts the wait is fenced: its later snapshot writes are dropped
(`GuardedStore`), so they cannot overwrite the new owner's. Lost (the group evicted
this worker): fence at once, commit nothing.

A Handover is given what it acts on: the worker's job table, the runner (it cancels
streams), the consumer (it commits the offsets of partitions leaving) and the dead
letters (it forgets those of partitions leaving). The worker's rebalance listener
(`make_listener`) calls it, on kafka-python's event loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Optional, Protocol

from vmstream.pipeline.versions import stream_of_key
from vmstream.pipeline.worker.dead_letters import DeadLetters
from vmstream.pipeline.worker.jobs import Job, JobTable, WorkerStats

log = logging.getLogger(__name__)


class GuardedStore:
    """The worker's view of the state store for its runner: snapshot writes for
    streams this worker no longer owns are dropped; load failures are noted so the
    job is retried rather than dead-lettered."""

    def __init__(self, store: Any, table: JobTable):
        self.store = store
        self.table = table

    def load(self, stream_id: str):
        try:
            return self.store.load(stream_id)
        except Exception as e:
            self.table.note_store_failure(stream_of_key(stream_id), e)
            raise

    def save(self, snap: dict) -> None:
        if self.table.fenced_stream(snap["stream_id"]):
            log.info("stream %s: not saving its snapshot, its job has moved to another worker", snap["stream_id"])
            return
        self.store.save(snap)

    def delete(self, stream_id: str) -> None:
        if self.table.fenced_stream(stream_id):
            return
        self.store.delete(stream_id)


class StreamCanceller(Protocol):
    """The runner, as the hand-over uses it (`vmstream.pipeline.runner.Runner`)."""

    def cancel(self, stream_id: str) -> Any:
        """Stop the stream; it ends "stopped" (its job's `finished` is set then)."""


class OffsetCommitter(Protocol):
    """The consumer, as the hand-over uses it (`JobConsumer`)."""

    def commit_async(self, offsets: dict) -> None:
        """Commit {TopicPartition: offset} without blocking kafka-python's event loop."""


class Handover:
    """The revoke / lost / assigned handling of one worker (see the module doc), what
    its rebalance listener (`make_listener`) calls.

    It cancels jobs through `runner`, commits the offsets of partitions leaving
    through `consumer`, and forgets the unacknowledged `dead_letters` of those
    partitions; `stats.revoked` counts the jobs given up. `sleep` is an awaitable sleep
    on kafka-python's event loop (`JobConsumer.loop_sleep`; None: wait by blocking) and
    `sync_wait_s` how long a listener that blocks may wait (`options.sync_wait_s`)."""

    def __init__(
        self,
        table: JobTable,
        *,
        runner: StreamCanceller,
        consumer: OffsetCommitter,
        dead_letters: DeadLetters,
        stats: WorkerStats,
        worker_id: str,
        revoke_timeout_s: float,
        sleep: Optional[Callable[[float], Awaitable[Any]]] = None,
        sync_wait_s: float = 15.0,
    ):
        self.table = table
        self.runner = runner
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.stats = stats
        self.worker_id = worker_id
        self.revoke_timeout_s = revoke_timeout_s
        self.sleep = sleep
        self.sync_wait_s = sync_wait_s

    def on_assigned(self, assigned) -> None:
        log.info("worker %s: assigned partitions %s", self.worker_id, fmt_tps(assigned))

    def on_lost(self, lost) -> None:
        """Evicted from the group: others own these partitions now. Cancel their jobs,
        drop their snapshot writes, commit nothing."""
        log.warning(
            "worker %s: lost partitions %s (evicted from the group); cancelling their jobs",
            self.worker_id,
            fmt_tps(lost),
        )
        self._revoke_jobs(lost, fence=True)
        self.table.drop_ledgers(lost)

    async def on_revoked_async(self, revoked) -> None:
        begun = self._begin_revoke(revoked)
        if begun is None:
            return
        _, _, cancelled = begun
        deadline = time.monotonic() + self.revoke_timeout_s
        sleep = self.sleep
        if sleep is None:
            deadline = min(deadline, time.monotonic() + self.sync_wait_s)
        while any(not j.finished.is_set() for j in cancelled) and time.monotonic() < deadline:
            if sleep is not None:
                await sleep(0.05)
            else:
                time.sleep(0.05)
        self._end_revoke(*begun)

    def on_revoked_sync(self, revoked) -> None:
        begun = self._begin_revoke(revoked)
        if begun is None:
            return
        deadline = time.monotonic() + min(self.revoke_timeout_s, self.sync_wait_s)
        for job in begun[2]:
            job.finished.wait(max(0.0, deadline - time.monotonic()))
        self._end_revoke(*begun)

    # ----------------------------------------------------------------- internals

    def _revoke_jobs(self, tps, fence: bool) -> list[Job]:
        """Mark the jobs of `tps` revoked and cancel the running ones (their snapshot
        writes dropped from now on when `fence`). Returns the cancelled ones."""
        tps = set(tps)
        cancelled = []
        with self.table.lock:
            for job in self.table.pop_jobs(tps):
                job.revoked = True
                self.stats.revoked += 1
                if job.state == "running" and not job.finished.is_set():
                    if fence:
                        self.table.fence(job)
                    cancelled.append(job)
            # Dead-lettered but unacknowledged: the next owner tries them again.
            self.dead_letters.forget(tps)
        for job in cancelled:
            self.runner.cancel(job.stream_id)
        return cancelled

    def _begin_revoke(self, revoked):
        revoked = set(revoked)
        if not revoked:
            return None
        held = self.table.held(revoked)
        log.info(
            "worker %s: partitions %s revoked; cancelling %d job(s) taken from them",
            self.worker_id,
            fmt_tps(revoked),
            sum(1 for j in held if j.state == "running"),
        )
        # Not fenced while we wait: their last snapshots are what the next owner resumes from.
        cancelled = self._revoke_jobs(revoked, fence=False)
        return revoked, held, cancelled

    def _end_revoke(self, revoked, held, cancelled) -> None:
        with self.table.lock:
            for job in cancelled:
                if not job.finished.is_set():
                    self.table.fence(job)
                    log.warning(
                        "job %s: stream %s still stopping after %.0fs; the next owner resumes it from an "
                        "earlier snapshot",
                        job.where,
                        job.stream_id,
                        self.revoke_timeout_s,
                    )
        offsets = self.table.release(revoked, held)
        if offsets:
            self.consumer.commit_async(offsets)
        for job in cancelled:
            if job.finished.is_set():
                log.info("job %s: stream %s handed over (%s)", job.where, job.stream_id, job.status)


def make_listener(handover: Handover):
    """A kafka-python rebalance listener calling `handover` (the async kind where this
    kafka-python has one)."""
    import kafka

    base = getattr(kafka, "AsyncConsumerRebalanceListener", None)
    if base is not None:

        class AsyncListener(base):
            async def on_partitions_revoked(self, revoked):
                await handover.on_revoked_async(revoked)

            async def on_partitions_assigned(self, assigned):
                handover.on_assigned(assigned)

            async def on_partitions_lost(self, lost):
                handover.on_lost(lost)

        return AsyncListener()

    class SyncListener(kafka.ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            handover.on_revoked_sync(revoked)

        def on_partitions_assigned(self, assigned):
            handover.on_assigned(assigned)

        def on_partitions_lost(self, lost):
            handover.on_lost(lost)

    return SyncListener()


def fmt_tps(tps) -> str:
    return (
        "[" + ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps, key=lambda t: (t.topic, t.partition))) + "]"
    )
