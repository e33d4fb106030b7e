"""Loading official (and our own) VideoMamba checkpoints, safely and strictly.

* Safe: `torch.load(weights_only=True)` with only `argparse.Namespace` (the official
  fine-tuning checkpoints keep their `args` in it) and numpy scalars allowed; a pickle that
  would construct anything else, i.e. could run code, is refused with a CheckpointError.
* Layouts: a raw state dict, or one nested under `model`, `module` or `state_dict`; key
  prefixes `module.` / `backbone.` / `encoder.` are stripped.
* Adaptation, each step logged and returned in `LoadReport.notes`: temporal positions
  resampled (linear) and spatial positions resampled (bicubic, cls kept) when the
  checkpoint's frame count / image size differ, read from the tensors themselves; the
  ImageNet image checkpoints' 2-D patch conv inflated to 3-D (centre frame, as the official
  fine-tuning does) with temporal positions left at zero; the masked-pretraining
  checkpoints' CLIP decoder (and the self-distilled ImageNet models' distill head) dropped,
  and their final `norm` used as `norm_f`.
* Anything else missing, unexpected or mis-shaped is an error listing the keys; a head for
  a different number of classes (or none) needs `reset_head=True`.
* Weights must be finite: a NaN or Inf anywhere (a diverged training run, a damaged file)
  would make every output NaN, so it is refused at load, naming the tensors.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .archive_check import DamagedArchive, check_archive
from .hub import file_digest, resolve_checkpoint
from .registry import CHECKPOINTS, class_names, get_checkpoint, size_name
from .videomamba import VideoMamba, resample_temporal_pos

log = logging.getLogger(__name__)

_NESTED_KEYS = ("model", "module", "state_dict")
_PREFIXES = ("module.", "backbone.", "encoder.")
# Auxiliary heads of official training-time models that the classifier does not have.
_AUX_PREFIXES = {
    "clip_decoder.": "the masked-pretraining CLIP decoder",
    "clip_pos_embed": "the masked-pretraining CLIP position table",
    "distill_head.": "the self-distillation head",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message says why."""


@dataclass
class LoadReport:
    source: str
    digest: str
    notes: list[str] = field(default_factory=list)
    args: Optional[argparse.Namespace] = None  # official fine-tuning `args`, when present


# ------------------------------------------------------------------------ reading


def _safe_globals() -> list:
    allowed: list = [argparse.Namespace, np.dtype]
    # Official checkpoints may carry numpy scalars in their metadata (e.g. accuracies).
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return allowed


