"""Training checkpoints: the official layout, plus what exact resume needs.

File names and top-level keys are those of the official fine-tuning
(``checkpoint-latest.pth``, ``checkpoint-best.pth``, ``checkpoint-{epoch}.pth`` holding
``{"model", "optimizer", "epoch", "scaler", "args"}`` with ``args`` an
``argparse.Namespace``), so the official code resumes from ours and the project's
model loader reads them. Our own extras ride beside them under keys the official code
ignores: ``rng`` (torch, numpy, python ``random`` states, CUDA if present), ``step``
(optimizer steps done), ``best`` (best validation metric), ``vmstream`` (version,
config). Everything is stored as tensors / plain Python values so resuming loads with
``weights_only=True`` (only ``argparse.Namespace`` is allowed beyond the defaults).
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
from typing import Any, Optional

import numpy as np
import torch

import vmstream
from vmstream.models.archive_check import check_archive

_SCALER_DEFAULT = {
    "scale": 65536.0,
    "growth_factor": 2.0,
    "backoff_factor": 0.5,
    "growth_interval": 2000,
    "_growth_tracker": 0,
}


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state_to_plain(s):
    version, internal, gauss = s
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_namespace(config) -> argparse.Namespace:
    """The run's settings as the flat `argparse.Namespace` official checkpoints carry."""
    d = config.model_dump() if hasattr(config, "model_dump") else dict(config)
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, (int, float, str, bool, type(None))):
                    flat[f"{k}_{k2}"] = v2
        elif isinstance(v, (int, float, str, bool, type(None))):
            flat[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v):
            flat[k] = list(v)
    flat.setdefault("nb_classes", d.get("nb_classes"))
    return argparse.Namespace(**flat)


def save_checkpoint(
    path: str,
    *,
    model,
    optimizer,
    epoch: int,
    step: int,
    config=None,
    scaler=None,
    best: Optional[float] = None,
    extra: Optional[dict] = None,
    model_state: Optional[dict] = None,
) -> str:
    """Write atomically (temp file + rename): a crash never leaves a half checkpoint.
    `model_state` replaces the model's state dict (e.g. written in another key layout)."""
    raw = model.module if hasattr(model, "module") else model
    scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else dict(_SCALER_DEFAULT)
    obj = {
        "model": raw.state_dict() if model_state is None else model_state,
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "scaler": scaler_state,
        "args": config_namespace(config) if config is not None else argparse.Namespace(),
        "step": int(step),
        "best": best,
        "rng": rng_state(),
        "vmstream": {
            "version": vmstream.__version__,
            "config": config.model_dump() if hasattr(config, "model_dump") else {},
        },
    }
    if extra:
        obj.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint_file(path: str) -> dict:
    """Load a training checkpoint safely (no arbitrary pickles)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            check_archive(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle refusing a global, or a corrupt file
            raise ValueError(f"checkpoint {path!r} cannot be loaded safely: {e}") from None


def stop_line(what: str, out_dir: Optional[str], saving: bool) -> str:
    """What a run stopped before its end tells the user (`what`: "epoch 3", "the masked
    stage"): where its checkpoint is and that the same command resumes, or, where the run
    saves nothing (no output_dir, save_ckpt off), that a rerun starts over."""
    if out_dir and saving:
        return f"stopped after {what} (its checkpoint is in {out_dir}; the same command resumes)"
    return (
        f"stopped after {what} (no checkpoint is saved: save_ckpt is off or output_dir unset, so the same "
        f"command starts over)"
    )


def find_resume(output_dir: str) -> Optional[str]:
    """The official auto-resume order: latest, then best, then the highest numbered."""
    if not output_dir:
        return None
    for name in ("checkpoint-latest.pth", "checkpoint-best.pth"):
        p = os.path.join(output_dir, name)
        if os.path.exists(p):
            return p
    numbered = []
    for p in glob.glob(os.path.join(output_dir, "checkpoint-*.pth")):
        m = re.fullmatch(r"checkpoint-(\d+)\.pth", os.path.basename(p))
        if m:
            numbered.append((int(m.group(1)), p))
    return max(numbered)[1] if numbered else None


def resume(path: str, *, model, optimizer=None, scaler=None, restore_rng: bool = True) -> dict:
    """Restore model (+ optimizer, scaler, RNG) from `path`; returns the checkpoint dict
    (``epoch``, ``step``, ``best`` ...). Training continues at epoch + 1."""
    ck = load_checkpoint_file(path)
    raw = model.module if hasattr(model, "module") else model
    raw.load_state_dict(ck["model"])
    if optimizer is not None and "optimizer" in ck:
        optimizer.load_state_dict(ck["optimizer"])
    if scaler is not None and scaler.is_enabled() and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    if restore_rng and "rng" in ck:
        set_rng_state(ck["rng"])
    return ck
