"""``python -m vmstream.training train --config RECIPE [--set KEY=VALUE ...]``
``python -m vmstream.training eval --config RECIPE [--checkpoint PATH] [--set KEY=VALUE ...]``

The same entry points `vmstream train` / `vmstream eval` call. Under torchrun
(``torchrun --nproc_per_node 2 -m vmstream.training train ...``) every process runs
this and joins the process group.
"""

from __future__ import annotations

import argparse
import sys

from vmstream.config_loader import OVERRIDE_HELP

from . import eval_main, train_main


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    # `--set KEY=VALUE` as `vmstream train` takes it; bare KEY=VALUE words still work.
    overrides = [*a.overrides, *a.sets]
    if a.cmd == "train":
        return train_main(a.config, overrides)
    return eval_main(a.config, overrides, a.checkpoint)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vmstream.training")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train from a recipe (configs/train/*.yaml)")
    t.add_argument("--config", required=True)
    _add_overrides(t)
    e = sub.add_parser("eval", help="multi-view test of a checkpoint")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint", default=None)
    _add_overrides(e)
    return p


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=argparse.SUPPRESS)


if __name__ == "__main__":
    sys.exit(main())
