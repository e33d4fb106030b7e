"""Reading vmstream's records back from Kafka.

    read_results("127.0.0.1:9092")                     # every segment result now, de-duplicated
    read_records(bootstrap, ["vmstream.events"])       # any kinds, decoded
    latest_by_key(bootstrap, "vmstream.state")         # a compacted topic's view
    with RecordConsumer(bootstrap, "vmstream.segments", group_id="ui") as c:
        for rec in c: ...                              # follow topics live

The message format is `vmstream.kafka.codec`'s.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence, Union

from vmstream.kafka.client import client_options
from vmstream.kafka.codec import DEFAULT_TOPICS, KIND_SEGMENT, Record, decode_message, dedupe_by_uid
from vmstream.records import SegmentResult


def read_messages(
    bootstrap_servers: Union[str, Sequence[str]],
    topics: Union[str, Sequence[str]],
    *,
    client_config: Optional[dict[str, Any]] = None,
    timeout_s: float = 60.0,
    max_message_bytes: int = 16 << 20,
) -> list[Any]:
    """The raw messages (kafka-python ConsumerRecords) on `topics` now: from the
    beginning up to the end offsets seen when the call starts, in log order within each
    partition, partitions one after another. Reads without a consumer group: commits
    nothing, disturbs no one. TimeoutError if the end is not reached in `timeout_s`.
    """
    from kafka import KafkaConsumer, TopicPartition

    if isinstance(topics, str):
        topics = [topics]
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max_message_bytes,
        fetch_max_bytes=max(max_message_bytes, 50 << 20),
        **client_options(client_config, "consumer"),
    )
    try:
        parts = []
        for t in topics:
            ps = consumer.partitions_for_topic(t)
            if ps is None:
                raise ValueError(f"topic {t!r} does not exist on {bootstrap_servers}")
            parts += [TopicPartition(t, p) for p in sorted(ps)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        per_part: dict[Any, list[Any]] = {tp: [] for tp in parts}
        remaining = {tp for tp in parts if end[tp] > 0}
        deadline = time.monotonic() + timeout_s
        for tp in parts:
            if tp not in remaining:
                consumer.pause(tp)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach the end of {sorted(map(str, remaining))} in {timeout_s}s")
            for tp, msgs in consumer.poll(timeout_ms=200).items():
                per_part[tp] += [m for m in msgs if m.offset < end[tp]]
            for tp in list(remaining):
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
                    consumer.pause(tp)
        return [m for tp in parts for m in per_part[tp]]
    finally:
        consumer.close()


def latest_by_key(
    bootstrap_servers: Union[str, Sequence[str]],
    topic: str,
    **kwargs: Any,
) -> dict[bytes, Any]:
    """The latest message of each key on `topic` (a compacted topic's view: what a
    resuming worker needs from the state topic). A key whose latest message is a
    tombstone (value None) is left out. Values are kafka-python ConsumerRecords."""
    latest: dict[bytes, Any] = {}
    for m in read_messages(bootstrap_servers, topic, **kwargs):
        if m.value is None:
            latest.pop(m.key, None)
        else:
            latest[m.key] = m
    return latest


def read_records(
    bootstrap_servers: Union[str, Sequence[str]],
    topics: Union[str, Sequence[str]],
    *,
    client_config: Optional[dict[str, Any]] = None,
    dedupe: bool = True,
    timeout_s: float = 60.0,
    resolve_refs: bool = True,
) -> list[Record]:
    """Everything on `topics` now (see `read_messages`), decoded, and de-duplicated
    by uid unless `dedupe=False`."""
    records = [
        decode_message(
            m.value, m.headers, topic=m.topic, partition=m.partition, offset=m.offset, resolve_refs=resolve_refs
        )
        for m in read_messages(bootstrap_servers, topics, client_config=client_config, timeout_s=timeout_s)
    ]
    return dedupe_by_uid(records) if dedupe else records


def read_results(
    bootstrap_servers: Union[str, Sequence[str]],
    topic: str = DEFAULT_TOPICS[KIND_SEGMENT],
    **kwargs: Any,
) -> list[SegmentResult]:
    """The segment results on `topic`, de-duplicated by uid, sorted by (stream id,
    segment index)."""
    recs = read_records(bootstrap_servers, topic, **kwargs)
    seg = [r for r in recs if isinstance(r, SegmentResult)]
    return sorted(seg, key=lambda r: (r.stream_id, r.segment_index))


class RecordConsumer:
    """Follows topics live and yields decoded records, skipping segment duplicates.

    For users' own consumers and the latency benchmark:

        with RecordConsumer("127.0.0.1:9092", ["vmstream.segments"], group_id="ui") as c:
            for rec in c:
                ...

    `group_id=None` reads without a group (from the end, or from the beginning with
    `from_beginning=True`). Duplicate suppression remembers the last `dedupe_window`
    uids, which covers re-sends after an outage (they arrive close together). A stream
    whose records change `stream_version` (its content was run again) starts afresh
    there: its segments are new, not duplicates of the old uids, and replace what came
    before of the stream (`new_versions` counts the changes; the batch readers keep
    only what follows the last one, see `codec.dedupe_by_uid`).
    """

    def __init__(
        self,
        bootstrap_servers: Union[str, Sequence[str]],
        topics: Union[str, Sequence[str]],
        *,
        group_id: Optional[str] = None,
        from_beginning: bool = False,
        client_config: Optional[dict[str, Any]] = None,
        dedupe_window: int = 100_000,
        consumer_options: Optional[dict[str, Any]] = None,
    ):
        from kafka import KafkaConsumer, TopicPartition

        self.topics = [topics] if isinstance(topics, str) else list(topics)
        opts = dict(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=group_id is not None,
            auto_offset_reset="earliest" if from_beginning else "latest",
            max_partition_fetch_bytes=16 << 20,
        )
        opts.update(client_options(client_config, "consumer"))
        opts.update(consumer_options or {})
        self._consumer = KafkaConsumer(**opts)
        if group_id is None:
            parts = []
            for t in self.topics:
                ps = self._consumer.partitions_for_topic(t)
                if ps is None:
                    raise ValueError(f"topic {t!r} does not exist on {bootstrap_servers}")
                parts += [TopicPartition(t, p) for p in sorted(ps)]
            self._consumer.assign(parts)
            if from_beginning:
                self._consumer.seek_to_beginning(*parts)
            else:
                self._consumer.seek_to_end(*parts)
                for tp in parts:  # resolve "end" now, not at the first poll
                    self._consumer.position(tp)
        else:
            self._consumer.subscribe(self.topics)
        self._seen: dict[tuple[int, str], None] = {}
        self._window = dedupe_window
        self._versions: dict[str, str] = {}  # stream id -> the version of its last segment
        self.duplicates = 0
        self.new_versions = 0

    def poll(self, timeout_s: float = 1.0) -> list[Record]:
        out = []
        for _tp, msgs in self._consumer.poll(timeout_ms=int(timeout_s * 1000)).items():
            for m in msgs:
                rec = decode_message(m.value, m.headers, topic=m.topic, partition=m.partition, offset=m.offset)
                if isinstance(rec, SegmentResult):
                    if self._versions.setdefault(rec.stream_id, rec.stream_version) != rec.stream_version:
                        self._versions[rec.stream_id] = rec.stream_version
                        self.new_versions += 1
                    uid = (rec.uid, rec.stream_version)
                    if uid in self._seen:
                        self.duplicates += 1
                        continue
                    self._seen[uid] = None
                    if len(self._seen) > self._window:
                        self._seen.pop(next(iter(self._seen)))
                out.append(rec)
        return out

    def __iter__(self) -> Iterator[Record]:
        while True:
            yield from self.poll()

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "RecordConsumer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
