"""The fused C++ CPU backend: autograd wrappers around `csrc/scan_cpu.cpp`.

Without gradients the kernels run directly (no checkpoints, no autograd bookkeeping).
With gradients the forward also stores the state every `CKPT_EVERY` steps
([B, L/CKPT_EVERY, N, D] floats) and the backward kernel recomputes each chunk from
them, so memory stays O(B·D·N·L/64), never O(B·D·N·L).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import cpu_ext

CKPT_EVERY = 64  # backward checkpoint interval (steps); tests lower it to hit chunk edges


def _tokens(t: Optional[Tensor]) -> Optional[Tensor]:
    """float32 with a contiguous last dim; a no-op (no copy) for the model's views."""
    if t is None:
        return None
    if t.dtype != torch.float32:
        t = t.float()
    if t.stride(-1) != 1 and t.size(-1) > 1:
        t = t.contiguous()
    return t


def _small(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.float().contiguous()


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, reverse, variant):
        ops = cpu_ext.load(variant)
        out, last, ckpt = ops.selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, reverse, None, False, True, CKPT_EVERY
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.flags = (softplus, reverse, variant, CKPT_EVERY, initial_state is not None)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        softplus, reverse, variant, every, has_h0 = ctx.flags
        ops = cpu_ext.load(variant)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = ops.selective_scan_bwd(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            ckpt,
            _tokens(dout),
            None if dlast is None else dlast.float().contiguous(),
            softplus,
            reverse,
            every,
            has_h0 and ctx.needs_input_grad[8],
        )
        return (
            du,
            ddelta,
            dA,
            dB,
            dC,
            dD if D is not None else None,
            dz if z is not None else None,
            dbias if delta_bias is not None else None,
            dh0 if dh0.numel() else None,
            None,
            None,
            None,
        )


def selective_scan_cpu(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_last_state=False,
    reverse=False,
    out=None,
    accumulate=False,
    variant: str = "native",
):
    """The contract of `dispatch.selective_scan` on the fused C++ kernel (CPU tensors)."""
    dtype_in = u.dtype
    args = (
        _tokens(u),
        _tokens(delta),
        _small(A),
        B.float(),
        C.float(),
        _small(D),
        _tokens(z),
        _small(delta_bias),
        _small(initial_state),
    )
    if _needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y, last = _SelectiveScanFn.apply(*args, bool(delta_softplus), bool(reverse), variant)
        y = y.to(dtype_in)
        if out is not None:
            y = out.add_(y) if accumulate else out.copy_(y)
        return (y, last) if return_last_state else y
    ops = cpu_ext.load(variant)
    direct = (
        out is not None
        and out.dtype == torch.float32
        and out.shape == u.shape
        and (out.stride(-1) == 1 or out.size(-1) == 1)
    )
    y, last, _ = ops.selective_scan_fwd(
        *args,
        bool(delta_softplus),
        bool(reverse),
        out if direct else None,
        bool(accumulate and direct),
        bool(return_last_state),
        0,
    )
    if direct:
        y = out
    else:
        y = y.to(dtype_in)
        if out is not None:
            y = out.add_(y) if accumulate else out.copy_(y)
    return (y, last) if return_last_state else y


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_tail, silu, reverse, variant):
        ops = cpu_ext.load(variant)
        out, tail = ops.causal_conv1d_fwd(x, weight, bias, initial_tail, silu, reverse, True)
        ctx.save_for_backward(x, weight, bias, initial_tail)
        ctx.flags = (silu, reverse, variant)
        return out, tail

    @staticmethod
    def backward(ctx, dout, dtail):
        x, weight, bias, initial_tail = ctx.saved_tensors
        silu, reverse, variant = ctx.flags
        ops = cpu_ext.load(variant)
        dx, dw, db, dt = ops.causal_conv1d_bwd(
            x,
            weight,
            bias,
            initial_tail,
            _tokens(dout),
            None if dtail is None else dtail.float().contiguous(),
            silu,
            reverse,
            initial_tail is not None and ctx.needs_input_grad[3],
        )
        return (dx, dw, db if bias is not None else None, dt if dt.numel() else None, None, None, None)


def causal_conv1d_cpu(
    x,
    weight,
    bias=None,
    initial_tail=None,
    activation=None,
    return_final_tail=False,
    reverse=False,
    variant: str = "native",
):
    """The contract of `dispatch.causal_conv1d` on the fused C++ kernel (CPU tensors)."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r} (silu or None)")
    silu = activation is not None
    dtype_in = x.dtype
    D = x.shape[-1]
    w = weight.reshape(D, weight.shape[-1])  # accepts nn.Conv1d's [D, 1, K] too
    args = (_tokens(x), _small(w), _small(bias), _small(initial_tail))
    if _needs_grad(x, weight, bias, initial_tail):
        y, tail = _CausalConv1dFn.apply(*args, silu, bool(reverse), variant)
    else:
        y, tail = cpu_ext.load(variant).causal_conv1d_fwd(*args, silu, bool(reverse), bool(return_final_tail))
    y = y.to(dtype_in)
    if return_final_tail:
        return y, tail.to(dtype_in)
    return y
