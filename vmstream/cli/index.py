"""`vmstream index`: one store from a fleet's results on Kafka (see pipeline/indexer.py)."""

from __future__ import annotations

from vmstream.cli.common import add_common, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser(
        "index",
        help="build one store (FAISS + Parquet) from the workers' results on Kafka, exactly once",
        description="Consume the results topics (segments, events, summaries) of a fleet of workers into one "
        "store under --out, laid out as `vmstream run --out` writes it, so `vmstream search --index "
        "DIR` searches the whole fleet's output. The consumed offsets are committed inside the "
        "store's own commit point: after any stop, even kill -9, it resumes where its store is, "
        "adding nothing twice and losing nothing. A record that cannot be indexed goes to the "
        "dead-letter topic with its reason. Run one per store; stop it with Ctrl-C or SIGTERM.",
    )
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="the broker (host:port); default kafka.bootstrap")
    p.add_argument("--out", metavar="DIR", help="the store's directory (default output.dir)")
    p.add_argument("--config", help="YAML config (its kafka section names the topics)")
    p.add_argument(
        "--commit-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="longest a record waits before it is committed and searchable (default 1 s)",
    )
    p.add_argument(
        "--commit-records",
        type=int,
        default=4096,
        metavar="N",
        help="commit after at most N records even within the interval (default 4096)",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        type=_shard,
        default=(0, 1),
        help="take only the partitions p with p %% N == I (several indexers feeding one Milvus "
        "collection, each with its own --out); default all",
    )
    add_common(p)
    p.set_defaults(handler=main)


def _shard(text: str) -> tuple[int, int]:
    import argparse

    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: give I/N with 0 <= I < N, e.g. 0/4")
    return shard


def _check_out(path: str) -> None:
    """The store's directory, made up front: a path that cannot be one is one line."""
    import os

    from vmstream.errors import UserError

    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out: {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out: cannot create the directory {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"--out: the directory {path!r} is not writable")


def main(args) -> int:
    import logging

    from vmstream.pipeline.indexer import Indexer
    from vmstream.pipeline.worker import RepeatFilter

    cfg = config_from_args(args)
    _check_out(cfg.output.dir)
    quiet = RepeatFilter()  # kafka-python repeats each outage line many times a second
    for h in logging.getLogger().handlers:
        h.addFilter(quiet)
    return Indexer(
        cfg,
        cfg.output.dir,
        commit_interval_s=args.commit_interval,
        commit_records=args.commit_records,
        shard=args.shard,
    ).run()
