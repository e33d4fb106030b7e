"""The Kafka results sink: vmstream's records to Kafka, over `vmstream.kafka`.

    sink = KafkaSink("127.0.0.1:9092", spill_dir="out/kafka-spill")
    sink.write(segment_result)      # blocks only when the buffer is full (backpressure)
    sink.flush()                    # returns once every record so far is acked
    sink.close()

Records go to one topic per kind (`vmstream.kafka.codec.DEFAULT_TOPICS`), keyed by
stream id, as JSON with schema-version and kind headers (the format, and how a
record too large for the broker goes to a Parquet side file in `spill_dir`, is
described in `vmstream.kafka.codec`; reading back is `vmstream.kafka.readers`).
Delivery is `vmstream.kafka.producer.ReliableProducer`'s: never dropped, bounded
buffer, `KafkaDeliveryError` after `give_up_s` without an acknowledgement.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from vmstream.kafka.client import DEFAULT_MESSAGE_LIMIT, admin_client, create_hint, topic_message_limit
from vmstream.kafka.codec import DEFAULT_TOPICS, H_KIND, EncodedRecord, encode_record, spill_to_parquet
from vmstream.kafka.producer import DeliveryStats, KafkaDeliveryError, ReliableProducer
from vmstream.stages.sinks.base import Sink, SinkRecord

log = logging.getLogger(__name__)

# Batch and record framing a message carries on top of key, value and headers
# (record batch header 61 bytes, per-record varints); generous, so a record that passes
# this check is never refused by the broker for size.
_FRAMING_BYTES = 512


class KafkaSink(Sink):
    """Segment results, events and summaries to Kafka (see module doc).

    `topics` maps record kind ("segment", "event", "summary") to a topic name; kinds
    left out use `DEFAULT_TOPICS`. The topics must exist (the admin step,
    `vmstream.kafka.topics.ensure_topics`, creates them); the sink checks at
    start and reads each topic's message size limit. `inline_limit_bytes` lowers the
    size above which a record goes to Parquet.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: Union[str, Sequence[str]],
        *,
        topics: Optional[Mapping[str, str]] = None,
        spill_dir: Union[str, Path] = "vmstream-kafka-spill",
        client_config: Optional[Mapping[str, Any]] = None,
        inline_limit_bytes: Optional[int] = None,
        check_topics: bool = True,
        **producer_kwargs: Any,
    ):
        unknown = set(topics or {}) - set(DEFAULT_TOPICS)
        if unknown:
            raise ValueError(
                f"KafkaSink topics: unknown record kinds {sorted(unknown)} (expected {sorted(DEFAULT_TOPICS)})"
            )
        self.topics = {**DEFAULT_TOPICS, **(topics or {})}
        self.spill_dir = Path(spill_dir)
        self.bootstrap_servers = bootstrap_servers
        self._client_config = dict(client_config or {})
        limits = {t: DEFAULT_MESSAGE_LIMIT for t in set(self.topics.values())}
        if check_topics:
            limits = self._check_topics(connect_timeout_s=producer_kwargs.get("connect_timeout_s", 30.0))
        self.message_limits = limits
        # The producer refuses a request over max_request_size itself; let it carry the
        # largest record the broker takes, so the broker's limit is the one that counts.
        producer_kwargs.setdefault("max_request_size", max(1 << 20, max(limits.values()) + _FRAMING_BYTES))
        self.inline_limit = {t: min(lim - _FRAMING_BYTES, inline_limit_bytes or lim) for t, lim in limits.items()}
        self._limits_checked = float("-inf")  # re-read on the first refusal
        self._producer = ReliableProducer(
            bootstrap_servers, client_config=self._client_config, on_too_large=self._fit_or_spill, **producer_kwargs
        )
        self._closed = False

    def _admin(self, connect_timeout_s: float = 30.0):
        # Requests keep kafka-python's 30 s default whatever the connect timeout.
        return admin_client(self.bootstrap_servers, self._client_config, connect_timeout_s, request_timeout_s=30.0)

    def _check_topics(self, connect_timeout_s: float) -> dict[str, int]:
        from kafka import errors as E

        admin = self._admin(connect_timeout_s)
        try:
            existing = set(admin.list_topics())
            missing = sorted(set(self.topics.values()) - existing)
            if missing:
                raise ValueError(
                    f"Kafka topics {missing} do not exist on {self.bootstrap_servers} (auto-creation is off); "
                    + create_hint(self.bootstrap_servers)
                )
            limits = {}
            for t in set(self.topics.values()):
                try:
                    limits[t] = topic_message_limit(admin, t)
                except E.KafkaError as e:  # e.g. no DescribeConfigs permission
                    log.info("cannot read max.message.bytes of %s (%s); assuming %d", t, e, DEFAULT_MESSAGE_LIMIT)
                    limits[t] = DEFAULT_MESSAGE_LIMIT
            return limits
        finally:
            admin.close()

    # -- Sink

    def write(self, record: SinkRecord) -> None:
        if self._closed:
            raise RuntimeError("KafkaSink is closed")
        enc = encode_record(record)
        topic = self.topics[enc.kind]
        if enc.size > self.inline_limit[topic]:
            enc = spill_to_parquet(enc, self.spill_dir)
            self._producer.stats.spilled += 1
        self._producer.send(topic, enc.value, enc.key, enc.headers)

    def flush(self, timeout_s: Optional[float] = None) -> None:
        self._producer.flush(timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._producer.close()
        finally:
            self._closed = True

    # -- extras

    @property
    def stats(self) -> DeliveryStats:
        return self._producer.stats

    @property
    def producer(self) -> ReliableProducer:
        return self._producer

    def undelivered(self) -> list[tuple[str, Optional[bytes], bytes, list]]:
        return self._producer.undelivered()

    def _fit_or_spill(self, topic: str, key: Optional[bytes], value: bytes, headers: list) -> tuple[bytes, list]:
        """The broker refused a record, or a batch it was in, for size: its limit is now
        lower than the one read at start. Re-read the limit (at most every few seconds)
        and send the record as it is if it fits, else as a Parquet reference."""
        import orjson

        if time.monotonic() - self._limits_checked > 2.0:
            from kafka import errors as E

            try:
                admin = self._admin(10.0)
                try:
                    self.message_limits[topic] = topic_message_limit(admin, topic)
                finally:
                    admin.close()
                self.inline_limit[topic] = min(self.inline_limit[topic], self.message_limits[topic] - _FRAMING_BYTES)
                self._limits_checked = time.monotonic()
            except (E.KafkaError, ConnectionError) as e:
                log.info("cannot re-read max.message.bytes of %s: %s", topic, e)
        size = len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers)
        hmap = dict(headers)
        if size <= self.inline_limit[topic] or hmap.get("vmstream.payload") == b"parquet-ref":
            return value, headers
        kind = hmap[H_KIND].decode()
        enc = EncodedRecord(kind, key or b"", value, headers, orjson.loads(value))
        ref = spill_to_parquet(enc, self.spill_dir)
        self._producer.stats.spilled += 1
        log.warning(
            "Kafka refused a %d-byte record on %s as too large (limit now %d); sent a Parquet reference instead",
            len(value),
            topic,
            self.message_limits[topic],
        )
        return ref.value, ref.headers


__all__ = ["KafkaSink", "KafkaDeliveryError", "DeliveryStats"]
