"""The numba backend: the fused scan and conv where no C++ compiler is available.

Same algorithm as `csrc/scan_cpu.cpp` (numba installs from PyPI as a wheel, so this
needs no compiler on the user's side): parallel over (batch row, block of W channels),
the time loop inside, the state of W channels in a small [N, W] array whose inner loops
LLVM vectorises; exp(Δ·A) with the same polynomial 2^x, its 2^k built as an int32
bit pattern viewed as float32 (vectorisable, unlike a call to exp); the backward
recomputes states per chunk of `ckpt_every` steps from checkpoints stored by the
forward.

Import this module lazily (dispatch does): importing it compiles the kernels, or loads
them from numba's on-disk cache (`cache=True`) after the first time.

Inputs reach the kernels as numpy views of the tensors (no copies for the model's
strided views); gradients come from `torch.autograd.Function` wrappers.
"""

from __future__ import annotations

import functools
from typing import Optional

import numba as nb
import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba import prange
from numba.extending import intrinsic
from torch import Tensor

CKPT_EVERY = 64
W = 16  # channels per block: the inner vector loops

f32 = np.float32
LOG2E = f32(1.4426950408889634)
# 2^f on [-0.5, 0.5], the same polynomial as the C++ kernel (p(0) = 1 and p'(0) = ln 2 exact,
# so the decay of a long-memory channel has no per-step bias to compound; see scan_cpu.cpp)
P0, P1, P2, P3, P4, P5 = (
    f32(v) for v in (1.0, 6.931471806e-01, 2.402225896e-01, 5.550552468e-02, 9.671051678e-03, 1.330622285e-03)
)
# One compilation per kernel, whatever the strides: explicit signatures with 'A'
# (any-layout) arrays; cached on disk by numba.
_jit = functools.partial(nb.njit, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_a1, _a2, _a3, _a4 = nb.float32[:], nb.float32[:, :], nb.float32[:, :, :], nb.float32[:, :, :, :]


@intrinsic
def _i32_as_f32(typingctx, x):
    """Reinterpret an int32's bits as float32 (an LLVM bitcast: vectorises, unlike exp)."""
    sig = nb.float32(nb.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return sig, codegen


@_jit(inline="always")
def exp2f(x):
    """2^x in float32 to ~3 ulp. x is clamped to [-127, 128], where k = -127 and 128 build
    the bit patterns of 0 and inf; NaN stays NaN (comparisons with NaN are false)."""
    if x < f32(-127.0):
        x = f32(-127.0)
    if x > f32(128.0):
        x = f32(128.0)
    k = np.floor(x + f32(0.5))
    f = x - k
    p = ((((P5 * f + P4) * f + P3) * f + P2) * f + P1) * f + P0
    return p * _i32_as_f32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


@_jit(inline="always")
def sigmoid(x):
    return f32(1.0) / (f32(1.0) + exp2f(-x * LOG2E))


@_jit(inline="always")
def softplus(x):
    """max(x, 0) + log1p(exp(-|x|)); log1p(e), e in [0, 1], as 2·atanh(e / (2 + e))."""
    e = exp2f(-abs(x) * LOG2E)
    s = e / (e + f32(2.0))
    s2 = s * s
    p = (
        ((((f32(1 / 13) * s2 + f32(1 / 11)) * s2 + f32(1 / 9)) * s2 + f32(1 / 7)) * s2 + f32(1 / 5)) * s2 + f32(1 / 3)
    ) * s2 + f32(1.0)
    pos = x if x > f32(0.0) else f32(0.0)
    return pos + f32(2.0) * s * p


@_jit(
    nb.void(_a3, _a3, _a2, _a3, _a3, _a1, _a3, _a1, _a3, _a3, _a3, _a4, nb.types.UniTuple(nb.boolean, 9), nb.int64),
    parallel=True,
)
def scan_fwd(u, delta, A, Bm, Cm, Dv, z, bias, h0, out, last, ckpt, flags, K):
    has_D, has_z, has_bias, has_h0, softp, reverse, accumulate, want_last, want_ckpt = flags
    Bsz, L, D = u.shape
    N = A.shape[1]
    nd = (D + W - 1) // W
    for task in prange(Bsz * nd):
        b = task // nd
        d0 = (task % nd) * W
        nl = min(W, D - d0)
        A2 = np.zeros((N, W), f32)
        h = np.zeros((N, W), f32)
        for n in range(N):
            for i in range(nl):
                A2[n, i] = A[d0 + i, n] * LOG2E
                if has_h0:
                    h[n, i] = h0[b, d0 + i, n]
        dt = np.zeros(W, f32)
        du = np.zeros(W, f32)
        y = np.zeros(W, f32)
        for s in range(L):
            t = L - 1 - s if reverse else s
            if want_ckpt and s % K == 0:
                for n in range(N):
                    for i in range(nl):
                        ckpt[b, s // K, n, d0 + i] = h[n, i]
            for i in range(nl):
                x = delta[b, t, d0 + i]
                if has_bias:
                    x += bias[d0 + i]
                if softp:
                    x = softplus(x)
                dt[i] = x
                du[i] = x * u[b, t, d0 + i]
                y[i] = Dv[d0 + i] * u[b, t, d0 + i] if has_D else f32(0.0)
            for n in range(N):
                bn = Bm[b, t, n]
                cn = Cm[b, t, n]
                for i in range(W):  # the hot loop: one vector of W channels
                    hv = exp2f(dt[i] * A2[n, i]) * h[n, i] + du[i] * bn
                    h[n, i] = hv
                    y[i] += hv * cn
            for i in range(nl):
                v = y[i]
                if has_z:
                    zz = z[b, t, d0 + i]
                    v *= zz * sigmoid(zz)
                if accumulate:
                    v += out[b, t, d0 + i]
                out[b, t, d0 + i] = v
        if want_last:
            for n in range(N):
                for i in range(nl):
                    last[b, d0 + i, n] = h[n, i]


@_jit(inline="always")
def _recompute_chunk(
    b,
    d0,
    nl,
    s0,
    cnt,
    L,
    reverse,
    u,
    delta,
    bias,
    Bm,
    Cm,
    Dv,
    z,
    dout,
    has_bias,
    softp,
    has_z,
    has_D,
    A2,
    H,
    Ad,
    pre,
    dtk,
    dtu,
    dy,
    dz_o,
):
    """The forward pass over one chunk again, from its checkpointed state H[0]: the
    states, decays and gate gradients the reverse recurrence needs."""
    N = A2.shape[0]
    for j in range(cnt):
        t = L - 1 - (s0 + j) if reverse else s0 + j
        for i in range(W):
            x = f32(0.0)
            if i < nl:
                x = delta[b, t, d0 + i]
                if has_bias:
                    x += bias[d0 + i]
            pre[j, i] = x
            dtk[j, i] = softplus(x) if softp else x
            dtu[j, i] = dtk[j, i] * u[b, t, d0 + i] if i < nl else f32(0.0)
        for n in range(N):
            bn = Bm[b, t, n]
            for i in range(W):
                a = exp2f(dtk[j, i] * A2[n, i])
                Ad[j, n, i] = a
                H[j + 1, n, i] = a * H[j, n, i] + dtu[j, i] * bn
        for i in range(nl):
            go = dout[b, t, d0 + i]
            if has_z:
                yv = Dv[d0 + i] * u[b, t, d0 + i] if has_D else f32(0.0)
                for n in range(N):
                    yv += H[j + 1, n, i] * Cm[b, t, n]
                zz = z[b, t, d0 + i]
                sg = sigmoid(zz)
                dz_o[b, t, d0 + i] = go * yv * sg * (f32(1.0) + zz * (f32(1.0) - sg))
                go = go * zz * sg
            dy[j, i] = go
        for i in range(nl, W):
            dy[j, i] = f32(0.0)


@_jit(
    nb.void(
        _a3,
        _a3,
        _a2,
        _a3,
        _a3,
        _a1,
        _a3,
        _a1,
        _a4,
        _a3,
        _a3,
        nb.types.UniTuple(nb.boolean, 6),
        nb.int64,
        _a3,
        _a3,
        _a3,
        _a3,
        _a3,
        _a2,
        _a2,
        _a4,
        _a4,
    ),
    parallel=True,
)
def scan_bwd(
    u, delta, A, Bm, Cm, Dv, z, bias, ckpt, dout, dlast, flags, K, du_o, dd_o, dz_o, dh0_o, dA_w, dD_w, db_w, dB_w, dC_w
):
    has_D, has_z, has_bias, softp, reverse, has_dlast = flags
    Bsz, L, D = u.shape
    N = A.shape[1]
    nd = (D + W - 1) // W
    ntasks = Bsz * nd
    nw = dA_w.shape[0]
    nck = (L + K - 1) // K
    for wk in prange(nw):  # worker wk owns row wk of every reduction buffer
        H = np.zeros((K + 1, N, W), f32)  # H[j] = state before step j of the chunk
        Ad = np.zeros((K, N, W), f32)  # decays
        pre = np.zeros((K, W), f32)
        dtk = np.zeros((K, W), f32)
        dtu = np.zeros((K, W), f32)
        sgB = np.zeros(W, f32)
        sdA = np.zeros(W, f32)
        dy = np.zeros((K, W), f32)
        A2 = np.zeros((N, W), f32)
        Ar = np.zeros((N, W), f32)
        g = np.zeros((N, W), f32)
        dAacc = np.zeros((N, W), f32)
        for task in range(wk, ntasks, nw):
            b = task // nd
            d0 = (task % nd) * W
            nl = min(W, D - d0)
            A2[:, :] = 0.0
            Ar[:, :] = 0.0
            g[:, :] = 0.0
            dAacc[:, :] = 0.0
            for n in range(N):
                for i in range(nl):
                    Ar[n, i] = A[d0 + i, n]
                    A2[n, i] = A[d0 + i, n] * LOG2E
                    if has_dlast:
                        g[n, i] = dlast[b, d0 + i, n]
            for k in range(nck - 1, -1, -1):
                s0 = k * K
                cnt = min(K, L - s0)
                for n in range(N):
                    for i in range(W):
                        H[0, n, i] = ckpt[b, k, n, d0 + i] if i < nl else f32(0.0)
                _recompute_chunk(
                    b,
                    d0,
                    nl,
                    s0,
                    cnt,
                    L,
                    reverse,
                    u,
                    delta,
                    bias,
                    Bm,
                    Cm,
                    Dv,
                    z,
                    dout,
                    has_bias,
                    softp,
                    has_z,
                    has_D,
                    A2,
                    H,
                    Ad,
                    pre,
                    dtk,
                    dtu,
                    dy,
                    dz_o,
                )
                for j in range(cnt - 1, -1, -1):  # the reverse recurrence
                    t = L - 1 - (s0 + j) if reverse else s0 + j
                    sgB[:] = 0.0
                    sdA[:] = 0.0
                    for n in range(N):
                        bn = Bm[b, t, n]
                        cn = Cm[b, t, n]
                        accB = f32(0.0)
                        accC = f32(0.0)
                        for i in range(W):
                            gi = g[n, i] + cn * dy[j, i]
                            accC += H[j + 1, n, i] * dy[j, i]
                            accB += gi * dtu[j, i]
                            sgB[i] += gi * bn
                            t1 = gi * H[j, n, i] * Ad[j, n, i]
                            sdA[i] += t1 * Ar[n, i]
                            dAacc[n, i] += t1 * dtk[j, i]
                            g[n, i] = Ad[j, n, i] * gi
                        dB_w[wk, b, t, n] += accB
                        dC_w[wk, b, t, n] += accC
                    for i in range(nl):
                        uu = u[b, t, d0 + i]
                        dv = dtk[j, i] * sgB[i]
                        if has_D:
                            dv += dy[j, i] * Dv[d0 + i]
                            dD_w[wk, d0 + i] += dy[j, i] * uu
                        ddt = uu * sgB[i] + sdA[i]
                        if softp:
                            ddt *= sigmoid(pre[j, i])
                        db_w[wk, d0 + i] += ddt
                        du_o[b, t, d0 + i] = dv
                        dd_o[b, t, d0 + i] = ddt
            for n in range(N):
                for i in range(nl):
                    dh0_o[b, d0 + i, n] = g[n, i]
                    dA_w[wk, d0 + i, n] += dAacc[n, i]


@_jit(nb.void(_a3, _a2, _a1, _a3, _a3, _a3, nb.types.UniTuple(nb.boolean, 5)), parallel=True)
def conv_fwd(x, w, bias, tail, out, ftail, flags):
    has_bias, has_tail, silu, reverse, want_tail = flags
    Bsz, L, D = x.shape
    K = w.shape[1]
    for bd in prange(Bsz * D):
        b = bd // D
        d = bd % D
        win = np.zeros(K, f32)
        for k in range(K - 1):
            if has_tail:
                win[k] = tail[b, d, k]
        for s in range(L):
            t = L - 1 - s if reverse else s
            win[K - 1] = x[b, t, d]
            acc = bias[d] if has_bias else f32(0.0)
            for k in range(K):
                acc += w[d, k] * win[k]
            if silu:
                acc = acc * sigmoid(acc)
            out[b, t, d] = acc
            for k in range(K - 1):
                win[k] = win[k + 1]
        if want_tail:
            for k in range(K - 1):
                ftail[b, d, k] = win[k]


@_jit(nb.void(_a3, _a2, _a1, _a3, _a3, _a3, nb.types.UniTuple(nb.boolean, 5), _a3, _a2, _a1, _a3), parallel=True)
def conv_bwd(x, w, bias, tail, dout, dfinal, flags, dx, dw, db, dtail):
    has_bias, has_tail, silu, reverse, has_dfinal = flags
    Bsz, L, D = x.shape
    K = w.shape[1]
    for d in prange(D):  # one channel per iteration: dw, db need no cross-thread sums
        win = np.zeros(K, f32)
        dact = np.zeros(K, f32)
        for b in range(Bsz):
            for k in range(K - 1):
                win[k] = tail[b, d, k] if has_tail else f32(0.0)
            dact[:] = 0.0
            for j in range(L + K - 1):
                av = f32(0.0)
                if j < L:
                    t = L - 1 - j if reverse else j
                    win[K - 1] = x[b, t, d]
                    av = dout[b, t, d]
                    if silu:
                        pre = bias[d] if has_bias else f32(0.0)
                        for k in range(K):
                            pre += w[d, k] * win[k]
                        sg = sigmoid(pre)
                        av = av * sg * (f32(1.0) + pre * (f32(1.0) - sg))
                    for k in range(K):
                        dw[d, k] += av * win[k]
                    db[d] += av
                    for k in range(K - 1):
                        win[k] = win[k + 1]
                for k in range(K - 1):
                    dact[k] = dact[k + 1]
                dact[K - 1] = av
                dwin = f32(0.0)
                for k in range(K):
                    dwin += w[d, k] * dact[K - 1 - k]
                if j >= L and has_dfinal:
                    dwin += dfinal[b, d, j - L]
                if j < K - 1:
                    dtail[b, d, j] = dwin
                else:
                    i = j - (K - 1)
                    t = L - 1 - i if reverse else i
                    dx[b, t, d] = dwin


def _np(t: Optional[Tensor]) -> np.ndarray:
    """A numpy view of a float32 CPU [D] tensor (no copy), or a 1-element dummy for None."""
    if t is None:
        return np.zeros(1, np.float32)
    return t.detach().numpy()


def _f32c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.float().contiguous()


def _num_workers() -> int:
    return max(1, nb.get_num_threads())


def _fwd(u, delta, A, B, C, D, z, bias, h0, softplus, reverse, out, accumulate, want_last, K):
    Bsz, L, Dm = u.shape
    N = A.shape[1]
    last = torch.empty(Bsz, Dm, N) if want_last else None
    ckpt = torch.empty(Bsz, (L + K - 1) // K, N, Dm) if K > 0 else None
    if out is None:
        out = torch.empty(Bsz, L, Dm)
    flags = (
        D is not None,
        z is not None,
        bias is not None,
        h0 is not None,
        bool(softplus),
        bool(reverse),
        bool(accumulate),
        bool(want_last),
        K > 0,
    )
    d3 = np.zeros((1, 1, 1), np.float32)
    scan_fwd(
        u.detach().numpy(),
        delta.detach().numpy(),
        A.detach().numpy(),
        B.detach().numpy(),
        C.detach().numpy(),
        _np(D),
        d3 if z is None else z.detach().numpy(),
        _np(bias),
        d3 if h0 is None else h0.detach().numpy(),
        out.detach().numpy(),
        d3 if last is None else last.numpy(),
        np.zeros((1, 1, 1, 1), np.float32) if ckpt is None else ckpt.numpy(),
        flags,
        max(K, 1),
    )
    return out, last, ckpt


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, reverse):
        out, last, ckpt = _fwd(
            u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, reverse, None, False, True, CKPT_EVERY
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.flags = (softplus, reverse, CKPT_EVERY)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, bias, ckpt = ctx.saved_tensors
        softplus, reverse, K = ctx.flags
        Bsz, L, Dm = u.shape
        N = A.shape[1]
        nw = _num_workers()
        du, dd = torch.empty(Bsz, L, Dm), torch.empty(Bsz, L, Dm)
        dz = torch.empty(Bsz, L, Dm) if z is not None else None
        dh0 = torch.empty(Bsz, Dm, N)
        dA_w, dD_w, db_w = torch.zeros(nw, Dm, N), torch.zeros(nw, Dm), torch.zeros(nw, Dm)
        dB_w, dC_w = torch.zeros(nw, Bsz, L, N), torch.zeros(nw, Bsz, L, N)
        d3 = np.zeros((1, 1, 1), np.float32)
        dout = dout.float().contiguous()
        flags = (D is not None, z is not None, bias is not None, bool(softplus), bool(reverse), dlast is not None)
        scan_bwd(
            u.numpy(),
            delta.numpy(),
            A.numpy(),
            B.numpy(),
            C.numpy(),
            _np(D),
            d3 if z is None else z.numpy(),
            _np(bias),
            ckpt.numpy(),
            dout.numpy(),
            d3 if dlast is None else dlast.float().contiguous().numpy(),
            flags,
            K,
            du.numpy(),
            dd.numpy(),
            d3 if dz is None else dz.numpy(),
            dh0.numpy(),
            dA_w.numpy(),
            dD_w.numpy(),
            db_w.numpy(),
            dB_w.numpy(),
            dC_w.numpy(),
        )
        return (
            du,
            dd,
            dA_w.sum(0),
            dB_w.sum(0),
            dC_w.sum(0),
            dD_w.sum(0) if D is not None else None,
            dz,
            db_w.sum(0) if bias is not None else None,
            dh0 if ctx.needs_input_grad[8] else None,
            None,
            None,
        )


def selective_scan_numba(
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
):
    """The contract of `dispatch.selective_scan` on the numba kernels (CPU tensors)."""
    dtype_in = u.dtype
    args = (
        u.float(),
        delta.float(),
        _f32c(A),
        B.float(),
        C.float(),
        _f32c(D),
        None if z is None else z.float(),
        _f32c(delta_bias),
        _f32c(initial_state),
    )
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    if grad:
        y, last = _SelectiveScanFn.apply(*args, bool(delta_softplus), bool(reverse))
    else:
        y, last, _ = _fwd(*args, delta_softplus, reverse, None, False, return_last_state, 0)
    y = y.to(dtype_in)
    if out is not None:
        y = out.add_(y) if accumulate else out.copy_(y)
    return (y, last) if return_last_state else y


def _conv_fwd(x, w, bias, tail, silu, reverse, want_tail):
    Bsz, L, D = x.shape
    K = w.shape[1]
    out = torch.empty(Bsz, L, D)
    ftail = torch.empty(Bsz, D, K - 1)
    d3 = np.zeros((1, 1, 1), np.float32)
    conv_fwd(
        x.detach().numpy(),
        w.detach().numpy(),
        _np(bias),
        d3 if tail is None else tail.detach().numpy(),
        out.numpy(),
        ftail.numpy(),
        (bias is not None, tail is not None, bool(silu), bool(reverse), bool(want_tail)),
    )
    return out, ftail


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, tail, silu, reverse):
        out, ftail = _conv_fwd(x, w, bias, tail, silu, reverse, True)
        ctx.save_for_backward(x, w, bias, tail)
        ctx.flags = (silu, reverse)
        return out, ftail

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, w, bias, tail = ctx.saved_tensors
        silu, reverse = ctx.flags
        Bsz, L, D = x.shape
        K = w.shape[1]
        dx = torch.empty(Bsz, L, D)
        dw, db = torch.zeros(D, K), torch.zeros(D)
        dtail = torch.empty(Bsz, D, K - 1)
        d3 = np.zeros((1, 1, 1), np.float32)
        conv_bwd(
            x.numpy(),
            w.numpy(),
            _np(bias),
            d3 if tail is None else tail.numpy(),
            dout.float().contiguous().numpy(),
            d3 if dfinal is None else dfinal.float().contiguous().numpy(),
            (bias is not None, tail is not None, bool(silu), bool(reverse), dfinal is not None),
            dx.numpy(),
            dw.numpy(),
            db.numpy(),
            dtail.numpy(),
        )
        return (
            dx,
            dw,
            db if bias is not None else None,
            dtail if tail is not None and ctx.needs_input_grad[3] else None,
            None,
            None,
        )


def causal_conv1d_numba(
    x, weight, bias=None, initial_tail=None, activation=None, return_final_tail=False, reverse=False
):
    """The contract of `dispatch.causal_conv1d` on the numba kernels (CPU tensors)."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r} (silu or None)")
    dtype_in = x.dtype
    D = x.shape[-1]
    args = (x.float(), _f32c(weight.reshape(D, weight.shape[-1])), _f32c(bias), _f32c(initial_tail))
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, initial_tail))
    if grad:
        y, tail = _CausalConv1dFn.apply(*args, activation is not None, bool(reverse))
    else:
        y, tail = _conv_fwd(*args, activation is not None, reverse, return_final_tail)
    y = y.to(dtype_in)
    return (y, tail.to(dtype_in)) if return_final_tail else y
