"""Optimizer parameter groups, layer-wise lr decay and the per-step cosine schedules.

Same semantics as the official fine-tuning code (`optim_factory.py`, `utils.py` of
OpenGVLab/VideoMamba `videomamba/video_sm`), written for our model:

* no weight decay for 1-D parameters, biases, the names the model lists in
  `no_weight_decay()` (a bare name such as ``A_log`` matches that attribute in every
  block) and parameters flagged ``_no_weight_decay`` (mamba's convention);
* layer-wise lr decay: parameter ``p`` gets ``lr * lr_scale``, with
  ``lr_scale = decay ** (num_layers + 1 - layer_id(p))``;
* the schedule is an array with one value per optimizer step (warmup, then cosine).

Layer ids ("depth" mode, the default): embeddings (``patch_embed``, ``cls_token``,
``pos_embed``, ``temporal_pos_embedding``) are layer 0, block ``layers.{i}`` is layer
i + 1, everything after the blocks (``norm_f``, ``head``) is layer depth + 1.

"official" mode reproduces the released fine-tuning scripts' groups exactly: their
``get_num_layer_for_vit`` has the ``layers.`` branch commented out, so only
``patch_embed``, ``cls_token`` and ``pos_embed`` are decayed (to layer 0) and every other
parameter, blocks included, keeps scale 1; and their no-decay test ignores mamba's
``_no_weight_decay`` flags (``A_log`` is decayed there). Same groups in the same order
means an optimizer state saved in this mode loads into the official optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

_EMBED_NAMES = ("cls_token", "pos_embed", "temporal_pos_embedding", "mask_token")
LAYER_DECAY_MODES = ("depth", "official")


def layer_id_depth(name: str, num_layers: int) -> int:
    """Layer id of a VideoMamba parameter by block depth (0 .. num_layers + 1)."""
    if name in _EMBED_NAMES or name.startswith("patch_embed"):
        return 0
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def layer_id_official(name: str, num_layers: int) -> int:
    """The official assigner's ids: only patch_embed / cls_token / pos_embed are layer 0."""
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    return num_layers + 1


def layer_scales(decay: float, num_layers: int) -> list[float]:
    """lr scale of layer id i, for i in 0 .. num_layers + 1 (the head keeps 1.0)."""
    return [decay ** (num_layers + 1 - i) for i in range(num_layers + 2)]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def _skips_decay(name: str, param: torch.Tensor, skip: set[str], flags: bool = True) -> bool:
    # The official test is `len(shape) == 1`: a 0-d parameter (the video-text `temp`) is
    # decayed there; "depth" mode (flags) spares it with the other scalars.
    if (param.ndim <= 1 if flags else param.ndim == 1) or name.endswith(".bias"):
        return True
    if name in skip or name.rsplit(".", 1)[-1] in skip:
        return True
    return flags and bool(getattr(param, "_no_weight_decay", False))


