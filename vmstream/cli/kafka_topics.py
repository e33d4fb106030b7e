"""`vmstream kafka-topics`: create (or --describe, --delete) vmstream's Kafka topics.

The admin step before sinks and workers start (`python -m vmstream.cli.kafka_topics`
runs it too). Topic names come from `--prefix` or from a pipeline config's kafka section
(`--config`); the topics themselves are `vmstream.kafka.topics`'.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional, Sequence

from vmstream.kafka.topics import (
    STATE_MAX_MESSAGE_BYTES,
    TopicNames,
    admin_client,
    delete_topics,
    describe_topics,
    ensure_topics,
    vmstream_topics,
)


def build_parser(prog: str = "python -m vmstream.cli.kafka_topics") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Create (or check) vmstream's Kafka topics.",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    p.add_argument("--prefix", default="vmstream", help="topic name prefix (default: vmstream)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument(
        "--replication-factor", type=int, default=None, help="default: the broker's default.replication.factor"
    )
    p.add_argument("--state-max-message-bytes", type=int, default=STATE_MAX_MESSAGE_BYTES)
    p.add_argument("--grow-partitions", action="store_true")
    p.add_argument("--describe", action="store_true", help="only print the topics' partitions and configs")
    p.add_argument("--delete", action="store_true", help="delete vmstream's topics (all their data!)")
    p.add_argument(
        "--config",
        help="take topic names from this pipeline config's kafka section (and its bootstrap / client settings)",
    )
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    a = (build_parser(prog) if prog else build_parser()).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    client_config: dict[str, Any] = {}
    bootstrap = a.bootstrap
    try:
        if a.config:
            from vmstream.pipeline.config import load_config

            kcfg = load_config(a.config).kafka
            names = TopicNames.from_config(kcfg)
            client_config = dict(kcfg.client)
            bootstrap = bootstrap or kcfg.bootstrap
        else:
            names = TopicNames() if a.prefix == "vmstream" else TopicNames.with_prefix(a.prefix)
        if not bootstrap:
            raise ValueError("no bootstrap servers: give --bootstrap or a --config with kafka.bootstrap")
        if a.delete:
            print(
                "deleted:", ", ".join(delete_topics(bootstrap, names.all(), client_config=client_config)) or "nothing"
            )
            return 0
        if a.describe:
            admin = admin_client(bootstrap, client_config)
            try:
                for n, d in describe_topics(admin, names.all()).items():
                    interesting = {
                        k: v
                        for k, v in d["configs"].items()
                        if k in ("cleanup.policy", "max.message.bytes", "retention.ms")
                    }
                    print(f"{n}: partitions={d['partitions']} {interesting}")
            finally:
                admin.close()
            return 0
        specs = vmstream_topics(
            names,
            partitions=a.partitions,
            replication_factor=a.replication_factor,
            state_max_message_bytes=a.state_max_message_bytes,
        )
        for n, what in ensure_topics(
            bootstrap, specs, client_config=client_config, grow_partitions=a.grow_partitions
        ).items():
            print(f"{n}: {what}")
        return 0
    except (ConnectionError, ValueError, RuntimeError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
