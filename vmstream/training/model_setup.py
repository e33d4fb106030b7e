"""What every training run sets up first: seeds, threads, the device and the model a
recipe names (`fit`, `eval_main` and the synthetic memory task all start here)."""

from __future__ import annotations

import logging
import random
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from vmstream.config_loader import ConfigError
from vmstream.models.device import resolve_device

from .recipes import TrainConfig

log = logging.getLogger("vmstream.training")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def apply_threads(cfg: TrainConfig) -> None:
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))


def recipe_device(cfg: TrainConfig) -> torch.device:
    """The recipe's `device` as a torch device; one torch cannot use is a ConfigError
    naming the key."""
    try:
        return resolve_device(cfg.device)
    except ValueError as e:
        raise ConfigError(f"device: {e}") from None


def scan_backend(cfg: TrainConfig) -> Optional[str]:
    """The backend the recipe's `scan_backend` names for the model (None for "auto")."""
    return None if cfg.scan_backend == "auto" else cfg.scan_backend


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    frames = cfg.streaming.segment_frames if cfg.task in ("streaming", "synthetic_memory") else cfg.num_frames
    kw = dict(
        img_size=cfg.input_size,
        num_classes=cfg.nb_classes,
        num_frames=frames,
        drop_path_rate=cfg.drop_path,
        fc_drop_rate=cfg.fc_drop_rate,
        kernel_size=cfg.tubelet_size,
        scan_backend=scan_backend(cfg),
    )
    kw.update(cfg.model_args)
    return kw


def build_model(cfg: TrainConfig) -> nn.Module:
    """The project's VideoMamba for this recipe: a registry size (`cfg.model`) with the
    recipe's overrides (`model_args`), then `finetune` weights if named."""
    from vmstream import models

    kw = model_kwargs(cfg)
    create = getattr(models, "create_model", None)
    if create is not None:
        model = create(cfg.model, **kw)
    else:
        factory = getattr(models, cfg.model, None)
        if not callable(factory):
            raise ConfigError(f"model {cfg.model!r} is not in vmstream.models")
        model = factory(**kw)
    if cfg.finetune:
        # a path, or an official checkpoint name from the model registry (downloaded)
        path = models.resolve_checkpoint(cfg.finetune)
        report = models.load_checkpoint(model, path, reset_head=cfg.delete_head)
        log.info("initialised from %s: %s", path, report)
    return model
