"""vmstream's Kafka topics: their names, partitions and configs, and creating them.

The broker's auto-creation is off (it would create topics with one partition and
default limits), so this admin step makes them, idempotently, before a sink or worker
starts:

    names = TopicNames()                          # or TopicNames.with_prefix("cam")
    ensure_topics("127.0.0.1:9092", vmstream_topics(names, partitions=6))

or from a shell: `vmstream kafka-topics --bootstrap 127.0.0.1:9092`.

The topics (defaults; `TopicNames` renames them):

    vmstream.jobs          jobs for workers (a stream id and a uri), consumer-group work queue
    vmstream.segments      SegmentResult per segment, keyed by stream id
    vmstream.events        StreamEvent (gaps, errors, stream ends), keyed by stream id
    vmstream.summaries     StreamSummary per finished stream, keyed by stream id
    vmstream.state         stream state snapshots, keyed by stream id: compacted (only the
                           latest snapshot per stream is kept) and with a raised message
                           size limit (a VideoMamba-M state is ~2.8 MB in fp32)
    vmstream.dead-letter   failed jobs with their error

Partition counts: results and state topics are keyed by stream id, so the count fixes
which partition a stream lands on. `ensure_topics` never adds partitions to an existing
topic unless asked (`grow_partitions=True`; it warns instead), because that moves
streams between partitions and breaks their order across the change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from vmstream.kafka.client import admin_client
from vmstream.kafka.codec import DEFAULT_TOPICS, KIND_EVENT, KIND_SEGMENT, KIND_SUMMARY

log = logging.getLogger(__name__)

# Room for the state of a VideoMamba-M stream (about 2.8 MB fp32) several times over,
# plus decode position and framing.
STATE_MAX_MESSAGE_BYTES = 16 << 20
WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicNames:
    jobs: str = "vmstream.jobs"
    segments: str = DEFAULT_TOPICS[KIND_SEGMENT]
    events: str = DEFAULT_TOPICS[KIND_EVENT]
    summaries: str = DEFAULT_TOPICS[KIND_SUMMARY]
    state: str = "vmstream.state"
    dead_letter: str = "vmstream.dead-letter"

    @classmethod
    def with_prefix(cls, prefix: str) -> "TopicNames":
        """All names under another prefix: `cam` gives cam.jobs, cam.segments, ..."""
        if not prefix or not all(c.isalnum() or c in "._-" for c in prefix):
            raise ValueError(f"Kafka topic prefix {prefix!r}: use letters, digits, '.', '_' or '-'")
        d = cls()
        return cls(**{k: prefix + getattr(d, k)[len("vmstream") :] for k in d.__dataclass_fields__})

    @classmethod
    def from_config(cls, kafka: Any) -> "TopicNames":
        """From the pipeline config's `kafka` section (any object with the `*_topic` fields
        of vmstream.pipeline.config.KafkaConfig)."""
        return cls(
            jobs=kafka.jobs_topic,
            segments=kafka.results_topic,
            events=kafka.events_topic,
            summaries=kafka.summaries_topic,
            state=kafka.state_topic,
            dead_letter=kafka.dead_letter_topic,
        )

    def sink_topics(self) -> dict[str, str]:
        """The record-kind -> topic map `KafkaSink(topics=...)` takes."""
        return {KIND_SEGMENT: self.segments, KIND_EVENT: self.events, KIND_SUMMARY: self.summaries}

    def all(self) -> list[str]:
        return [getattr(self, k) for k in self.__dataclass_fields__]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    # None: the broker's default.replication.factor (3 on a typical cluster, 1 here).
    replication_factor: Optional[int] = None
    configs: Mapping[str, str] = field(default_factory=dict)


def vmstream_topics(
    names: TopicNames = TopicNames(),
    *,
    partitions: int = 6,
    replication_factor: Optional[int] = None,
    state_max_message_bytes: int = STATE_MAX_MESSAGE_BYTES,
    results_retention_ms: Optional[int] = None,
    results_max_message_bytes: Optional[int] = None,
) -> list[TopicSpec]:
    """The specs of all vmstream topics.

    `partitions` bounds how many workers share the jobs (one partition per consumer at
    most) and spreads streams' results; the dead-letter topic has one (it is small and
    read by people). `results_retention_ms=None` keeps the broker's retention.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    results_cfg: dict[str, str] = {}
    if results_retention_ms is not None:
        results_cfg["retention.ms"] = str(int(results_retention_ms))
    if results_max_message_bytes is not None:
        results_cfg["max.message.bytes"] = str(int(results_max_message_bytes))
    rf = replication_factor
    return [
        TopicSpec(names.jobs, partitions, rf, {"retention.ms": str(WEEK_MS)}),
        TopicSpec(names.segments, partitions, rf, dict(results_cfg)),
        TopicSpec(names.events, partitions, rf, dict(results_cfg)),
        TopicSpec(names.summaries, partitions, rf, dict(results_cfg)),
        TopicSpec(
            names.state,
            partitions,
            rf,
            {
                "cleanup.policy": "compact",
                "max.message.bytes": str(int(state_max_message_bytes)),
                # Compact soon after a stream moves on, so a resuming worker reads
                # little more than the latest snapshot of each stream.
                "segment.ms": str(3600 * 1000),
                "min.cleanable.dirty.ratio": "0.1",
                # A finished stream's tombstone is kept a day, then forgotten.
                "delete.retention.ms": str(24 * 3600 * 1000),
            },
        ),
        TopicSpec(names.dead_letter, 1, rf, {"retention.ms": str(4 * WEEK_MS)}),
    ]


