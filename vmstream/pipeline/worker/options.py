"""The worker's Kafka settings from the pipeline config: its consumer's options and the
topics it needs."""

from __future__ import annotations

from typing import Any

from vmstream.errors import UserError
from vmstream.kafka.client import client_options
from vmstream.kafka.topics import TopicNames, admin_client, describe_topics, ensure_topics, vmstream_topics

ASSIGNORS = ("range", "roundrobin", "sticky", "cooperative-sticky")


def consumer_options(cfg, worker_id: str) -> dict[str, Any]:
    """kafka-python KafkaConsumer options for the worker of `cfg` (a PipelineConfig):
    the group, manual commits, cooperative-sticky assignment, then the user's
    `kafka.client` and `kafka.consumer` settings. UserError for a setting the worker
    cannot work with."""
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

    k = cfg.kafka
    opts: dict[str, Any] = dict(
        bootstrap_servers=k.bootstrap,
        group_id=k.group_id,
        client_id=f"vmstream-worker-{worker_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=[CooperativeStickyAssignor],
        max_poll_records=max(1, cfg.runner.max_streams),
    )
    try:
        opts.update(client_options(k.client, "consumer"))
        opts.update(client_options(k.consumer, "consumer"))
    except ValueError as e:
        raise UserError(f"kafka.client / kafka.consumer: {e}") from None
    if opts.get("enable_auto_commit"):
        raise UserError(
            "kafka.consumer.enable_auto_commit: the worker commits offsets itself, "
            "only past finished jobs; auto-commit would lose jobs on a crash"
        )
    opts["enable_auto_commit"] = False
    strategy = opts.get("partition_assignment_strategy")
    if isinstance(strategy, (str, list, tuple)) and any(
        isinstance(s, str) for s in ([strategy] if isinstance(strategy, str) else strategy)
    ):
        opts["partition_assignment_strategy"] = assignors([strategy] if isinstance(strategy, str) else strategy)
    return opts


def sync_wait_s(opts: dict[str, Any]) -> float:
    """How long a rebalance listener that must block may wait: a third of the session
    timeout, so the group does not evict the worker meanwhile."""
    return max(0.5, opts.get("session_timeout_ms", 45000) / 1000.0 / 3)


def assignors(names):
    """kafka-python assignor classes for names (classes pass through)."""
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

    table = {
        "range": RangePartitionAssignor,
        "roundrobin": RoundRobinPartitionAssignor,
        "sticky": StickyPartitionAssignor,
        "cooperative-sticky": CooperativeStickyAssignor,
    }
    out = []
    for n in names:
        if not isinstance(n, str):
            out.append(n)
            continue
        if n not in table:
            raise UserError(
                f"kafka.consumer.partition_assignment_strategy: unknown assignor {n!r} (one of {', '.join(ASSIGNORS)})"
            )
        out.append(table[n])
    return out


def ensure_worker_topics(kafka_cfg, topics: TopicNames) -> None:
    """Create the topics the worker uses when missing (the project's admin step);
    existing topics keep their partition counts."""
    k = kafka_cfg
    try:
        admin = admin_client(k.bootstrap, k.client)
        try:
            have = describe_topics(admin, topics.all())
        finally:
            admin.close()
        specs = []
        for s in vmstream_topics(topics):
            if s.name in have:
                s = type(s)(s.name, have[s.name]["partitions"], s.replication_factor, s.configs)
            specs.append(s)
        # Configs of existing topics are the operator's (the admin step reconciles
        # them); differences are only reported here.
        ensure_topics(k.bootstrap, specs, client_config=k.client, update_configs=False)
    except ConnectionError as e:
        raise UserError(f"Kafka at {k.bootstrap}: {e}") from None
