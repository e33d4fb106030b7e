"""The Mamba mixer's own parameter initialisation (the official S4D-real A and dt_proj)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def s4d_real_log(d_inner: int, d_state: int, device) -> Tensor:
    """log(1..N) on every row: the S4D-real initialisation of A = -exp(A_log)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device)).repeat(d_inner, 1).contiguous()


def init_dt_proj(dt_proj: nn.Linear, dt_rank, dt_init, dt_scale, dt_min, dt_max, dt_init_floor) -> None:
    """The official dt_proj initialisation (weights by dt_init, bias so that softplus(bias)
    starts log-uniform in [dt_min, dt_max]); the bias is marked not to be re-initialised."""
    std = dt_rank**-0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(dt_proj.weight, std)
    elif dt_init == "random":
        nn.init.uniform_(dt_proj.weight, -std, std)
    else:
        raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
    # Bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], so that
    # softplus(bias) starts there.
    d = dt_proj.bias.shape[0]
    dt = torch.exp(
        torch.rand(d, device=dt_proj.bias.device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    ).clamp(min=dt_init_floor)
    with torch.no_grad():
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    dt_proj.bias._no_reinit = True
