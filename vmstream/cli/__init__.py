"""The `vmstream` command line: one module per command, each adding its parser and
its handler; heavy parts are imported lazily so `--help`, `--version` and `info`
answer at once.

    vmstream run SOURCE... [--model NAME | --checkpoint PATH] [--out DIR] [--kafka BOOTSTRAP] ...
    vmstream search --index DIR (--text TEXT | --video FILE [--at S] | --id N | --stream ID --at S) [-k K]
    vmstream serve --index DIR [--host 127.0.0.1] [--port 8080] [--token-file F | --insecure]
    vmstream store (verify | repair [--force]) DIR
    vmstream eval-retrieval (--model NAME | --checkpoint PATH) --annotations FILE --videos DIR [--dataset D]
    vmstream info
    vmstream worker --config FILE
    vmstream index --kafka BOOTSTRAP --out DIR [--config FILE]
    vmstream kafka-topics [--bootstrap B | --config FILE] [--describe | --delete] ...
    vmstream train --config FILE [--set KEY=VALUE ...]
    vmstream eval --config FILE [--checkpoint C] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from vmstream.cli import eval_retrieval, index, info, run, search, serve, store, train, worker
from vmstream.cli.common import setup_logging
from vmstream.errors import UserError
from vmstream.printable import printable


def build_parser() -> argparse.ArgumentParser:
    from vmstream import __version__

    parser = argparse.ArgumentParser(
        prog="vmstream",
        description="Streaming long-video analysis with VideoMamba (recurrent, state-carrying mode).",
    )
    parser.add_argument("--version", action="version", version=f"vmstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (run, search, serve, store, eval_retrieval, info, worker, index, train):
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kafka-topics"]:
        return worker.kafka_topics(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(getattr(args, "verbose", 0), args.command)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"vmstream {args.command}: {printable(str(e), keep_newlines=True)}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except BrokenPipeError:
        # The reader went away (`vmstream search ... | head`): not an error. Point stdout
        # at /dev/null so the interpreter's final flush does not complain.
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


__all__ = ["main", "build_parser", "UserError"]
