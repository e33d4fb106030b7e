"""The pre-norm block's residual add and RMSNorm as one op (mamba-ssm's fused add+norm).

    add_rms_norm(hidden, residual, weight, eps, out_dtype=None, backend=None)
        -> (normed [..., C] in out_dtype (default float32), residual + hidden in float32)

`residual` None means the first block (the residual is `hidden` itself). On CPU without
gradients, with the C++ kernel available, it is one pass over the rows (`add_rms_norm` in
`csrc/scan_cpu.cpp`); elsewhere `reference.add_rms_norm_ref`, which tests hold the kernel to.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .dispatch import fused_cpu_ops
from .reference import add_rms_norm_ref


def add_rms_norm(
    hidden: Tensor,
    residual: Optional[Tensor],
    weight: Tensor,
    eps: float,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> tuple[Tensor, Tensor]:
    out_dtype = out_dtype or torch.float32
    ops = None
    if (
        hidden.device.type == "cpu"
        and hidden.dtype in (torch.float32, torch.bfloat16)
        and out_dtype in (torch.float32, torch.bfloat16)
        and (residual is None or residual.dtype == torch.float32)
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, residual, weight)))
    ):
        ops = fused_cpu_ops(hidden, backend)
    if ops is None:
        normed, res = add_rms_norm_ref(hidden, residual, weight, eps)
        return normed.to(out_dtype), res
    return ops.add_rms_norm(
        hidden.contiguous(),
        None if residual is None else residual.contiguous(),
        weight.detach().float().contiguous(),
        float(eps),
        out_dtype == torch.bfloat16,
    )
