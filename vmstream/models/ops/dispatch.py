"""Backend selection for the scan and conv ops.

Contract (every backend honours it, tests hold each to `reference.py`):

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, initial_state=None,
                   return_last_state=False, reverse=False, backend=None)
        u, delta, z: [B, L, D] (last dim contiguous; any stride over L and B)
        A: [D, N]   B, C: [B, L, N]   D, delta_bias: [D]   initial_state: [B, D, N]
        -> out [B, L, D]  (and last_state [B, D, N] float32 if return_last_state)

    causal_conv1d(x, weight, bias=None, initial_tail=None, activation=None,
                  return_final_tail=False, reverse=False, backend=None)
        x: [B, L, D]  weight: [D, K]  initial_tail: [B, D, K-1]
        -> out [B, L, D]  (and final_tail [B, D, K-1] if return_final_tail)

`backend` is None (automatic), or one of "ref", "cpu", "cuda"; the environment
variable VMSTREAM_SCAN_BACKEND overrides the automatic choice.
"""
from __future__ import annotations

import os
from typing import Optional

from .reference import causal_conv1d_ref, selective_scan_ref

_BACKENDS = ("ref", "cpu", "cuda")


def available_backends() -> dict[str, str]:
    """Backend name -> "ok" or the reason it is unusable here."""
    return {"ref": "ok"}


def _choose(tensor, backend: Optional[str]) -> str:
    backend = backend or os.environ.get("VMSTREAM_SCAN_BACKEND") or None
    if backend is not None:
        if backend not in _BACKENDS:
            raise ValueError(f"unknown scan backend {backend!r}; expected one of {_BACKENDS}")
        return backend
    return "ref"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_last_state=False, reverse=False, backend=None):
    name = _choose(u, backend)
    if name == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  initial_state, return_last_state, reverse)
    raise NotImplementedError(f"scan backend {name!r} is not built yet")


def causal_conv1d(x, weight, bias=None, initial_tail=None, activation=None,
                  return_final_tail=False, reverse=False, backend=None):
    name = _choose(x, backend)
    if name == "ref":
        return causal_conv1d_ref(x, weight, bias, initial_tail, activation,
                                 return_final_tail, reverse)
    raise NotImplementedError(f"conv backend {name!r} is not built yet")
