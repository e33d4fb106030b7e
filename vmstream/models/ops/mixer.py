"""A Mamba layer's inner part, between in_proj and out_proj, as one op.

    mamba_inner(xz, directions, initial_tail=None, initial_state=None,
                return_state=False, out_dtype=None, backend=None)
        xz: [B, L, 2D], in_proj's output (x, then z); float32 or bfloat16
        directions: one or two `MixerDirection`s; the second scans from the last token
            (the bidirectional block's backward direction), from a zero state
        initial_tail [B, D, K-1], initial_state [B, D, N]: the first direction's carried state
        -> y [B, L, D] in `out_dtype` (default float32): the sum over directions of
           selective_scan(silu(conv(x)), dt_proj(x_proj(.)[:R]), A, B, C, D, z,
           delta_bias, softplus), and with `return_state` the first direction's
           (final conv tail, last scan state).

On CPU without gradients, with the fused C++ kernel available, it runs as one kernel
(`mixer_fwd` in `csrc/scan_cpu.cpp`) that walks the sequence in chunks of `CHUNK` tokens
whose intermediates stay in cache, one direction per thread; everywhere else it is the
composition of the dispatched ops (`selective_scan`, `causal_conv1d`) and `F.linear`,
which is also what autograd differentiates. The readable oracle is
`reference.mamba_inner_ref`; tests hold both paths to it.

`out_dtype=torch.bfloat16` on the fused kernel is the bf16 mode (`models.precision`):
x_proj and dt_proj on bf16-rounded operands with float32 sums (AMX tiles where the CPU
has them), the decay, SiLUs and softplus with a degree-3 exponential
(`reference.exp_bf16_mode_ref` and its siblings), the float32 sum rounded once;
`mamba_inner_ref(..., bf16=True)` is its oracle. A bfloat16
xz is widened exactly. The composed path keeps float32 math in every precision and
rounds y at the end.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_ext
from .dispatch import causal_conv1d, fused_cpu_ops, selective_scan

# Tokens per chunk of the fused kernel: 128 tokens of Ti's d_inner=384 are 192 KB per
# fp32 intermediate (128 * 384 * 4 bytes), so a chunk's intermediates stay in a core's L2.
CHUNK = 128


class MixerDirection(NamedTuple):
    """One scan direction's parameters (the official names in brackets)."""

    conv_weight: Tensor  # [D, K] (conv1d.weight [D, 1, K] viewed)
    conv_bias: Optional[Tensor]  # [D] (conv1d.bias)
    x_proj_weight: Tensor  # [R + 2N, D] (x_proj.weight)
    dt_proj_weight: Tensor  # [D, R] (dt_proj.weight)
    dt_bias: Tensor  # [D] (dt_proj.bias, the scan's delta_bias)
    A: Tensor  # [D, N] (-exp(A_log))
    D: Tensor  # [D]


def _check(xz: Tensor, directions: Sequence[MixerDirection]) -> None:
    if xz.dim() != 3 or xz.shape[-1] % 2:
        raise ValueError(f"mamba_inner: xz must be [B, L, 2D], got shape {list(xz.shape)}")
    if xz.shape[1] == 0:
        raise ValueError("mamba_inner: xz has no tokens (L == 0)")
    if len(directions) not in (1, 2):
        raise ValueError(f"mamba_inner: one or two directions, got {len(directions)}")


def _fused_ok(xz: Tensor, directions, initial_tail, initial_state, backend) -> bool:
    if xz.device.type != "cpu" or xz.dtype not in (torch.float32, torch.bfloat16) or xz.stride(-1) != 1:
        return False
    tensors = [xz, initial_tail, initial_state, *(t for d in directions for t in d)]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return fused_cpu_ops(xz, backend) is not None


def _small(t: Tensor) -> Tensor:
    return t.detach().float().contiguous()


