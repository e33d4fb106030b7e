"""The `vmstream` command line.

    vmstream run SOURCE... [--model NAME | --checkpoint PATH] [--out DIR] [--kafka BOOTSTRAP]
                 [--fps F] [--segment-frames T] [--device cpu|cuda] [--plot]
    vmstream search --index DIR (--video FILE [--at S] | --id N | --stream ID --at S) [-k K]
    vmstream info
    vmstream worker --config FILE
    vmstream kafka-topics [--bootstrap B | --config FILE] [--describe | --delete] ...
    vmstream train --config FILE
    vmstream eval --config FILE

argparse (standard library) parses; every subcommand imports its heavy parts lazily
so `vmstream info` and `--help` answer at once.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

log = logging.getLogger("vmstream")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set runner.queue_size=16 (repeatable)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="registry name of an official checkpoint, e.g. videomamba_t16_k400_f16_res224 "
                                   "(downloaded from the Hugging Face hub into its cache)")
    g.add_argument("--checkpoint", help="a local checkpoint file (.pth); the architecture is read from it")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmstream",
        description="Streaming long-video analysis with VideoMamba (recurrent, state-carrying mode).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="analyse videos: files, directories, globs, live URLs",
                         description="Decode SOURCEs into segments, run VideoMamba carrying its state from "
                                     "segment to segment, write Parquet + a FAISS index under --out "
                                     "(and Kafka with --kafka), print a per-segment timeline.")
    run.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="video file, directory (each file its own stream), glob, or URL (rtsp://, http://, tcp://, ...)")
    run.add_argument("--config", help="YAML config (see configs/); flags override it")
    _add_model_args(run)
    run.add_argument("--out", help="output directory (Parquet, index, snapshots); default runs/latest")
    run.add_argument("--kafka", metavar="BOOTSTRAP", help="also publish results to Kafka at host:port")
    run.add_argument("--fps", type=float, help="frames sampled per second of video (default 1)")
    run.add_argument("--sampling", choices=["fps", "uniform", "keyframes", "all"],
                     help="frame sampling (default fps; keyframes is fast but approximate in time)")
    run.add_argument("--segment-frames", type=int, metavar="T", help="frames per segment (default: the model's)")
    run.add_argument("--decoder", choices=["auto", "pyav", "dali"], help="decoding backend (default auto)")
    run.add_argument("--audio", action="store_true", default=None, help="attach per-segment audio log-mel features")
    run.add_argument("--summary", choices=["last", "mean"], help="video-level labels from the last segment or the mean")
    run.add_argument("--top-k", type=int, help="labels kept per segment (default 5)")
    run.add_argument("--max-streams", type=int, help="streams decoded concurrently (default 2)")
    run.add_argument("--plot", action="store_true", default=None, help="write a timeline plot per video at the end")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(run)

    search = sub.add_parser("search", help="search a FAISS store by id, by stream+time, or by a query video")
    search.add_argument("--index", required=True, metavar="DIR", help="the store (a run's --out or its index/ dir)")
    q = search.add_mutually_exclusive_group(required=True)
    q.add_argument("--video", metavar="FILE", help="embed this video and search with it")
    q.add_argument("--id", type=int, metavar="N", help="search with a stored vector's id")
    q.add_argument("--stream", metavar="ID", help="search with the stored segment of stream ID at --at")
    search.add_argument("--at", type=float, metavar="SECONDS",
                        help="with --video: use the segment covering this time (default: the whole video, "
                             "mean of its segment embeddings); with --stream: required")
    search.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    search.add_argument("--json", action="store_true", help="print hits as JSON lines")
    search.add_argument("--config", help="YAML config for embedding --video (model, decoding)")
    _add_model_args(search)
    _add_common(search)

    info = sub.add_parser("info", help="versions, devices, and which backends are usable (and why not)")
    info.add_argument("-v", "--verbose", action="count", default=0)

    worker = sub.add_parser("worker", help="Kafka worker: take jobs from the jobs topic in a consumer group")
    worker.add_argument("--config", required=True, help="YAML config with a kafka section")
    worker.add_argument("--kafka", metavar="BOOTSTRAP", help="override kafka.bootstrap")
    _add_model_args(worker)
    _add_common(worker)

    # Its options are kafka_topics' own (`vmstream kafka-topics --help`); main() hands
    # the rest of the command line over unparsed.
    sub.add_parser("kafka-topics", add_help=False,
                   help="create (or --describe, --delete) vmstream's Kafka topics: the admin step before workers")

    train = sub.add_parser("train", help="train or fine-tune (configs/train/*.yaml)")
    train.add_argument("--config", required=True)
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    train.add_argument("-v", "--verbose", action="count", default=0)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a data list (multi-view)")
    ev.add_argument("--config", required=True)
    ev.add_argument("--checkpoint", help="checkpoint file or registry name (default: the recipe's finetune)")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    ev.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Our own one-line notices (backend choice, resampling) are worth seeing by default.
    logging.getLogger("vmstream").setLevel(min(level, logging.INFO))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kafka-topics"]:
        from vmstream.pipeline.kafka_topics import main as kafka_topics

        return kafka_topics(argv[1:], prog="vmstream kafka-topics")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "verbose", 0))
    try:
        if args.command == "info":
            from vmstream.pipeline.info import print_info

            return print_info()
        if args.command == "run":
            from vmstream.pipeline.app import cmd_run

            return cmd_run(args)
        if args.command == "search":
            from vmstream.pipeline.app import cmd_search

            return cmd_search(args)
        if args.command == "worker":
            from vmstream.pipeline.worker import cmd_worker

            return cmd_worker(args)
        if args.command == "train":
            from vmstream.training import train_main

            return int(train_main(args.config, args.overrides) or 0)
        if args.command == "eval":
            from vmstream.training import eval_main

            return int(eval_main(args.config, args.overrides, checkpoint=args.checkpoint) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"vmstream {args.command}: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


class UserError(Exception):
    """A problem with what the user asked for (bad input, config, missing checkpoint):
    printed as one clear message, no traceback."""


if __name__ == "__main__":
    # Run the package's module, not this __main__ copy: otherwise its UserError is a
    # different class from the one the commands raise, and errors show as tracebacks.
    from vmstream.pipeline.cli import main as _main

    sys.exit(_main())
