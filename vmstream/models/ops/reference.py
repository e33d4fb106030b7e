"""Readable PyTorch references for the selective scan and the causal depthwise conv.

These are the oracles every fast backend is tested against. Same math as mamba-ssm's
`selective_scan_ref` and `causal_conv1d_ref`, with three differences that the recurrent
(streaming) mode needs:

* token-major layout: `u`, `delta`, `z` and the output are [B, L, D], `B` and `C` are
  [B, L, N] (the layout `nn.Linear` produces, so the model never transposes);
* an optional `initial_state` [B, D, N], and the final state returned;
* `reverse=True` scans from the last token to the first, which equals flipping the
  sequence, scanning and flipping back (the bidirectional block's backward direction).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[Tensor] = None,
    return_last_state: bool = False,
    reverse: bool = False,
    exp=torch.exp,
):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t ;  y_t = C_t·h_t + D u_t ;  out = y · silu(z).

    Shapes: u, delta, z [B, L, D]; A [D, N]; B, C [B, L, N]; D, delta_bias [D];
    initial_state [B, D, N]. Returns out [B, L, D] in u's dtype, and the last state
    [B, D, N] (float32) when `return_last_state`. Differentiable (autograd through
    the loop), including with respect to `initial_state`. `exp` computes the decay
    exp(Δ_t A) (`exp_bf16_mode_ref` for the fused mixer's bf16 mode).
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()
    if delta_softplus:
        delta = F.softplus(delta)
    Bsz, L, Dm = u.shape
    N = A.shape[1]
    A = A.float()
    Bm = B.float()
    Cm = C.float()
    if initial_state is None:
        h = u.new_zeros(Bsz, Dm, N)
    else:
        h = initial_state.float()
    steps = range(L - 1, -1, -1) if reverse else range(L)
    ys = [None] * L
    for t in steps:
        dA = exp(delta[:, t, :, None] * A)  # [B, D, N]
        dBu = (delta[:, t] * u[:, t])[:, :, None] * Bm[:, t, None, :]  # [B, D, N]
        h = dA * h + dBu
        ys[t] = torch.einsum("bdn,bn->bd", h, Cm[:, t])
    y = torch.stack(ys, dim=1)  # [B, L, D]
    if D is not None:
        y = y + u * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def causal_conv1d_ref(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    initial_tail: Optional[Tensor] = None,
    activation: Optional[str] = None,
    return_final_tail: bool = False,
    reverse: bool = False,
):
    """Depthwise causal conv over the token axis of x [B, L, D] with weight [D, K].

    `initial_tail` [B, D, K-1] holds the last K-1 inputs of the previous piece of the
    sequence (zeros = the start of a sequence), so convolving a sequence in pieces equals
    convolving it whole. The final tail (the last K-1 inputs, for the next piece) is
    returned when `return_final_tail`. `reverse=True` is the anti-causal conv of the
    flipped sequence: out = flip(conv(flip(x))).
    """
    if reverse:
        out = causal_conv1d_ref(x.flip(1), weight, bias, initial_tail, activation, return_final_tail, reverse=False)
        if return_final_tail:
            return out[0].flip(1), out[1]
        return out.flip(1)
    Bsz, L, Dm = x.shape
    K = weight.shape[-1]
    w = weight.reshape(Dm, 1, K)
    # As causal-conv1d's reference: computed in the weight's dtype (a bf16/fp16 x beside a
    # float32 weight and bias, as under autocast, is upcast), returned in x's dtype.
    dtype_in = x.dtype
    xt = x.transpose(1, 2).to(weight.dtype)  # [B, D, L]
    if initial_tail is None:
        tail = xt.new_zeros(Bsz, Dm, K - 1)
    else:
        tail = initial_tail.to(xt.dtype)
    xp = torch.cat([tail, xt], dim=2)  # [B, D, K-1+L]
    out = F.conv1d(xp, w, None if bias is None else bias.to(weight.dtype), groups=Dm)  # [B, D, L]
    if activation in ("silu", "swish"):
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"unsupported activation {activation!r} (silu or None)")
    out = out.transpose(1, 2).to(dtype_in)
    if return_final_tail:
        return out, xp[:, :, xp.shape[2] - (K - 1) :].to(dtype_in)
    return out


# The bf16 mode's decay polynomial: 2^f ~ 1 + f (ln 2 + f (Q2 + f Q3)) on |f| <= 1/2,
# minimax in relative error with the first two coefficients exact (csrc: vexp2_bf16).
EXP2_BF16_Q2, EXP2_BF16_Q3 = 2.421200256e-01, 5.549127520e-02


def exp_bf16_mode_ref(x: Tensor) -> Tensor:
    """exp(x) as the fused mixer's bf16 mode computes the scan's decay: x·log2(e) = k + f
    with k the nearest integer, 2^f by a degree-3 polynomial (relative error <= 1.3e-4,
    exact to first order at f = 0), times 2^k."""
    w = x.float() * math.log2(math.e)
    k = torch.round(w)
    f = w - k
    p = 1.0 + f * (math.log(2.0) + f * (EXP2_BF16_Q2 + f * EXP2_BF16_Q3))
    return torch.ldexp(p, k)


def silu_bf16_mode_ref(x: Tensor) -> Tensor:
    """SiLU as the fused mixer's bf16 mode computes it: x / (1 + exp(-x)), that exp by
    `exp_bf16_mode_ref` of the argument clamped to +-200 ln 2 (as the kernel does, so
    +-inf give their limits, not NaN)."""
    x = x.float()
    return x / (1.0 + exp_bf16_mode_ref(_clamp_exp_arg(-x)))


def _clamp_exp_arg(x: Tensor) -> Tensor:
    lim = 200.0 * math.log(2.0)
    return torch.clamp(x, min=-lim, max=lim)


def softplus_bf16_mode_ref(x: Tensor) -> Tensor:
    """softplus as the fused mixer's bf16 mode computes it: max(x, 0) + log1p(e),
    e = exp(-|x|) by `exp_bf16_mode_ref`, log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3,
    by its series to s^7 (relative error <= 2e-5)."""
    x = x.float()
    e = exp_bf16_mode_ref(_clamp_exp_arg(-x.abs()))
    s = e / (e + 2.0)
    s2 = s * s
    return torch.clamp(x, min=0.0) + 2.0 * s * (1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 / 7)))


def _bf16_values(t: Tensor) -> Tensor:
    return t.float().bfloat16().float()


def mamba_inner_ref(
    xz: Tensor,
    directions,
    initial_tail: Optional[Tensor] = None,
    initial_state: Optional[Tensor] = None,
    return_state: bool = False,
    bf16: bool = False,
):
    """A Mamba layer between in_proj and out_proj, the readable way (see `mixer.py`).

    xz [B, L, 2D] is split into x and z; each direction (a `mixer.MixerDirection`) is
    conv + SiLU, x_proj, dt_proj, and the selective scan with D, delta_bias, softplus and
    the z gate; the second direction runs reversed from zero. Returns the float32 sum of
    the directions, and with `return_state` the first direction's (conv tail, scan state).
    `bf16` is the fused kernel's bf16 mode before its output is rounded: x_proj and dt_proj
    on operands rounded to bfloat16 (float32 products and sums); the decay, the SiLUs and
    the softplus by `exp_bf16_mode_ref`, `silu_bf16_mode_ref`, `softplus_bf16_mode_ref`;
    the z gate applied once to the directions' sum (the kernel's order).
    """
    x, z = xz.float().chunk(2, dim=-1)
    rnd = _bf16_values if bf16 else (lambda t: t.float())
    silu = silu_bf16_mode_ref if bf16 else F.silu
    y, state = None, None
    for i, d in enumerate(directions):
        first = i == 0
        Dm, N = d.A.shape
        R = d.dt_proj_weight.shape[1]
        xc, tail = causal_conv1d_ref(
            x,
            d.conv_weight.reshape(Dm, -1).float(),
            d.conv_bias,
            initial_tail if first else None,
            None,
            True,
            reverse=not first,
        )
        xc = silu(xc)
        dt, B, C = torch.split(F.linear(rnd(xc), rnd(d.x_proj_weight)), [R, N, N], dim=-1)
        pre = F.linear(rnd(dt), rnd(d.dt_proj_weight)) + d.dt_bias.float()
        delta = softplus_bf16_mode_ref(pre) if bf16 else F.softplus(pre)
        # fp32 gates each direction (the official order); the bf16 mode gates their sum.
        yd, last = selective_scan_ref(
            xc,
            delta,
            d.A,
            B,
            C,
            d.D,
            None if bf16 else z,
            None,
            False,
            initial_state if first else None,
            True,
            reverse=not first,
            exp=exp_bf16_mode_ref if bf16 else torch.exp,
        )
        if first:
            state = (tail, last)
        y = yd if y is None else y + yd
    if bf16:
        y = y * silu(z)
    return (y, state) if return_state else y


def add_rms_norm_ref(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float):
    """(RMSNorm(residual + hidden) in float32, residual + hidden in float32): the pre-norm
    block's add and norm, the residual kept in float32 (`norm.add_rms_norm`)."""
    res = hidden.float() if residual is None else residual.float() + hidden.float()
    return F.rms_norm(res, (res.shape[-1],), weight.float(), eps), res