def read_checkpoint(source: Union[str, os.PathLike, Mapping]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict with prefixes stripped, metadata) from a file or an already-loaded object."""
    meta: dict[str, Any] = {}
    if isinstance(source, Mapping):
        obj = source
    else:
        path = Path(source)
        try:
            check_archive(path)
            obj = _load_file(path, meta)
        except DamagedArchive as e:
            raise CheckpointError(str(e)) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("args"), argparse.Namespace):
        meta["args"] = obj["args"]
    if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping):
        meta["config"] = obj["config"]  # the official multimodal training config (an EasyDict)
    sd = _find_state_dict(obj, meta)
    return _strip_prefixes(sd), meta


def _load_file(path: Path, meta: dict):
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {text}") from None
        return _load_with_inert_classes(path, meta)
    except Exception as e:  # a corrupt file fails in many ways inside the unpickler
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


class InertObject:
    """What a pickled class outside the allow-list becomes: never imported, never run.

    Creating one gives a plain `OrderedDict` (one of the few types torch's safe unpickler
    lets a pickle fill), so the official `EasyDict` config keeps its items readable and any
    other object's pickled attributes end up as inert data in that dict's `__dict__`."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _load_with_inert_classes(path: Path, meta: dict):
    """Load a file whose metadata pickles classes other than the allowed ones: each such
    *class* (a CamelCase name) is mapped to `InertObject` under its own name, so nothing is
    imported and no code runs. A pickled *function* (os.system, eval, ...) is refused:
    no honest checkpoint pickles a call, and a class name cannot run code once inert."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    functions = [n for n in names if not n.rsplit(".", 1)[-1][:1].isupper()]
    if functions:
        raise CheckpointError(
            f"refused to load {path}: it contains pickled objects other than tensors, containers and "
            f"argparse.Namespace, which could run code when unpickled (GLOBAL {', '.join(functions)}). "
            "If you trust the file, load it yourself and pass its state dict (or re-save it with "
            "torch.save(state_dict))."
        )
    stand_ins = [(InertObject, name) for name in names]
    with torch.serialization.safe_globals(_safe_globals() + stand_ins):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    meta["inert_classes"] = list(names)
    log.info("%s: read pickled class(es) %s as inert data (not imported)", path, ", ".join(names))
    return obj


def _find_state_dict(obj: Any, meta: dict) -> Mapping:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and any(isinstance(v, Tensor) for v in inner.values()):
            meta["nested_key"] = key
            return inner
    raise CheckpointError(
        f"no state dict in checkpoint: top-level keys are {sorted(map(str, obj))[:20]}; "
        f"expected tensors, or a dict under one of {list(_NESTED_KEYS)}"
    )


def _strip_prefixes(sd: Mapping) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    bad = []
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            bad.append(key)
            continue
        k = key
        while k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = value
    if bad:
        raise CheckpointError(f"state dict entries that are not tensors: {bad[:20]}")
    return out


def _drop_aux(sd: dict[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    """Remove official training-only heads; use a pretraining model's `norm` as `norm_f`."""
    for prefix, what in _AUX_PREFIXES.items():
        keys = [k for k in sd if k.startswith(prefix)]
        if keys:
            for k in keys:
                del sd[k]
            notes.append(f"dropped {len(keys)} key(s) of {what} ({prefix}*)")
    if "norm_f.weight" not in sd and "norm.weight" in sd:
        for p in ("weight", "bias"):
            if f"norm.{p}" in sd:
                sd[f"norm_f.{p}"] = sd.pop(f"norm.{p}")
        notes.append("used the pretraining model's final 'norm' as 'norm_f'")
    return sd


def check_finite(sd: Mapping[str, Tensor], label: str) -> None:
    """Refuse weights with NaN or Inf, naming the first tensors that have them."""
    bad: list[str] = []
    for key, t in sd.items():
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        finite = torch.isfinite(t)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(t).sum())
        bad.append(f"{key} ({nan} NaN, {int((~finite).sum()) - nan} Inf of {t.numel()})")
    if bad:
        shown = ", ".join(bad[:5]) + (f" ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"checkpoint {label} has non-finite weights (NaN or Inf) in {len(bad)} "
            f"tensor(s): {shown}; it cannot give meaningful outputs"
        )


# ---------------------------------------------------------------- architecture


