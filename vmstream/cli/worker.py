"""`vmstream worker` (a Kafka consumer-group worker) and `vmstream kafka-topics` (the
admin step that creates vmstream's topics)."""

from __future__ import annotations

from vmstream.cli.common import add_common, add_model_args, config_from_args


def add_parser(sub) -> None:
    worker = sub.add_parser(
        "worker",
        help="Kafka worker: take jobs from the jobs topic in a consumer group",
        description="Join the consumer group of the jobs topic and run each job's stream "
        "through the pipeline; results, events, summaries and snapshots go "
        "to Kafka (and the local Parquet/FAISS outputs).",
    )
    worker.add_argument("--config", required=True, help="YAML config with a kafka section")
    worker.add_argument("--kafka", metavar="BOOTSTRAP", help="override kafka.bootstrap")
    worker.add_argument(
        "--serve-root",
        action="append",
        default=[],
        metavar="DIR",
        help="jobs may read local files under DIR (added to kafka.jobs.roots, with the file "
        'scheme; repeatable): the quick start\'s policy, e.g. --serve-root "$PWD"',
    )
    add_model_args(worker)
    add_common(worker)
    worker.set_defaults(handler=main)
    # Its options are the admin module's own (`vmstream kafka-topics --help`); the CLI's
    # main hands the rest of the command line over unparsed.
    sub.add_parser(
        "kafka-topics",
        add_help=False,
        help="create (or --describe, --delete) vmstream's Kafka topics: the admin step before workers",
    )


def main(args) -> int:
    import logging

    from vmstream.pipeline.worker import RedactFilter, RepeatFilter, Worker

    cfg = config_from_args(args)
    serve_roots(cfg, args.serve_root)
    quiet = RepeatFilter()  # kafka-python repeats each outage line many times a second
    redact = RedactFilter()  # a job's URL may carry user:password
    for h in logging.getLogger().handlers:
        h.addFilter(quiet)
        h.addFilter(redact)
    return Worker(cfg).run()


def serve_roots(cfg, roots: list[str]) -> None:
    """--serve-root DIR: local files under DIR become readable by jobs, on top of what
    the config's kafka.jobs allows."""
    import os

    from vmstream.errors import UserError

    jobs = cfg.kafka.jobs
    for given in roots:
        root = os.path.realpath(given)
        if not os.path.isdir(root):
            raise UserError(f"--serve-root {given}: not a directory")
        if root not in jobs.roots:
            jobs.roots = [*jobs.roots, root]
    if roots and "file" not in jobs.schemes:
        jobs.schemes = [*jobs.schemes, "file"]


def kafka_topics(argv: list[str]) -> int:
    from vmstream.cli.kafka_topics import main as topics_main

    return topics_main(argv, prog="vmstream kafka-topics")