def describe_topics(admin: Any, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{name: {"partitions": n, "configs": {key: value}}} for the topics that exist."""
    from kafka.admin import ConfigResource, ConfigResourceType

    existing = set(admin.list_topics())
    present = [n for n in names if n in existing]
    out: dict[str, dict[str, Any]] = {}
    if not present:
        return out
    for t in admin.describe_topics(present):
        out[t["name"]] = {"partitions": len(t["partitions"]), "configs": {}}
    res = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n, None) for n in present], config_filter="all"
    )
    for n, cfg in res.get("topic", {}).items():
        out[n]["configs"] = {k: v["value"] for k, v in cfg.items()}
    return out


def ensure_topics(
    bootstrap_servers: Union[str, Sequence[str]],
    specs: Sequence[TopicSpec],
    *,
    client_config: Optional[Mapping[str, Any]] = None,
    timeout_s: float = 30.0,
    update_configs: bool = True,
    grow_partitions: bool = False,
) -> dict[str, str]:
    """Create missing topics; bring existing ones' configs in line with their specs.

    Returns {topic: "created" | "exists" | "updated"}. Safe to run from several
    processes at once (a topic created by another one in between counts as
    "exists"). An existing topic with fewer partitions than its spec is left as it is,
    with a warning, unless `grow_partitions` (see module doc).
    """
    from kafka import errors as E

    report: dict[str, str] = {}
    admin = admin_client(bootstrap_servers, client_config, timeout_s)
    try:
        current = describe_topics(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in current]
        if missing:
            req = {
                s.name: {
                    "num_partitions": s.partitions,
                    "replication_factor": -1 if s.replication_factor is None else s.replication_factor,
                    "configs": {k: str(v) for k, v in s.configs.items()},
                }
                for s in missing
            }
            resp = admin.create_topics(req, timeout_ms=int(timeout_s * 1000), raise_errors=False)
            for t in _create_results(resp):
                name, code, msg = t
                if code == 0:
                    report[name] = "created"
                elif code == E.TopicAlreadyExistsError.errno:
                    report[name] = "exists"
                    current.update(describe_topics(admin, [name]))
                else:
                    err = E.for_code(code)
                    raise RuntimeError(f"creating Kafka topic {name!r} failed: {err.__name__}: {msg}")
            created = [n for n, r in report.items() if r == "created"]
            if created:
                admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
        for s in specs:
            if s.name not in current:
                continue
            have = current[s.name]
            report.setdefault(s.name, "exists")
            if have["partitions"] < s.partitions:
                if not grow_partitions:
                    # Works as it is (fewer consumers can share it); changing it is the
                    # operator's call.
                    log.warning(
                        "Kafka topic %s has %d partitions, the spec asks for %d; not adding them, since that "
                        "moves streams between partitions (grow_partitions=True / --grow-partitions does)",
                        s.name,
                        have["partitions"],
                        s.partitions,
                    )
                else:
                    admin.create_partitions({s.name: s.partitions}, timeout_ms=int(timeout_s * 1000))
                    report[s.name] = "updated"
            want = {k: str(v) for k, v in s.configs.items() if have["configs"].get(k) != str(v)}
            if want:
                if not update_configs:
                    log.warning("Kafka topic %s differs from its spec in %s (not updated)", s.name, sorted(want))
                    continue
                from kafka.admin import ConfigResource, ConfigResourceType

                # Incremental SET of just these keys: other settings an operator made stay.
                admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, s.name, want)], incremental=True)
                report[s.name] = "updated"
                _wait_for_configs(admin, s.name, want, timeout_s)
    finally:
        admin.close()
    for name, what in report.items():
        log.info("Kafka topic %s: %s", name, what)
    return report


def _wait_for_configs(admin: Any, topic: str, want: Mapping[str, str], timeout_s: float) -> None:
    """Config changes reach the brokers' metadata asynchronously; return once `topic`
    shows them, so whoever runs next (a sink reading max.message.bytes) sees them."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = describe_topics(admin, [topic]).get(topic, {}).get("configs", {})
        if all(have.get(k) == v for k, v in want.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kafka topic {topic!r}: config change {dict(want)} not visible after {timeout_s:.0f}s")
        time.sleep(0.1)


def _create_results(resp: Any) -> list[tuple[str, int, str]]:
    """(name, error_code, message) per topic from create_topics' response, whichever
    form (dict or response object) this kafka-python version returns."""
    topics = resp.get("topics") if isinstance(resp, dict) else getattr(resp, "topics", None)
    out = []
    for t in topics or []:
        if isinstance(t, dict):
            out.append((t["name"], t["error_code"], t.get("error_message") or ""))
        elif isinstance(t, (tuple, list)):
            out.append((t[0], t[1], t[2] if len(t) > 2 and isinstance(t[2], str) else ""))
        else:
            out.append((t.name, t.error_code, getattr(t, "error_message", "") or ""))
    return out


def delete_topics(
    bootstrap_servers: Union[str, Sequence[str]],
    names: Sequence[str],
    *,
    client_config: Optional[Mapping[str, Any]] = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Delete those of `names` that exist; returns the deleted ones."""
    admin = admin_client(bootstrap_servers, client_config, timeout_s)
    try:
        present = [n for n in names if n in set(admin.list_topics())]
        if present:
            admin.delete_topics(present, timeout_ms=int(timeout_s * 1000))
            deadline = time.monotonic() + timeout_s
            while set(present) & set(admin.list_topics()) and time.monotonic() < deadline:
                time.sleep(0.1)
        return present
    finally:
        admin.close()


__all__ = [
    "TopicNames",
    "TopicSpec",
    "STATE_MAX_MESSAGE_BYTES",
    "vmstream_topics",
    "admin_client",
    "describe_topics",
    "ensure_topics",
    "delete_topics",
]
