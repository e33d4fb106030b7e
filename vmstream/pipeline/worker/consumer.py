"""The worker's consumer of the jobs topic: kafka-python's KafkaConsumer as the loop and
the hand-over use it, riding out the broker's trouble (an outage, a rebalance under
way) rather than stopping the worker over it.

kafka-python's consumer is not thread-safe: only the worker's main thread calls this,
and the rebalance listener, which kafka-python runs inside `poll` on that thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


def broker_trouble(e: BaseException, also: tuple = ()) -> bool:
    """Whether an error from a consumer call is the broker being away or busy (a socket
    error, or a Kafka error marked retriable, or one of `also`): wait and call again."""
    from kafka import errors as E

    if isinstance(e, E.KafkaError):
        return bool(getattr(e, "retriable", False)) or isinstance(e, also)
    return isinstance(e, ConnectionError)


class JobConsumer:
    """`consumer` (a kafka-python KafkaConsumer subscribed, or about to be, to the jobs
    topic) with the calls the worker makes of it. Offsets go in and out as
    {TopicPartition: int}.

    `stopping` cuts short the waits between failed polls (the worker's stop request);
    `retry_wait_s` is that wait; `commit_timeout_s` bounds a blocking commit."""

    def __init__(
        self,
        consumer: Any,
        *,
        worker_id: str,
        stopping: threading.Event,
        retry_wait_s: float = 1.0,
        commit_timeout_s: float = 10.0,
    ):
        self.consumer = consumer
        self.worker_id = worker_id
        self.stopping = stopping
        self.retry_wait_s = retry_wait_s
        self.commit_timeout_s = commit_timeout_s
        self._poll_failures = 0
        self._poll_warned_at = 0.0

    def subscribe(self, topic: str, listener: Any) -> None:
        self.consumer.subscribe([topic], listener=listener)

    # ----------------------------------------------------------------- taking

    def poll(self, timeout_s: float, max_records: int) -> dict:
        """{TopicPartition: [records]}, riding out a broker outage: kafka-python 3 can
        raise connection and timeout errors out of poll (from the coordinator lookup
        and offset validation it runs inside). Those are the broker's trouble, not the
        worker's: wait and return nothing, so the caller polls again (jobs keep running,
        results wait in the sinks), never stop."""
        from kafka import errors as E

        try:
            records = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except (E.KafkaError, ConnectionError) as e:
            if not broker_trouble(e):
                raise
            now = time.monotonic()
            if self._poll_failures == 0 or now - self._poll_warned_at > 30:
                log.warning(
                    "worker %s: polling the jobs topic: %s: %s (retrying while the broker is away)",
                    self.worker_id,
                    type(e).__name__,
                    e,
                )
                self._poll_warned_at = now
            self._poll_failures += 1
            self.stopping.wait(self.retry_wait_s)
            return {}
        if self._poll_failures:
            log.info("worker %s: polling again after %d failed poll(s)", self.worker_id, self._poll_failures)
            self._poll_failures = 0
        return records

    def heartbeat(self, timeout_s: float) -> None:
        """Keep the group membership alive without taking jobs: pause every partition
        and poll. The poll needs a real timeout: kafka-python drives group joins from
        inside it, and one of 0 ms never gets a rebalance going, which would hold the
        whole group up. What a partition assigned meanwhile delivers is put back."""
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        for tp, msgs in self.poll(timeout_s, 1).items():
            if msgs:
                self.put_back(tp, msgs[0].offset)

    def resume(self) -> None:
        """Fetch from every partition again (after `heartbeat` or `put_back`)."""
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    def put_back(self, tp: Any, offset: int) -> None:
        """Give a record polled but not taken back to the fetcher, for later: the
        partition is paused and its position moved back to `offset`."""
        self.consumer.seek(tp, offset)
        self.consumer.pause(tp)

    # ----------------------------------------------------------------- commits

    def commit(self, offsets: dict, *, final: bool = False) -> bool:
        """Commit `offsets` (blocking, up to `commit_timeout_s`); False, logged, when
        the broker is away or the group is churning: the offsets stay pending and the
        next commit tries again. Any other error is raised."""
        from kafka import errors as E
        from kafka.structs import OffsetAndMetadata

        try:
            self.consumer.commit(
                {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                timeout_ms=int(self.commit_timeout_s * 1000),
            )
        except (E.KafkaError, ConnectionError) as e:
            churn = (E.CommitFailedError, E.RebalanceInProgressError, E.IllegalGenerationError, E.UnknownMemberIdError)
            if not broker_trouble(e, also=churn):
                raise
            (log.error if final else log.warning)(
                "committing offsets %s: %s%s", fmt_offsets(offsets), e, "" if final else " (will retry)"
            )
            return False
        return True

    def commit_async(self, offsets: dict) -> None:
        """Commit `offsets` without blocking, a failure only logged: what a rebalance
        listener commits, on kafka-python's event loop, which a blocking commit would
        deadlock. It goes out before the group re-joins."""
        from kafka.structs import OffsetAndMetadata

        fut = self.consumer.commit_async({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        fut.add_errback(lambda e: log.warning("committing revoked partitions' offsets %s: %s", fmt_offsets(offsets), e))

    def loop_sleep(self):
        """An awaitable sleep on kafka-python's event loop (where rebalance listeners
        run), so a listener can wait while the loop keeps heartbeating. None when this
        kafka-python has no such loop; then listeners wait by blocking, briefly."""
        net = getattr(getattr(self.consumer, "_coordinator", None), "_net", None)
        sleep = getattr(net, "sleep", None)
        return sleep if callable(sleep) else None

    def close(self) -> None:
        """Leave the group (the others take the partitions over at once); commits are
        the worker's, never automatic."""
        self.consumer.close(autocommit=False)


def fmt_offsets(offsets: dict) -> str:
    return ", ".join(
        f"{tp.topic}[{tp.partition}]={o}" for tp, o in sorted(offsets.items(), key=lambda x: x[0].partition)
    )