@dataclass
class GroupSpec:
    name: str
    weight_decay: float
    lr_scale: float
    layer_id: Optional[int]
    param_names: list[str]


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: Optional[float] = None,
    mode: str = "depth",
    skip_list: Optional[Iterable[str]] = None,
    num_layers: Optional[int] = None,
) -> tuple[list[dict], list[GroupSpec]]:
    """Optimizer param groups (``params``, ``weight_decay``, ``lr_scale``) and a
    readable description of each (names instead of tensors), in the official order
    (first appearance in ``named_parameters``).

    ``layer_decay`` None or >= 1 means no layer decay (every scale 1.0).
    """
    if mode not in LAYER_DECAY_MODES:
        raise ValueError(f"layer_decay_mode {mode!r}: expected one of {LAYER_DECAY_MODES}")
    skip = set(skip_list) if skip_list is not None else no_weight_decay_names(model)
    get_layer: Optional[Callable[[str], int]] = None
    scales: list[float] = []
    if layer_decay is not None and layer_decay < 1.0:
        if num_layers is None:
            fn = getattr(model, "get_num_layers", None)
            num_layers = fn() if callable(fn) else len(model.layers)
        fid = layer_id_depth if mode == "depth" else layer_id_official
        scales = layer_scales(layer_decay, num_layers)
        get_layer = lambda n: fid(n, num_layers)  # noqa: E731

    groups: dict[str, dict] = {}
    specs: dict[str, GroupSpec] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # "official" groups exactly as the released code does (it ignores mamba's
        # _no_weight_decay flags, so A_log / A_b_log are decayed there), so an optimizer
        # state saved here loads into the official code's optimizer.
        if _skips_decay(name, param, skip, flags=mode == "depth"):
            kind, wd = "no_decay", 0.0
        else:
            kind, wd = "decay", float(weight_decay)
        layer = get_layer(name) if get_layer is not None else None
        gname = kind if layer is None else f"layer_{layer}_{kind}"
        if gname not in groups:
            scale = scales[layer] if layer is not None else 1.0
            groups[gname] = {"params": [], "weight_decay": wd, "lr_scale": scale}
            specs[gname] = GroupSpec(gname, wd, scale, layer, [])
        groups[gname]["params"].append(param)
        specs[gname].param_names.append(name)
    return list(groups.values()), list(specs.values())


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layer_decay: Optional[float] = None,
    layer_decay_mode: str = "depth",
    opt: str = "adamw",
) -> tuple[torch.optim.Optimizer, list[GroupSpec]]:
    """AdamW over `parameter_groups`; each group's ``lr`` is ``lr * lr_scale`` until the
    schedule sets it per step."""
    if opt.lower() != "adamw":
        raise ValueError(f"optimizer {opt!r} is not supported; the recipes use 'adamw'")
    groups, specs = parameter_groups(model, weight_decay, layer_decay, layer_decay_mode)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    # foreach=False: the per-tensor loop gives the same numbers on every run and
    # thread count, which exact resume relies on; the cost is small on CPU.
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0, foreach=False)
    return optimizer, specs


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup_value: float = 0.0,
    warmup_steps: int = -1,
) -> np.ndarray:
    """One value per step: linear warmup from `start_warmup_value` to `base_value`, then
    a half cosine from `base_value` down to `final_value` over the remaining steps."""
    total = int(epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch) if warmup_steps <= 0 else int(warmup_steps)
    warmup = min(warmup, total)
    head = np.linspace(start_warmup_value, base_value, warmup) if warmup > 0 else np.array([])
    n = total - warmup
    i = np.arange(n)
    tail = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * i / max(n, 1)))
    out = np.concatenate([head, tail]).astype(np.float64)
    assert len(out) == total
    return out


def apply_schedule(
    optimizer: torch.optim.Optimizer, step: int, lr_values: Optional[np.ndarray], wd_values: Optional[np.ndarray]
) -> None:
    """Set every group's lr (times its lr_scale) and, for decayed groups, weight decay."""
    for g in optimizer.param_groups:
        if lr_values is not None:
            g["lr"] = float(lr_values[step]) * g.get("lr_scale", 1.0)
        if wd_values is not None and g["weight_decay"] > 0:
            g["weight_decay"] = float(wd_values[step])


def scaled_lr(
    lr: float, batch_size: int, world_size: int = 1, update_freq: int = 1, num_sample: int = 1, divisor: float = 256.0
) -> float:
    """The official linear scaling: lr * (total batch * repeated samples) / divisor."""
    return lr * batch_size * world_size * update_freq * num_sample / divisor


def official_mm_cosine(lr: float, min_lr_multi: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """One lr per step as the multimodal code's ``get_cosine_schedule_with_warmup``
    (``video_mm/utils/scheduler.py``): lr * max(min_lr_multi, step / warmup) during warmup,
    then lr * max(min_lr_multi, half cosine from 1 to 0) (clamped, not shifted)."""
    out = np.empty(total_steps, dtype=np.float64)
    for s in range(total_steps):
        if s < warmup_steps:
            f = max(min_lr_multi, s / max(1, warmup_steps))
        else:
            progress = (s - warmup_steps) / max(1, total_steps - warmup_steps)
            f = max(min_lr_multi, 0.5 * (1.0 + math.cos(math.pi * progress)))
        out[s] = lr * f
    return out
