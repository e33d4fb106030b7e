"""Which torch device a configured name means: one rule for the pipeline and training."""

from __future__ import annotations

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when torch sees a GPU, else the CPU; "cpu", "cuda", "cuda:1" as
    named. Asking for CUDA that torch does not see is a ValueError now, not a failure
    at the first tensor moved."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {name!r} is not a device name; use one of {', '.join(DEVICE_NAMES)} (or cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device (see `vmstream info`)")
    return device
