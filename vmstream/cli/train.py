"""`vmstream train` and `vmstream eval`: recipes in configs/train/, overridden with --set."""

from __future__ import annotations

import argparse

from vmstream.cli.common import SET_HELP, add_set


def _add_overrides(p: argparse.ArgumentParser) -> None:
    add_set(p)
    # The older spelling, `KEY=VALUE` as bare words, still works; --set is the one shown.
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")


def add_parser(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train or fine-tune (configs/train/*.yaml)",
        description="Train or fine-tune with a recipe (configs/train/DATASET/*.yaml). "
        "Recipe keys are overridden with --set KEY=VALUE, e.g. "
        "--set data_path=/data/k400 --set epochs=5. " + SET_HELP.capitalize() + ".",
    )
    train.add_argument("--config", required=True, help="the recipe (YAML)")
    _add_overrides(train)
    train.set_defaults(handler=main_train)

    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on a data list (multi-view)",
        description="The multi-view test of a checkpoint on the recipe's test list. "
        "Recipe keys are overridden with --set KEY=VALUE.",
    )
    ev.add_argument("--config", required=True, help="the recipe (YAML)")
    ev.add_argument("--checkpoint", help="checkpoint file or registry name (default: the recipe's finetune)")
    _add_overrides(ev)
    ev.set_defaults(handler=main_eval)


def main_train(args) -> int:
    import threading

    from vmstream.pipeline.signals import StopSignals
    from vmstream.training import train_main

    stop = threading.Event()
    with StopSignals(stop.set, what="finishing this epoch (and saving its checkpoint, where the run saves one)"):
        return int(train_main(args.config, [*args.overrides, *args.sets], should_stop=stop.is_set) or 0)


def main_eval(args) -> int:
    from vmstream.training import eval_main

    return int(eval_main(args.config, [*args.overrides, *args.sets], checkpoint=args.checkpoint) or 0)
