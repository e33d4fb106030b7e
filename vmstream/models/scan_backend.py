"""Which ops backend a built model's mixers run on (`ops.dispatch`): held by each Mamba
mixer as its `scan_backend` and passed to every scan, conv and fused op it calls, so two
models in one process each keep their own.

A new model takes `scan_backend=` in its constructor (and the loaders pass theirs on);
`set_scan_backend` is the way to change a built or loaded one, as `set_precision` is for
its precision.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from .ops.dispatch import check_backend
from .videomamba import Mamba

__all__ = ["set_scan_backend", "scan_backend_of"]


def set_scan_backend(model: nn.Module, name: Optional[str]) -> nn.Module:
    """Every VideoMamba mixer in `model` on backend `name` ("ref", "cpu", "numba",
    "triton"; None: chosen by the tensors' device); in place, returns it. An
    unknown name is a ValueError (whether it can run on the model's device is found at
    its first scan, or beforehand with `ops.dispatch.check_backend(name, device)`)."""
    check_backend(name)
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    if not mixers:
        raise ValueError(f"{type(model).__name__} has no VideoMamba layers to set to scan backend {name!r}")
    for m in mixers:
        m.scan_backend = name
    return model


def scan_backend_of(model: nn.Module) -> Optional[str]:
    """The scan backend of `model`'s mixers (None: automatic, or no mixers)."""
    for m in model.modules():
        if isinstance(m, Mamba):
            return m.scan_backend
    return None
