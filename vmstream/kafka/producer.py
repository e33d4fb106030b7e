"""The never-drop producer under vmstream's Kafka sink and state store.

    producer = ReliableProducer("127.0.0.1:9092")
    producer.send("vmstream.segments", value, key=b"cam-7", headers=[...])  # blocks only when the buffer is full
    producer.flush()                # returns once every record so far is acked
    producer.close()

Delivery:
- kafka-python's idempotent producer with acks=all: the producer retries transient
  errors itself, without duplicates or reordering, until `delivery_timeout_ms`.
- A record the producer gives up on (the broker was down longer than that, or the
  producer bumped its epoch and failed what was in flight) is not dropped: it stays in
  the buffer and is sent again after a backoff. While such re-sends are queued, new
  records queue behind them, so a stream's records keep their order. A re-send can
  duplicate a record the broker had stored but not acknowledged; readers de-duplicate
  by uid (`vmstream.kafka.codec.dedupe_by_uid`).
- The buffer of unacknowledged records is bounded (`max_buffer_bytes`): when it is
  full, `send` blocks, which slows the caller instead of filling memory.
- If nothing is acknowledged for `give_up_s`, `send` / `flush` / `close` raise
  `KafkaDeliveryError`; the records it could not deliver stay available from
  `undelivered()`. `give_up_s=None` waits for the broker forever.
- Errors that no retry can fix (authorization, an unknown topic, a record the broker
  refuses as malformed) raise `KafkaDeliveryError` at once, naming them.
- A record larger than the broker accepts goes to `on_too_large` (the sink turns it
  into a Parquet reference), else it is such an error.

Security settings (SSL, SASL) pass through `client_config`, in kafka-python's names
(`security_protocol`, `ssl_cafile`, `sasl_mechanism`, `sasl_plain_username`, ...;
dotted spellings like `security.protocol` are accepted too).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from vmstream.kafka.client import UNREACHABLE, client_options, connect_error

log = logging.getLogger(__name__)


class KafkaDeliveryError(RuntimeError):
    """Records could not be delivered. Nothing was dropped: `undelivered` holds them
    as (topic, key, value, headers) tuples, in the order they were written."""

    def __init__(self, message: str, undelivered: Sequence[tuple] = ()):
        super().__init__(message)
        self.undelivered = list(undelivered)


@dataclass
class DeliveryStats:
    written: int = 0  # records handed to the producer by the caller
    acked: int = 0
    resent: int = 0  # re-submissions after the producer reported a failure
    spilled: int = 0  # records sent as a Parquet reference
    failed: int = 0  # records that hit a non-retriable error
    blocked_s: float = 0.0  # time callers spent blocked on a full buffer
    last_error: str = ""
    ack_latency_s: list = field(default_factory=list, repr=False)  # only if track_latency


@dataclass(slots=True)
class _Out:
    topic: str
    key: Optional[bytes]
    value: Optional[bytes]
    headers: list
    nbytes: int
    t_write: float
    attempts: int = 0
    too_large: int = 0  # times the broker refused it (or its batch) for size


def _classify(exc: BaseException) -> str:
    """'resend', 'too_large' or 'fatal'."""
    from kafka import errors as E

    if isinstance(exc, E.MessageSizeTooLargeError):
        return "too_large"
    resend = (
        E.KafkaTimeoutError,
        E.KafkaConnectionError,
        E.BrokerNotAvailableError,
        # The idempotent producer answers these by bumping its epoch, failing what was
        # in flight; sending again is the documented remedy.
        E.OutOfOrderSequenceNumberError,
        E.UnknownProducerIdError,
        E.InvalidProducerEpochError,
    )
    if isinstance(exc, resend) or getattr(exc, "retriable", False):
        return "resend"
    return "fatal"


class ReliableProducer:
    """An idempotent acks=all producer that never drops a record (see module doc).

    Thread-safe. `send` returns at once unless the buffer is full. `on_too_large`,
    if given, turns a record the broker refuses for size into a smaller one
    (returns (value, headers)); without it such a record is a fatal error.
    """

    def __init__(
        self,
        bootstrap_servers: Union[str, Sequence[str]],
        *,
        client_config: Optional[Mapping[str, Any]] = None,
        max_buffer_bytes: int = 32 << 20,
        give_up_s: Optional[float] = 900.0,
        delivery_timeout_ms: int = 120_000,
        request_timeout_ms: Optional[int] = None,
        linger_ms: int = 5,
        batch_size: int = 256 << 10,
        max_request_size: int = 1 << 20,
        compression_type: Optional[str] = None,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 10.0,
        connect_timeout_s: float = 30.0,
        producer_options: Optional[Mapping[str, Any]] = None,
        on_too_large: Optional[Callable[[str, Optional[bytes], bytes, list], tuple[bytes, list]]] = None,
        track_latency: bool = False,
    ):
        from kafka import KafkaProducer

        self.bootstrap_servers = bootstrap_servers
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.give_up_s = give_up_s
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._on_too_large = on_too_large
        self._track_latency = track_latency
        if request_timeout_ms is None:
            request_timeout_ms = min(30_000, max(1000, (delivery_timeout_ms - linger_ms) // 2))
        opts: dict[str, Any] = dict(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            max_in_flight_requests_per_connection=5,
            delivery_timeout_ms=delivery_timeout_ms,
            request_timeout_ms=request_timeout_ms,
            linger_ms=linger_ms,
            # kafka-python's 16 KiB default holds two or three results, so it would send
            # a request per few results. Kept under the broker's 1 MB batch limit.
            batch_size=min(batch_size, max_request_size),
            max_request_size=max_request_size,
            compression_type=compression_type,
            # Blocking inside send() for metadata would stall the caller without our
            # give-up accounting; fail fast and let the re-send queue wait instead.
            max_block_ms=5_000,
            # Reconnect promptly once a restarted broker is back (default backs off to 30 s).
            reconnect_backoff_max_ms=1_000,
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            allow_auto_create_topics=False,
        )
        opts.update(client_options(client_config, "producer"))
        opts.update(producer_options or {})
        self._opts = opts
        try:
            self._producer = KafkaProducer(**opts)
        except UNREACHABLE as e:
            raise ConnectionError(connect_error(bootstrap_servers, connect_timeout_s, client_config, e)) from e
        self.producers_created = 1
        self._gen = 0  # which producer a callback comes from (see _replace_producer)
        self._no_id_since: Optional[float] = None

        self.stats = DeliveryStats()
        self._cond = threading.Condition()
        self._pending: dict[int, _Out] = {}  # seq -> record, insertion (= seq) order
        self._pending_bytes = 0
        self._queue: set[int] = set()  # seqs waiting to be (re)sent; sent in seq order
        self._queue_due = 0.0
        self._failures_in_row = 0
        self._resending = False
        self._next_seq = 0
        self._stalled_since = time.monotonic()
        self._error: Optional[KafkaDeliveryError] = None
        self._closing = False
        self._closed = False
        self._last_warn = 0.0
        self._thread = threading.Thread(target=self._resend_loop, name="vmstream-kafka-resend", daemon=True)
        self._thread.start()

    # -- public

    def send(
        self,
        topic: str,
        value: Optional[bytes],
        key: Optional[bytes] = None,
        headers: Optional[list] = None,
        timeout_s: Optional[float] = None,
    ) -> int:
        """Queue one record (value None: a tombstone, for compacted topics); returns its
        sequence number. Blocks while the buffer is full (at most `timeout_s`, then
        TimeoutError; None: until give-up)."""
        headers = headers or []
        nbytes = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        t0 = time.monotonic()
        with self._cond:
            self._raise_if_failed()
            if self._closing:
                raise RuntimeError("ReliableProducer is closed")
            # A record larger than the whole buffer still goes through alone.
            while self._pending and self._pending_bytes + nbytes > self.max_buffer_bytes:
                self._check_give_up()
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(
                        f"Kafka buffer full ({self._pending_bytes} bytes, {len(self._pending)} records "
                        f"unacknowledged by {self.bootstrap_servers}) for {timeout_s:.0f}s"
                    )
                self._cond.wait(0.25)
                self._raise_if_failed()
            waited = time.monotonic() - t0
            if waited > 0.001:
                self.stats.blocked_s += waited
            seq = self._next_seq
            self._next_seq += 1
            if not self._pending:
                self._stalled_since = time.monotonic()
            self._pending[seq] = _Out(topic, key, value, headers, nbytes, time.monotonic())
            self._pending_bytes += nbytes
            self.stats.written += 1
            direct = not self._queue and not self._resending
            if not direct:
                self._queue.add(seq)
                self._cond.notify_all()
        if direct:
            self._submit(seq)
        return seq

    def flush(self, timeout_s: Optional[float] = None) -> None:
        """Return once every record sent before this call is acknowledged. Raises
        KafkaDeliveryError on give-up or a fatal error, TimeoutError after
        `timeout_s` (records kept either way)."""
        t0 = time.monotonic()
        with self._cond:
            mark = self._next_seq
        from kafka import errors as E

        while True:
            with self._cond:
                self._raise_if_failed()
                if not self._pending or next(iter(self._pending)) >= mark:
                    return
                self._check_give_up()
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    n = sum(1 for s in self._pending if s < mark)
                    raise TimeoutError(
                        f"{n} Kafka records not acknowledged by {self.bootstrap_servers} after {timeout_s:.0f}s"
                    )
                idle = bool(self._queue) or self._resending
                if idle:
                    self._cond.wait(0.2)
                    continue
            # Makes lingering batches sendable now and waits a little for them.
            try:
                self._producer.flush(timeout=0.5)
            except E.KafkaTimeoutError:
                pass
            except Exception as e:  # the producer was just replaced and closed under us
                log.debug("flush of the kafka producer: %r", e)
            with self._cond:
                if self._pending and next(iter(self._pending)) < mark:
                    self._cond.wait(0.05)

    def close(self, timeout_s: Optional[float] = None) -> None:
        """Flush, then close. Raises like flush, after releasing the connection."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(5)
            _close_producer(self._producer, graceful=not self._pending)
            self._closed = True

    def undelivered(self) -> list[tuple[str, Optional[bytes], bytes, list]]:
        """Records not yet acknowledged, in write order."""
        with self._cond:
            return [(o.topic, o.key, o.value, o.headers) for o in self._pending.values()]

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def producer(self):
        """The kafka-python producer (for its config and metrics; send through `send`)."""
        return self._producer

    # -- internals

    def _submit(self, seq: int) -> None:
        with self._cond:
            out = self._pending.get(seq)
            producer, gen = self._producer, self._gen
        if out is None:
            return
        try:
            fut = producer.send(out.topic, value=out.value, key=out.key, headers=out.headers)
        except Exception as e:  # metadata timeout, closed producer, size check...
            self._on_error(seq, gen, e)
            return
        fut.add_callback(self._on_ack, seq)
        fut.add_errback(self._on_error, seq, gen)

    def _on_ack(self, seq: int, _metadata: Any) -> None:
        with self._cond:
            out = self._pending.pop(seq, None)
            if out is None:
                return
            self._pending_bytes -= out.nbytes
            self.stats.acked += 1
            if self._track_latency:
                self.stats.ack_latency_s.append(time.monotonic() - out.t_write)
            self._failures_in_row = 0
            self._stalled_since = time.monotonic()
            self._cond.notify_all()

    def _on_error(self, seq: int, gen: int, exc: BaseException) -> None:
        # Runs in kafka-python's I/O thread, which swallows errback exceptions: an
        # error here must not leave a record stranded, so the fallback is to re-send.
        try:
            kind = _classify(exc)
        except Exception:  # pragma: no cover - defensive
            log.exception("classifying %r", exc)
            kind = "resend"
        with self._cond:
            out = self._pending.get(seq)
            if out is None:
                return
            if gen != self._gen:
                kind = "resend"  # failed by our replacing its producer
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            if kind == "too_large" and self._on_too_large is not None and out.too_large < 3:
                out.too_large += 1
                kind = "resend"
            if kind == "resend":
                out.attempts += 1
                self.stats.resent += 1
                self._queue.add(seq)
                # Backoff grows with re-send rounds that brought no ack (counted in the
                # re-send loop), not with the number of records failing at once.
                backoff = min(self._max_retry_backoff_s, self._retry_backoff_s * 2 ** min(self._failures_in_row, 10))
                self._queue_due = max(self._queue_due, time.monotonic() + backoff)
                now = time.monotonic()
                if now - self._last_warn > 10:
                    self._last_warn = now
                    log.warning(
                        "Kafka delivery to %s failed (%s); %d records kept, re-sending in %.1fs",
                        self.bootstrap_servers,
                        self.stats.last_error,
                        len(self._pending),
                        backoff,
                    )
            else:
                self.stats.failed += 1
                if self._error is None:
                    self._error = KafkaDeliveryError(
                        f"Kafka rejected a record for topic {out.topic!r} at {self.bootstrap_servers}: "
                        f"{type(exc).__name__}: {exc}",
                        [(o.topic, o.key, o.value, o.headers) for o in self._pending.values()],
                    )
                    log.error("%s", self._error)
            self._cond.notify_all()

    def _producer_broken(self) -> bool:
        """Whether the kafka-python producer can no longer send (works around two
        behaviours of kafka-python 3.0.x's idempotent producer):

        - any non-retriable batch error (even "record too large", which concerns one
          record) moves it into a permanent error state: every later send fails;
        - when a batch that had been sent expires (the broker was down longer than
          delivery_timeout_ms), it drops its producer id but stays "ready", so it
          never asks for a new id and never sends again, silently.

        Either way the remedy is a fresh producer. The second state is only trusted
        after it has lasted a second, in case a newer kafka-python re-initialises.
        """
        tm = getattr(self._producer, "_transaction_manager", None)
        if tm is None:
            return False
        try:
            if tm.has_error():
                return True
            from kafka.producer.transaction_manager import TransactionState

            no_id = getattr(tm, "_current_state", None) == TransactionState.READY and not tm.has_producer_id()
        except Exception:  # internals changed: rely on the re-send path alone
            return False
        now = time.monotonic()
        if not no_id:
            self._no_id_since = None
            return False
        if self._no_id_since is None:
            self._no_id_since = now
        return now - self._no_id_since > 1.0

    def _replace_producer(self) -> None:
        """Swap in a fresh kafka-python producer (new producer id). Records the old one
        still held fail back into our queue through their errbacks and are re-sent."""
        from kafka import KafkaProducer

        log.warning(
            "Kafka producer stuck or in an error state (%s); replacing it", self.stats.last_error or "no error reported"
        )
        fresh = KafkaProducer(**self._opts)
        with self._cond:
            old, self._producer = self._producer, fresh
            self._gen += 1
        self._no_id_since = None
        self.producers_created += 1
        _close_producer(old, graceful=False)

    def _resend_loop(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
                if self._error is None and self.give_up_s is not None and self._pending:
                    try:
                        self._check_give_up()
                    except KafkaDeliveryError:
                        pass  # recorded in self._error; callers raise it
                due = bool(self._queue) and self._error is None and time.monotonic() >= self._queue_due
                if not due:
                    self._cond.wait(0.2)
                busy = bool(self._pending) and self._error is None
            if busy and self._producer_broken():
                try:
                    self._replace_producer()
                except Exception as e:  # broker unreachable right now: try again later
                    log.warning("could not replace the Kafka producer: %s", e)
                    with self._cond:
                        self._cond.wait(self._max_retry_backoff_s)
                continue
            if not due:
                continue
            with self._cond:
                batch, self._queue = sorted(self._queue), set()
                self._resending = True
                self._failures_in_row += 1
            try:
                for seq in batch:
                    with self._cond:
                        out = self._pending.get(seq)
                    if out is None:
                        continue
                    if out.too_large and self._on_too_large is not None:
                        # Whether it (still) needs shrinking is the callback's call: a
                        # record may only have shared a batch with the one refused.
                        try:
                            value, headers = self._on_too_large(out.topic, out.key, out.value, out.headers)
                        except Exception as e:
                            self._on_error(seq, self._gen, RuntimeError(f"on_too_large failed: {e!r}"))
                            continue
                        with self._cond:
                            nbytes = len(value) + len(out.key or b"") + sum(len(k) + len(v) for k, v in headers)
                            self._pending_bytes += nbytes - out.nbytes
                            out.nbytes = nbytes
                            out.value, out.headers = value, headers
                    self._submit(seq)
            finally:
                with self._cond:
                    self._resending = False
                    self._cond.notify_all()

    def _check_give_up(self) -> None:
        # Called with the lock held.
        if self.give_up_s is None or not self._pending:
            return
        stalled = time.monotonic() - self._stalled_since
        if stalled > self.give_up_s:
            if self._error is None:
                self._error = KafkaDeliveryError(
                    f"{len(self._pending)} Kafka records not acknowledged by {self.bootstrap_servers} "
                    f"for {stalled:.0f}s (give_up_s={self.give_up_s}); last error: "
                    f"{self.stats.last_error or 'none reported'}. The records are kept (see undelivered()).",
                    [(o.topic, o.key, o.value, o.headers) for o in self._pending.values()],
                )
                log.error("%s", self._error)
            raise self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._error.undelivered = [(o.topic, o.key, o.value, o.headers) for o in self._pending.values()]
            raise self._error


def _close_producer(producer: Any, graceful: bool) -> None:
    """Close a kafka-python producer without hanging on records it cannot deliver.

    Its close() flushes first and raises, leaving the I/O thread running, when that
    flush times out; those records are still in our buffer (undelivered()), so the
    producer's copies are abandoned by force-closing its sender.
    """
    if graceful:
        try:
            producer.close(timeout=5)
            return
        except Exception as e:
            log.debug("kafka producer close: %s", e)
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)
    try:
        producer.close(timeout=0)
    except Exception as e:
        log.debug("kafka producer close after force: %s", e)


__all__ = ["ReliableProducer", "KafkaDeliveryError", "DeliveryStats"]
