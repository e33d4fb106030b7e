"""Offline training: datasets, samplers, augmentation, recipes, engine.

Entry points (what `vmstream train` / `vmstream eval` call):

    train_main(config_path, overrides) -> exit code
    eval_main(config_path, overrides, checkpoint=None) -> exit code

Modules: `annotations` (official list formats, LVU trimming), `datasets` (TSN sampling,
multi-view test views, repeated augmentation, corrupt-video skipping), `augment`
(clip-consistent crops, flip, RandAugment, erasing), `mixup`, `recipes` (YAML ->
TrainConfig), `optim` (param groups, layer decay, cosine schedules), `engine` (epochs,
evaluation), `checkpoint` (official layout, exact resume), `distributed` (torchrun),
`streaming` (TBPTT through the carried state), `synthetic` (the long-range memory task),
`model_setup` (seeds, threads, device, the recipe's model), `trainer` (whole runs), `epochs` (the resume / save / stop skeleton the three training loops share).
Recipes are read with `vmstream.config_loader`, as the pipeline's presets are.
"""

from __future__ import annotations


def train_main(config_path, overrides=(), should_stop=None) -> int:
    if not _recipe_ok(config_path, overrides, "train"):
        return 2
    from .trainer import train_main as _main

    return _main(config_path, overrides, should_stop=should_stop)


def eval_main(config_path, overrides=(), checkpoint=None) -> int:
    if not _recipe_ok(config_path, overrides, "eval"):
        return 2
    from .trainer import eval_main as _main

    return _main(config_path, overrides, checkpoint)


def _recipe_ok(config_path, overrides, command: str) -> bool:
    """Read the recipe before torch is imported, so a typo in it is one line at once rather
    than after the ~10 s the training modules take to import."""
    import sys

    from vmstream.config_loader import ConfigError

    from .recipes import load_recipe

    try:
        load_recipe(config_path, overrides)
    except ConfigError as e:
        print(f"vmstream {command}: {e}", file=sys.stderr)
        return False
    return True


__all__ = ["train_main", "eval_main"]