def infer_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """VideoMamba constructor arguments read from a state dict's shapes.

    `num_frames` is absent for image (ImageNet) checkpoints, which have no temporal positions.
    """
    sd = _drop_aux(dict(sd), [])
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.dim() not in (4, 5) or "pos_embed" not in sd:
        raise CheckpointError(
            f"not a VideoMamba checkpoint: it lacks patch_embed.proj.weight or pos_embed (first keys: {list(sd)[:8]})"
        )
    # Every size below is read from these shapes; a zero anywhere would divide by it.
    for key, dims in (
        ("patch_embed.proj.weight", (4, 5)),
        ("pos_embed", (3,)),
        ("layers.0.mixer.A_log", (2,)),
        ("layers.0.mixer.conv1d.weight", (2, 3)),
        ("layers.0.mixer.dt_proj.weight", (2,)),
        ("temporal_pos_embedding", (3,)),
        ("head.weight", (2,)),
    ):
        t = sd.get(key)
        if t is not None and (t.dim() not in dims or 0 in t.shape):
            raise CheckpointError(
                f"not a usable VideoMamba checkpoint: {key} has shape {tuple(t.shape)} "
                f"(expected {' or '.join(map(str, dims))} non-zero dimensions)"
            )
    embed_dim, channels, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    kernel_size = int(w.shape[2]) if w.dim() == 5 else 1
    layer_ids = {int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.split(".")[1].isdigit()}
    depth = len(layer_ids)
    if depth == 0 or layer_ids != set(range(depth)):
        raise CheckpointError(f"checkpoint layers are not numbered 0..N-1: {sorted(layer_ids)[:10]}...")
    n_patches = int(sd["pos_embed"].shape[1]) - 1
    side = math.isqrt(max(n_patches, 0))
    if n_patches < 1 or side * side != n_patches:
        raise CheckpointError(f"pos_embed has {n_patches} patch positions, not a square grid")
    cfg: dict[str, Any] = {
        "img_size": side * patch,
        "patch_size": patch,
        "depth": depth,
        "embed_dim": embed_dim,
        "channels": channels,
        "num_classes": int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0,
        "kernel_size": kernel_size,
        "bimamba": "layers.0.mixer.A_b_log" in sd,
        "rms_norm": "layers.0.norm.bias" not in sd,
    }
    if "temporal_pos_embedding" in sd:
        cfg["num_frames"] = int(sd["temporal_pos_embedding"].shape[1]) * kernel_size
    A = sd.get("layers.0.mixer.A_log")
    if A is None:
        raise CheckpointError("not a VideoMamba checkpoint: no layers.0.mixer.A_log")
    d_inner, d_state = int(A.shape[0]), int(A.shape[1])
    if d_inner % embed_dim:
        raise CheckpointError(f"d_inner {d_inner} is not a multiple of embed_dim {embed_dim}")
    ssm: dict[str, Any] = {}
    defaults = {
        "d_state": 16,
        "d_conv": 4,
        "expand": 2,
        "dt_rank": math.ceil(embed_dim / 16),
        "conv_bias": True,
        "bias": False,
    }
    found = {
        "d_state": d_state,
        "d_conv": int(sd["layers.0.mixer.conv1d.weight"].shape[-1]),
        "expand": d_inner // embed_dim,
        "dt_rank": int(sd["layers.0.mixer.dt_proj.weight"].shape[1]),
        "conv_bias": "layers.0.mixer.conv1d.bias" in sd,
        "bias": "layers.0.mixer.in_proj.bias" in sd,
    }
    for k, v in found.items():
        if v != defaults[k]:
            ssm[k] = v
    if ssm:
        cfg["ssm_cfg"] = ssm
    return cfg


# ---------------------------------------------------------------- adaptation


def resample_pos_embed(pos: Tensor, num_patches: int) -> Tensor:
    """Spatial positions [1, 1 + s0*s0, D] -> [1, 1 + num_patches, D], bicubic on the
    square grid (align_corners=False), the cls position kept as is."""
    n0 = pos.shape[1] - 1
    s0, s1 = math.isqrt(n0), math.isqrt(num_patches)
    if s0 * s0 != n0 or s1 * s1 != num_patches:
        raise CheckpointError(f"cannot resample pos_embed from {n0} to {num_patches} patches: not square grids")
    if n0 == num_patches:
        return pos
    D = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, s0, s0, D).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(s1, s1), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, s1 * s1, D).to(pos.dtype)
    return torch.cat([pos[:, :1], grid], dim=1)


