"""``python -m vmstream.training train --config RECIPE [key=value ...]``
``python -m vmstream.training eval --config RECIPE [--checkpoint PATH] [key=value ...]``

The same entry points `vmstream train` / `vmstream eval` call. Under torchrun
(``torchrun --nproc_per_node 2 -m vmstream.training train ...``) every process runs
this and joins the process group.
"""
from __future__ import annotations

import argparse
import sys

from vmstream.config_loader import OVERRIDE_HELP

from .trainer import eval_main, train_main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmstream.training")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train from a recipe (configs/train/*.yaml)")
    t.add_argument("--config", required=True)
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    e = sub.add_parser("eval", help="multi-view test of a checkpoint")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint", default=None)
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    a = p.parse_args(argv)
    if a.cmd == "train":
        return train_main(a.config, a.overrides)
    return eval_main(a.config, a.overrides, a.checkpoint)


if __name__ == "__main__":
    sys.exit(main())
