"""The scan backends' names, where a config checks them without importing torch (the
kernels themselves: `vmstream.models.ops.dispatch`). `--help`, `--version` and a config
error answer before torch loads."""

from __future__ import annotations

from typing import Literal

SCAN_BACKENDS = ("ref", "cpu", "numba", "triton")

# A config's value: one of the backends, or "auto" (by the tensors' device).
ScanBackendSetting = Literal["auto", "ref", "cpu", "numba", "triton"]


def check_backend_name(name: str) -> None:
    """ValueError unless `name` is a scan backend; "cuda" (the mamba-ssm backend,
    removed) points at its successor."""
    if name in SCAN_BACKENDS:
        return
    if name == "cuda":
        raise ValueError(
            "scan backend 'cuda' was removed with vmstream's mamba-ssm backend: "
            "'triton' is the GPU backend (or leave the choice automatic)"
        )
    raise ValueError(f"unknown scan backend {name!r}; expected one of {SCAN_BACKENDS}")