def inflate_patch_weight(weight_2d: Tensor, time_dim: int) -> Tensor:
    """[D, C, p, p] -> [D, C, time_dim, p, p] with the weights at the centre frame and zeros
    elsewhere (the official `inflate_weight(center=True)`)."""
    w = weight_2d.new_zeros(*weight_2d.shape[:2], time_dim, *weight_2d.shape[2:])
    w[:, :, time_dim // 2] = weight_2d
    return w


def adapt_state_dict(
    sd: Mapping[str, Tensor], model: VideoMamba, reset_head: bool = False
) -> tuple[dict[str, Tensor], list[str]]:
    """Fit a checkpoint's state dict to `model` (see the module docstring). Returns the
    adapted dict and the notes saying what was changed; raises CheckpointError otherwise."""
    sd = dict(sd)
    notes: list[str] = []
    target = model.state_dict()
    sd = _drop_aux(sd, notes)

    w = sd.get("patch_embed.proj.weight")
    image_checkpoint = w is not None and w.dim() == 4
    if image_checkpoint and target["patch_embed.proj.weight"].dim() == 5:
        t = target["patch_embed.proj.weight"].shape[2]
        sd["patch_embed.proj.weight"] = inflate_patch_weight(w, t)
        notes.append(f"inflated the image patch conv {tuple(w.shape)} to 3-D (centre of {t} frame(s))")
    if image_checkpoint and "temporal_pos_embedding" not in sd:
        sd["temporal_pos_embedding"] = torch.zeros_like(target["temporal_pos_embedding"])
        notes.append("image checkpoint: temporal_pos_embedding starts at zero (as in the official fine-tuning)")

    if (
        "pos_embed" in sd
        and sd["pos_embed"].shape != target["pos_embed"].shape
        and sd["pos_embed"].shape[-1] == target["pos_embed"].shape[-1]
    ):
        n0, n1 = sd["pos_embed"].shape[1] - 1, target["pos_embed"].shape[1] - 1
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], n1)
        s0, s1 = math.isqrt(n0), math.isqrt(n1)
        notes.append(f"resampled pos_embed {s0}x{s0} -> {s1}x{s1} patches (bicubic, cls kept)")
    tp = sd.get("temporal_pos_embedding")
    if (
        tp is not None
        and tp.dim() == 3
        and tp.shape != target["temporal_pos_embedding"].shape
        and tp.shape[-1] == target["temporal_pos_embedding"].shape[-1]
    ):
        t1 = target["temporal_pos_embedding"].shape[1]
        sd["temporal_pos_embedding"] = resample_temporal_pos(tp.float(), t1).to(tp.dtype)
        notes.append(f"resampled temporal_pos_embedding {tp.shape[1]} -> {t1} positions (linear)")

    sd = _fit_head(sd, target, reset_head, notes)

    check_fit(sd, target, "the model")
    return sd, notes


