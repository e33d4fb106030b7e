"""Stream snapshots on a compacted Kafka topic: the state store of the Kafka worker.

    store = KafkaStateStore("127.0.0.1:9092", "vmstream.state")
    store.save(snap)          # returns once the broker has acknowledged it (acks=all)
    store.load("cam-7")       # the latest snapshot of that stream by ANY worker, or None
    store.delete("cam-7")     # a tombstone: compaction forgets the stream
    store.close()

It has the load / save / delete methods of the runner's state stores: the worker
hands it to the runner, which saves a snapshot of every stream each
`runner.snapshot_every` segments (after flushing the sinks), loads one when a stream
starts and deletes it when the stream finishes. The byte format is
`vmstream.snapshot_codec`'s; the message key is the stream id (UTF-8), so all of a
stream's snapshots land in one partition and compaction keeps only the newest.

How `load` finds the newest snapshot, and what it costs
-------------------------------------------------------
Kafka cannot look a key up; a reader has to read the partition the key hashes to.
The store keeps, per partition, how far it has read and an index key -> offset of
each key's newest message (offsets only, a few dozen bytes per stream; tombstones
remove keys). `load` reads the key's partition from where it stopped last time up to
the partition's end offset as of the call, then fetches the one message the index
points at. So:

- the first load touching a partition reads all of it: after compaction, about one
  snapshot per live stream hashed there, plus the not-yet-compacted head (the state
  topic rolls segments hourly; `vmstream.kafka.topics.vmstream_topics`);
- every later load reads only what was written to that partition since, plus the
  snapshot itself (one fetch);
- time is bounded by `timeout_s` (TimeoutError naming the topic); loads are
  serialized by a lock (they happen once per job start).

Snapshots written after the call starts may or may not be seen: the worker's
rebalance handling makes sure a stream's previous owner has saved its last snapshot
before the new owner is assigned the job.

The producer is `ReliableProducer` (idempotent, acks=all, never drops): `save` and
`delete` block until acknowledged, and raise `KafkaDeliveryError` only after the
broker has been unreachable for `give_up_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping, Optional, Sequence, Union

from vmstream.kafka.client import (
    UNREACHABLE,
    admin_client,
    client_options,
    connect_error,
    create_hint,
    topic_message_limit,
)
from vmstream.kafka.producer import ReliableProducer
from vmstream.snapshot_codec import decode_snapshot, encode_snapshot

log = logging.getLogger(__name__)

# Room for framing on top of the topic's message limit when sizing requests.
_FRAMING_BYTES = 1024
_DEFAULT_LIMIT = 16 << 20  # topics.STATE_MAX_MESSAGE_BYTES


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition kafka-python's (and the Java client's) default partitioner picks
    for `key`: murmur2 of the key bytes, made positive, modulo the partition count."""
    from kafka.partitioner.default import murmur2

    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class KafkaStateStore:
    """Snapshots on a compacted topic (see the module doc). Thread-safe."""

    def __init__(
        self,
        bootstrap_servers: Union[str, Sequence[str]],
        topic: str = "vmstream.state",
        *,
        client_config: Optional[Mapping[str, Any]] = None,
        timeout_s: float = 120.0,
        give_up_s: Optional[float] = 900.0,
        max_message_bytes: Optional[int] = None,
    ):
        from kafka import KafkaConsumer
        from kafka.partitioner.default import DefaultPartitioner

        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = float(timeout_s)
        self._client_config = dict(client_config or {})
        limit = max_message_bytes or self._read_limit()
        self.max_message_bytes = int(limit)
        self._producer = ReliableProducer(
            bootstrap_servers,
            client_config=self._client_config,
            give_up_s=give_up_s,
            max_request_size=self.max_message_bytes + _FRAMING_BYTES,
            # A snapshot is written once every N segments and waited for: nothing to batch.
            linger_ms=0,
            # `load` reads the partition the default partitioner picks; a partitioner
            # from client_config must not move snapshots elsewhere.
            producer_options={"partitioner": DefaultPartitioner()},
        )
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # One snapshot per fetch at most is plenty; the broker returns a first
                # batch larger than this anyway (KIP-74), so big states still come.
                max_partition_fetch_bytes=4 << 20,
                fetch_max_bytes=max(self.max_message_bytes + _FRAMING_BYTES, 32 << 20),
                bootstrap_timeout_ms=int(min(self.timeout_s, 30.0) * 1000),
                **client_options(self._client_config, "consumer"),
            )
        except UNREACHABLE as e:
            self._producer.close()
            raise ConnectionError(
                connect_error(bootstrap_servers, min(self.timeout_s, 30.0), self._client_config, e)
            ) from e
        self._lock = threading.Lock()
        self._read_to: dict[int, int] = {}  # partition -> next offset to read
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (partition, offset) of its newest message
        self._closed = False
        self.stats = {"loads": 0, "messages_read": 0, "bytes_read": 0, "fetches": 0, "damaged": 0}
        if self._partitions() is None:
            self.close()
            raise ValueError(
                f"Kafka state topic {topic!r} does not exist on {bootstrap_servers}; "
                f"{create_hint(bootstrap_servers)} (compacted, with a raised message size limit)"
            )

    # ----------------------------------------------------------------- the interface

    def save(self, snap: dict) -> None:
        data = encode_snapshot(snap)
        if len(data) > self.max_message_bytes:
            raise ValueError(
                f"snapshot of stream {snap['stream_id']!r} is {len(data)} bytes, over the state topic "
                f"{self.topic!r} limit of {self.max_message_bytes} (raise its max.message.bytes: "
                "vmstream kafka-topics --state-max-message-bytes)"
            )
        self._producer.send(self.topic, data, key=_key(snap["stream_id"]))
        self._producer.flush()

    def delete(self, stream_id: str) -> None:
        self._producer.send(self.topic, None, key=_key(stream_id))
        self._producer.flush()

    def load(self, stream_id: str) -> Optional[dict]:
        key = _key(stream_id)
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            self.stats["loads"] += 1
            # Normally one round. Another round only when compaction removed the
            # message the index points at, which means a newer one exists: read on.
            for _ in range(5):
                parts = self._partitions()
                if not parts:
                    raise ValueError(f"Kafka state topic {self.topic!r} no longer exists")
                p = sorted(parts)[partition_for_key(key, len(parts))]
                value = self._read_partition(p, key, deadline)
                loc = self._index.get(key)
                if loc is None:
                    return None
                if value is not None and value[0] == loc[1]:
                    return self._decode(stream_id, value[1], f"{self.topic}[{p}]@{loc[1]}")
                msg = self._fetch(loc[0], loc[1], deadline)
                if msg is not None and msg.offset == loc[1] and msg.key == key and msg.value is not None:
                    return self._decode(stream_id, msg.value, f"{self.topic}[{p}]@{loc[1]}")
            raise RuntimeError(f"{self.topic}: the snapshot of {stream_id!r} kept moving under compaction; try again")

    def _decode(self, stream_id: str, data: bytes, where: str) -> Optional[dict]:
        """The snapshot in `data`, or None when it is damaged: anyone who can write to
        the topic can put anything there, and an error here would fail the stream's
        job on every try (and every worker). It is set aside (left in the log; the
        stream's next snapshot replaces it) with one warning, and the stream starts over."""
        try:
            snap = decode_snapshot(data, where=where)
            if not isinstance(snap.get("stream_id"), str) or not isinstance(snap.get("extra"), dict):
                raise ValueError("its header has fields of the wrong type")
            return snap
        except Exception as e:
            self.stats["damaged"] += 1
            log.warning(
                "state topic: the snapshot of %r at %s is damaged (%s: %s); set aside, the stream starts over",
                stream_id,
                where,
                type(e).__name__,
                e,
            )
            return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.close()
        finally:
            self._consumer.close()

    def __enter__(self) -> "KafkaStateStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _read_limit(self) -> int:
        from kafka import errors as E

        admin = admin_client(self.bootstrap_servers, self._client_config, timeout_s=min(self.timeout_s, 30.0))
        try:
            if self.topic not in set(admin.list_topics()):
                raise ValueError(
                    f"Kafka state topic {self.topic!r} does not exist on {self.bootstrap_servers}; "
                    + create_hint(self.bootstrap_servers)
                )
            try:
                return topic_message_limit(admin, self.topic)
            except E.KafkaError as e:  # e.g. no DescribeConfigs permission
                log.info("cannot read max.message.bytes of %s (%s); assuming %d", self.topic, e, _DEFAULT_LIMIT)
                return _DEFAULT_LIMIT
        finally:
            admin.close()

    def _partitions(self):
        return self._consumer.partitions_for_topic(self.topic)

    def _read_partition(self, p: int, key: bytes, deadline: float):
        """Read partition `p` from where the last read stopped to its current end,
        updating the index. Returns (offset, value) of the newest message of `key`
        among those read, or None."""
        from kafka import TopicPartition

        tp = TopicPartition(self.topic, p)
        c = self._consumer
        end = c.end_offsets([tp], timeout_ms=_ms_left(deadline))[tp]
        start = self._read_to.get(p, 0)
        if start > end:
            # The topic was deleted and made again: what we know of it is void.
            log.warning(
                "%s[%d]: end offset %d is behind what was read (%d); re-reading the partition",
                self.topic,
                p,
                end,
                start,
            )
            self._index = {k: v for k, v in self._index.items() if v[0] != p}
            start = 0
        if start >= end:
            return None
        c.assign([tp])
        c.seek(tp, start)
        found = None
        pos = start
        while pos < end:
            if time.monotonic() > deadline:
                self._read_to[p] = pos  # what was read is indexed; go on from there next time
                raise TimeoutError(
                    f"reading Kafka state topic {self.topic}[{p}] up to offset {end} "
                    f"took over {self.timeout_s:.0f}s (at {pos})"
                )
            batch = c.poll(timeout_ms=min(500, _ms_left(deadline)), max_records=1000)
            for m in batch.get(tp, ()):
                if m.offset >= end:
                    break
                self.stats["messages_read"] += 1
                self.stats["bytes_read"] += len(m.value or b"")
                if m.key is not None:
                    if m.value is None:
                        self._index.pop(m.key, None)
                    else:
                        self._index[m.key] = (p, m.offset)
                    if m.key == key:
                        found = None if m.value is None else (m.offset, m.value)
            pos = c.position(tp, timeout_ms=_ms_left(deadline))
        self._read_to[p] = end
        return found

    def _fetch(self, p: int, offset: int, deadline: float):
        """The first message at or after `offset` in partition `p`, or None at the end."""
        from kafka import TopicPartition

        tp = TopicPartition(self.topic, p)
        c = self._consumer
        self.stats["fetches"] += 1
        end = c.end_offsets([tp], timeout_ms=_ms_left(deadline))[tp]
        if offset >= end:
            return None
        c.assign([tp])
        c.seek(tp, offset)
        while time.monotonic() < deadline:
            msgs = c.poll(timeout_ms=min(500, _ms_left(deadline)), max_records=1).get(tp)
            if msgs:
                return msgs[0]
            if c.position(tp, timeout_ms=_ms_left(deadline)) >= end:
                return None
        raise TimeoutError(f"fetching the snapshot at {self.topic}[{p}]@{offset} took over {self.timeout_s:.0f}s")


def _key(stream_id: str) -> bytes:
    return stream_id.encode("utf-8")


def _ms_left(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))