def mamba_inner(
    xz: Tensor,
    directions: Sequence[MixerDirection],
    initial_tail: Optional[Tensor] = None,
    initial_state: Optional[Tensor] = None,
    return_state: bool = False,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
):
    _check(xz, directions)
    out_dtype = out_dtype or torch.float32
    if out_dtype in (torch.float32, torch.bfloat16) and _fused_ok(xz, directions, initial_tail, initial_state, backend):
        return mamba_inner_cpu(xz, directions, initial_tail, initial_state, return_state, out_dtype)
    y, state = _composed(xz.float(), directions, initial_tail, initial_state, return_state, backend)
    y = y.to(out_dtype)
    return (y, state) if return_state else y


def mamba_inner_cpu(
    xz: Tensor,
    directions: Sequence[MixerDirection],
    initial_tail: Optional[Tensor] = None,
    initial_state: Optional[Tensor] = None,
    return_state: bool = False,
    out_dtype: torch.dtype = torch.float32,
    chunk: int = 0,
    variant: str = "native",
):
    """`mamba_inner` on the fused C++ kernel, without autograd (CPU tensors; `chunk` 0 is
    `CHUNK`; `variant` picks an instruction-set build, see `cpu_ext.VARIANT_FLAGS`)."""
    _check(xz, directions)
    Dm = xz.shape[-1] // 2
    params = []
    for d in directions:
        bias = d.conv_bias if d.conv_bias is not None else d.conv_weight.new_zeros(Dm)
        params += [
            _small(d.conv_weight.reshape(Dm, -1)),
            _small(bias),
            _small(d.x_proj_weight),
            _small(d.dt_proj_weight),
            _small(d.dt_bias),
            _small(d.A),
            _small(d.D),
        ]
    if xz.dtype not in (torch.float32, torch.bfloat16):
        xz = xz.float()
    if xz.stride(-1) != 1:
        xz = xz.contiguous()
    with torch.no_grad():
        y, tail, last = cpu_ext.load(variant).mixer_fwd(
            xz.detach(),
            params,
            None if initial_tail is None else _small(initial_tail),
            None if initial_state is None else _small(initial_state),
            bool(return_state),
            chunk or CHUNK,
            out_dtype == torch.bfloat16,
        )
    return (y, (tail, last)) if return_state else y


def _composed(xz, directions, initial_tail, initial_state, return_state, backend):
    """The dispatched ops one after the other (autograd, GPU backends, the reference)."""
    x, z = xz.chunk(2, dim=-1)  # views; last dim contiguous, as the ops require
    y, state = None, None
    for i, d in enumerate(directions):
        first = i == 0
        # Without autograd the second direction's scan adds into the first's output in
        # place (no temporary); under autograd y must stay intact for backward, so sum.
        acc = y if y is not None and not torch.is_grad_enabled() else None
        yd = _direction(
            x,
            z,
            d,
            initial_tail if first else None,
            initial_state if first else None,
            reverse=not first,
            return_state=return_state and first,
            out=acc,
            backend=backend,
        )
        if return_state and first:
            yd, state = yd
        y = yd if (y is None or acc is not None) else y + yd
    return y, state


def _direction(x, z, d: MixerDirection, tail, h0, reverse, return_state, out, backend):
    Dm, N = d.A.shape
    R = d.dt_proj_weight.shape[1]
    xc = causal_conv1d(
        x,
        d.conv_weight.reshape(Dm, -1),
        d.conv_bias,
        initial_tail=tail,
        activation="silu",
        return_final_tail=return_state,
        reverse=reverse,
        backend=backend,
    )
    if return_state:
        xc, new_tail = xc
    x_dbl = F.linear(xc, d.x_proj_weight)
    dt, B, C = torch.split(x_dbl, [R, N, N], dim=-1)
    dt = F.linear(dt, d.dt_proj_weight)  # bias -> delta_bias, as the fused kernel does
    y = selective_scan(
        xc,
        dt,
        d.A,
        B,
        C,
        d.D.float(),
        z=z,
        delta_bias=d.dt_bias.float(),
        delta_softplus=True,
        initial_state=h0,
        return_last_state=return_state,
        reverse=reverse,
        out=out,
        accumulate=out is not None,
        backend=backend,
    )
    if return_state:
        y, last = y
        return y, (new_tail, last)
    return y