def check_fit(sd: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str) -> None:
    """A CheckpointError listing the keys missing, unexpected or mis-shaped in `sd`
    against the model's `target` state dict (the first 20 of each)."""
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in sd and sd[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if keys:
                more = f" ... and {len(keys) - 20} more" if len(keys) > 20 else ""
                parts.append(f"{title} ({len(keys)}): " + ", ".join(keys[:20]) + more)
        raise CheckpointError(f"checkpoint does not fit {what}:\n  " + "\n  ".join(parts))


def _fit_head(sd: dict, target: Mapping, reset_head: bool, notes: list[str]) -> dict:
    ck_head = {k: v for k, v in sd.items() if k.startswith("head.")}
    model_head = {k: v for k, v in target.items() if k.startswith("head.")}
    same = ck_head.keys() == model_head.keys() and all(ck_head[k].shape == model_head[k].shape for k in ck_head)
    if same:
        return sd
    ck_n = int(ck_head["head.weight"].shape[0]) if "head.weight" in ck_head else 0
    model_n = int(model_head["head.weight"].shape[0]) if "head.weight" in model_head else 0
    if not reset_head and ck_n == model_n:  # same classes: the head's width or its keys differ
        raise CheckpointError(
            f"the checkpoint's head does not fit the model's, though both have {ck_n or 'no'} "
            f"classes: {_head_difference(ck_head, model_head)}"
        )
    if not reset_head:
        raise CheckpointError(
            f"the checkpoint's head has {ck_n or 'no'} classes but the model's has {model_n or 'no'} "
            "(num_classes); pass reset_head=True to keep the model's own freshly initialised head "
            "(fine-tuning on other classes, or num_classes=0 for features only)"
        )
    for k in ck_head:
        del sd[k]
    for k, v in model_head.items():
        sd[k] = v
    notes.append(f"reset the head: checkpoint {ck_n or 'none'} classes -> model {model_n or 'none'}")
    return sd


def _head_difference(ck_head: Mapping, model_head: Mapping) -> str:
    ck_w, model_w = ck_head.get("head.weight"), model_head.get("head.weight")
    if ck_w is not None and model_w is not None and ck_w.shape[1:] != model_w.shape[1:]:
        return (
            f"its input width is {ck_w.shape[1]} (the checkpoint's embed_dim) and the model's is "
            f"{model_w.shape[1]}: the checkpoint is of another model size"
        )
    shape = lambda head, k: tuple(head[k].shape) if k in head else "absent"  # noqa: E731
    return "; ".join(
        f"{k}: checkpoint {shape(ck_head, k)} vs model {shape(model_head, k)}"
        for k in sorted(ck_head.keys() | model_head.keys())
        if k not in ck_head or k not in model_head or ck_head[k].shape != model_head[k].shape
    )


# ------------------------------------------------------------------- public API


def open_checkpoint(source: Union[str, os.PathLike, Mapping]) -> tuple[dict, dict, str, str]:
    """(state dict, metadata, label, sha256) of a file path, registry name or loaded
    object (label "<state dict>" and no digest for the last)."""
    if isinstance(source, Mapping):
        sd, meta = read_checkpoint(source)
        return sd, meta, "<state dict>", ""
    path = resolve_checkpoint(source)
    sd, meta = read_checkpoint(path)
    return sd, meta, str(path), file_digest(path)


def load_checkpoint(
    model: VideoMamba, source: Union[str, os.PathLike, Mapping], reset_head: bool = False
) -> LoadReport:
    """Load a checkpoint (file path, registry name or loaded object) into `model`, strictly."""
    sd, meta, label, digest = open_checkpoint(source)
    adapted, notes = adapt_state_dict(sd, model, reset_head=reset_head)
    check_finite(adapted, label)
    model.load_state_dict(adapted, strict=True)
    for note in notes:
        log.info("%s: %s", label, note)
    model.card = model.card.replace(checkpoint=label, checkpoint_digest=digest)
    return LoadReport(source=label, digest=digest, notes=notes, args=meta.get("args"))


def load_model(
    path_or_name: Union[str, os.PathLike],
    *,
    reset_head: bool = False,
    class_list: Optional[str] = None,
    cache_dir=None,
    local_files_only: Optional[bool] = None,
    **overrides,
) -> VideoMamba:
    """A VideoMamba built from a checkpoint's shapes and loaded with its weights, in eval mode.

    `path_or_name`: a file, or a registry name (downloaded through the HF hub cache).
    `overrides`: constructor arguments that differ from the checkpoint, e.g. `num_frames=32`
    (temporal positions resampled) or `num_classes=10, reset_head=True`.
    `class_list`: "k400", "ssv2", ... for label names; default from the registry entry.
    """
    path = resolve_checkpoint(path_or_name, cache_dir=cache_dir, local_files_only=local_files_only)
    sd, _ = read_checkpoint(path)
    return classifier_from_state_dict(path_or_name, path, sd, reset_head=reset_head, class_list=class_list, **overrides)


def classifier_from_state_dict(
    path_or_name,
    path: Path,
    sd: dict[str, Tensor],
    *,
    reset_head: bool = False,
    class_list: Optional[str] = None,
    **overrides,
) -> VideoMamba:
    """`load_model`'s second half, for a state dict already read from `path`."""
    info = registry_entry(path_or_name, path)
    cfg = infer_config(sd)
    cfg.setdefault("num_frames", 8)  # image checkpoints: the official video default
    cfg.update(overrides)
    model = VideoMamba(**cfg)
    adapted, notes = adapt_state_dict(sd, model, reset_head=reset_head)
    check_finite(adapted, str(path))
    model.load_state_dict(adapted, strict=True)
    digest = file_digest(path)
    for note in notes:
        log.info("%s: %s", path.name, note)
    if class_list is None and info is not None and info.class_list and cfg["num_classes"] == info.num_classes:
        class_list = info.class_list
    names = class_names(class_list) if class_list else None
    if names is not None and len(names) != cfg["num_classes"]:
        raise CheckpointError(
            f"class list {class_list!r} has {len(names)} names but the model has {cfg['num_classes']} classes"
        )
    model.card = model.card.replace(
        architecture=info.size if info else size_name(model.card.embed_dim, model.card.depth),
        name=info.name if info else path.stem,
        checkpoint=str(path),
        checkpoint_digest=digest,
        class_names=names,
        class_list=class_list,
        load_notes=notes,
    )
    return model.eval()


def registry_entry(path_or_name, path: Path):
    raw = os.fspath(path_or_name)
    for key in (raw, Path(raw).name, path.name):
        key = key[:-4] if key.endswith(".pth") else key
        if key in CHECKPOINTS:
            return get_checkpoint(key)
    return None
