"""The Triton backend: selective scan (forward and backward) and causal depthwise conv.

Token-major [B, L, D] like every backend (no transposes), the carried state taken
natively, `reverse=True` by walking the tokens backwards, fp32
state and accumulation with fp32/bf16/fp16 inputs, outputs in the input's dtype.

Parallel forms of the forward, one program per (batch row, block of channels) with the
carried [BLOCK_D, N] state in registers in both: "sequential" (the default) walks the
tokens one at a time, as vLLM's Triton `selective_scan_fwd` does, the simplest exact
form; "chunked" loads 16 steps as tiles and scans them with `tl.associative_scan` (the
composition of the steps' affine maps), fewer dependent memory round trips per token at
~log2(16)x the arithmetic. VMSTREAM_TRITON_SCAN_FORM=chunked selects it. Neither has
been timed on a GPU yet: benchmarks/gpu_check.py times both at the models' shapes, and
the default should follow that measurement (or switch by length).

Backward: a Triton kernel. The forward stores the state every CKPT_EVERY steps; the
backward walks the chunks from last to first, recomputes each chunk's states from its
checkpoint into a per-program scratch buffer, then runs the adjoint recurrence
G_t = C_t dy_t + exp(Δ_{t+1} A) ⊙ G_{t+1} backwards through the chunk. Memory is
O(B·D·N·L/CKPT_EVERY), never O(B·D·N·L). Per-token gradients that sum over channels
(dB, dC) are written per channel block and summed by torch, so results are
deterministic (no atomics).

Conv: a Triton forward (the carried tail read in place, no concatenated copy); its
backward recomputes through the reference (`F.conv1d` under autograd), which is
already a single fused cuDNN/ATen kernel on the GPU.

Interpreter: with TRITON_INTERPRET=1 in the environment when this module is first
imported, the same kernels run on CPU tensors through Triton's interpreter (numpy):
that is how the tests hold them to the reference on machines without a GPU. The
interpreter needs numpy < 2.4 (pyproject.toml's dev extra says why).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import triton
import triton.language as tl

from .reference import causal_conv1d_ref

# Read once: the decorators below compile for the GPU or build interpreted functions,
# depending on this variable at import time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
CKPT_EVERY = 32  # backward checkpoint interval (steps); tests lower it to hit chunk edges
# The forward's parallel form: "sequential" (one step at a time, the state in registers)
# or "chunked" (16 steps at once through tl.associative_scan). Which is faster on which
# GPU and length is not measured yet: benchmarks/gpu_check.py times both.
FORWARD_FORM = os.environ.get("VMSTREAM_TRITON_SCAN_FORM", "sequential")
if FORWARD_FORM not in ("sequential", "chunked"):
    raise ValueError(f"VMSTREAM_TRITON_SCAN_FORM={FORWARD_FORM!r}: expected 'sequential' or 'chunked'")


def _version(v: str) -> tuple:
    return tuple(int(p) for p in v.split("+")[0].split(".")[:2] if p.isdigit())


# Triton 3.6's interpreter converts 1-element arrays with int(), which numpy 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars"): every kernel fails.
INTERPRETER_PROBLEM = (
    f"Triton {triton.__version__}'s interpreter fails with numpy {np.__version__} (numpy >= 2.4 "
    "refuses int() of 1-element arrays); install numpy<2.4 to run the Triton kernels on the CPU"
    if _version(np.__version__) >= (2, 4) and _version(triton.__version__) <= (3, 6)
    else None
)


def block_d(Bsz: int, D: int) -> int:
    """Channels per program: small blocks when B·D is small, so the grid still fills
    the GPU's SMs (each program is a sequential loop over L)."""
    if Bsz * D >= 32 * 1024:
        return 64
    if Bsz * D >= 8 * 1024:
        return 32
    return 16


@triton.jit
def _softplus(x):
    # max(x, 0) + log(1 + exp(-|x|)): no overflow for large |x|
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _token(i, L, REVERSE: tl.constexpr):
    """The token of scan step i: i, or L-1-i for the reverse direction."""
    t = i
    if REVERSE:
        t = L - 1 - i
    return t


@triton.jit
def _load_or_zeros(ptr, offs, mask, PRESENT: tl.constexpr):
    if PRESENT:
        x = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.zeros(offs.shape, dtype=tl.float32)
    return x


@triton.jit
def _scan_fwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    h0_ptr,
    out_ptr,
    last_ptr,
    ckpt_ptr,
    L,
    Dm,
    N,
    n_ck,
    CK,
    s_ub,
    s_ul,
    s_ud,
    s_tb,
    s_tl,
    s_td,
    s_Bb,
    s_Bl,
    s_Bn,
    s_Cb,
    s_Cl,
    s_Cn,
    s_zb,
    s_zl,
    s_zd,
    s_ob,
    s_ol,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr,
    STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md = offs_d < Dm
    mdn = md[:, None] & (offs_n < N)[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]  # [D, N] contiguous index
    A = tl.load(A_ptr + dn, mask=mdn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * Dm * N + dn, mask=mdn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for i in range(0, L):
        t = _token(i, L, REVERSE)
        if STORE_CKPT:
            if i % CK == 0:  # the state before step i starts chunk i // CK
                tl.store(ckpt_ptr + (pid_b * n_ck + i // CK) * Dm * N + dn, h, mask=mdn)
        u = tl.load(u_ptr + pid_b * s_ub + t * s_ul + offs_d * s_ud, mask=md, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + pid_b * s_tb + t * s_tl + offs_d * s_td, mask=md, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        Bt = tl.load(B_ptr + pid_b * s_Bb + t * s_Bl + offs_n * s_Bn, mask=offs_n < N, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + pid_b * s_Cb + t * s_Cl + offs_n * s_Cn, mask=offs_n < N, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y = y + Dv * u
        if HAS_Z:
            z = tl.load(z_ptr + pid_b * s_zb + t * s_zl + offs_d * s_zd, mask=md, other=0.0).to(tl.float32)
            y = y * z * _sigmoid(z)
        tl.store(out_ptr + pid_b * s_ob + t * s_ol + offs_d, y.to(out_ptr.dtype.element_ty), mask=md)
    tl.store(last_ptr + pid_b * Dm * N + dn, h, mask=mdn)


@triton.jit
def _combine(a1, b1, a2, b2):
    # h -> a1 h + b1, then -> a2 h + b2: the affine maps of two steps composed
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_fwd_chunked_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    h0_ptr,
    out_ptr,
    last_ptr,
    ckpt_ptr,
    L,
    Dm,
    N,
    n_ck,
    CK,
    s_ub,
    s_ul,
    s_ud,
    s_tb,
    s_tl,
    s_td,
    s_Bb,
    s_Bl,
    s_Bn,
    s_Cb,
    s_Cl,
    s_Cn,
    s_zb,
    s_zl,
    s_zd,
    s_ob,
    s_ol,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr,
    STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    # The chunked form: CHUNK steps loaded as tiles at once, their states from
    # tl.associative_scan over the step axis of [CHUNK, BLOCK_D, BLOCK_N], plus the
    # carried state times the chunk's cumulative decay. Steps past L get Δ = 0 (decay 1,
    # input 0): they leave the state as it is. CK is a multiple of CHUNK.
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, CHUNK)
    md = offs_d < Dm
    mn = offs_n < N
    mdn = md[:, None] & mn[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]
    A = tl.load(A_ptr + dn, mask=mdn, other=0.0).to(tl.float32)
    Dv = _load_or_zeros(D_ptr, offs_d, md, HAS_D)
    bias = _load_or_zeros(bias_ptr, offs_d, md, HAS_BIAS)
    h = _load_or_zeros(h0_ptr + pid_b * Dm * N, dn, mdn, HAS_H0)
    for c0 in range(0, L, CHUNK):
        if STORE_CKPT:
            if c0 % CK == 0:
                tl.store(ckpt_ptr + (pid_b * n_ck + c0 // CK) * Dm * N + dn, h, mask=mdn)
        steps = c0 + offs_c
        t = _token(steps, L, REVERSE)
        mc = steps < L
        mcd = mc[:, None] & md[None, :]
        mcn = mc[:, None] & mn[None, :]
        u = tl.load(u_ptr + pid_b * s_ub + t[:, None] * s_ul + offs_d[None, :] * s_ud, mask=mcd, other=0.0).to(
            tl.float32
        )
        dt = tl.load(dt_ptr + pid_b * s_tb + t[:, None] * s_tl + offs_d[None, :] * s_td, mask=mcd, other=0.0).to(
            tl.float32
        )
        dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mcd, dt, 0.0)
        Bt = tl.load(B_ptr + pid_b * s_Bb + t[:, None] * s_Bl + offs_n[None, :] * s_Bn, mask=mcn, other=0.0).to(
            tl.float32
        )
        Ct = tl.load(C_ptr + pid_b * s_Cb + t[:, None] * s_Cl + offs_n[None, :] * s_Cn, mask=mcn, other=0.0).to(
            tl.float32
        )
        decay = tl.exp(dt[:, :, None] * A[None, :, :])  # [CHUNK, BLOCK_D, BLOCK_N]
        inp = (dt * u)[:, :, None] * Bt[:, None, :]
        cum_decay, h_local = tl.associative_scan((decay, inp), 0, _combine)
        hs = h_local + cum_decay * h[None, :, :]
        y = tl.sum(hs * Ct[:, None, :], axis=2) + Dv[None, :] * u
        if HAS_Z:
            z = tl.load(z_ptr + pid_b * s_zb + t[:, None] * s_zl + offs_d[None, :] * s_zd, mask=mcd, other=0.0).to(
                tl.float32
            )
            y = y * z * _sigmoid(z)
        tl.store(out_ptr + pid_b * s_ob + t[:, None] * s_ol + offs_d[None, :], y.to(out_ptr.dtype.element_ty), mask=mcd)
        h = tl.sum(tl.where((offs_c == CHUNK - 1)[:, None, None], hs, 0.0), axis=0)  # the chunk's last state
    tl.store(last_ptr + pid_b * Dm * N + dn, h, mask=mdn)


@triton.jit
def _recompute_chunk(
    h,
    c,
    CK,
    L,
    scratch,
    blk,
    A,
    bias,
    u_row,
    dt_row,
    B_row,
    offs_d,
    offs_n,
    md,
    mn,
    s_ul,
    s_ud,
    s_tl,
    s_td,
    s_Bl,
    s_Bn,
    SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """States of chunk c from its checkpoint h: each step's incoming state to scratch."""
    for j in range(0, CK):
        i = c * CK + j
        if i < L:
            t = _token(i, L, REVERSE)
            tl.store(scratch + j * BLOCK_D * BLOCK_N + blk, h)
            u = tl.load(u_row + t * s_ul + offs_d * s_ud, mask=md, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + t * s_tl + offs_d * s_td, mask=md, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(B_row + t * s_Bl + offs_n * s_Bn, mask=mn, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]


@triton.jit
def _scan_bwd_kernel(
    u_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    ckpt_ptr,
    dout_ptr,
    dlast_ptr,
    du_ptr,
    ddt_ptr,
    dz_ptr,
    dA_ptr,
    dD_ptr,
    dB_ptr,
    dC_ptr,
    dh0_ptr,
    scratch_ptr,
    L,
    Dm,
    N,
    n_ck,
    CK,
    n_db,
    s_ub,
    s_ul,
    s_ud,
    s_tb,
    s_tl,
    s_td,
    s_Bb,
    s_Bl,
    s_Bn,
    s_Cb,
    s_Cl,
    s_Cn,
    s_zb,
    s_zl,
    s_zd,
    s_gb,
    s_gl,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # Outputs: du, ddt, dz [B, L, D] contiguous (ddt is the gradient of the raw delta);
    # dA [B, D, N] and dD [B, D] per batch row; dB, dC [B, L, n_db, N] per channel
    # block; dh0 [B, D, N]. scratch: [B, n_db, CK, BLOCK_D, BLOCK_N].
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md = offs_d < Dm
    mn = offs_n < N
    mdn = md[:, None] & mn[None, :]
    dn = offs_d[:, None] * N + offs_n[None, :]
    blk = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
    scratch = scratch_ptr + (pid_b * n_db + pid_d) * CK * BLOCK_D * BLOCK_N
    u_row, dt_row = u_ptr + pid_b * s_ub, dt_ptr + pid_b * s_tb
    B_row, C_row, z_row = B_ptr + pid_b * s_Bb, C_ptr + pid_b * s_Cb, z_ptr + pid_b * s_zb
    A = tl.load(A_ptr + dn, mask=mdn, other=0.0).to(tl.float32)
    Dv = _load_or_zeros(D_ptr, offs_d, md, HAS_D)  # zeros stand in for what is absent
    bias = _load_or_zeros(bias_ptr, offs_d, md, HAS_BIAS)
    G = _load_or_zeros(dlast_ptr + pid_b * Dm * N, dn, mdn, HAS_DLAST)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for cc in range(0, n_ck):
        c = n_ck - 1 - cc
        h = tl.load(ckpt_ptr + (pid_b * n_ck + c) * Dm * N + dn, mask=mdn, other=0.0)
        _recompute_chunk(
            h,
            c,
            CK,
            L,
            scratch,
            blk,
            A,
            bias,
            u_row,
            dt_row,
            B_row,
            offs_d,
            offs_n,
            md,
            mn,
            s_ul,
            s_ud,
            s_tl,
            s_td,
            s_Bl,
            s_Bn,
            SOFTPLUS,
            REVERSE,
            BLOCK_D,
            BLOCK_N,
        )
        tl.debug_barrier()
        for jj in range(0, CK):  # the adjoint recurrence, backwards through the chunk
            j = CK - 1 - jj
            i = c * CK + j
            if i < L:
                t = _token(i, L, REVERSE)
                h_prev = tl.load(scratch + j * BLOCK_D * BLOCK_N + blk)
                u = tl.load(u_row + t * s_ul + offs_d * s_ud, mask=md, other=0.0).to(tl.float32)
                raw = tl.load(dt_row + t * s_tl + offs_d * s_td, mask=md, other=0.0).to(tl.float32) + bias
                dt = raw
                if SOFTPLUS:
                    dt = _softplus(raw)
                Bt = tl.load(B_row + t * s_Bl + offs_n * s_Bn, mask=mn, other=0.0).to(tl.float32)
                Ct = tl.load(C_row + t * s_Cl + offs_n * s_Cn, mask=mn, other=0.0).to(tl.float32)
                g_out = tl.load(dout_ptr + pid_b * s_gb + t * s_gl + offs_d, mask=md, other=0.0).to(tl.float32)
                dA_t = tl.exp(dt[:, None] * A)
                h = dA_t * h_prev + (dt * u)[:, None] * Bt[None, :]
                tok = pid_b * L * Dm + t * Dm + offs_d  # du, ddt, dz: contiguous [B, L, D]
                dy = g_out
                if HAS_Z:
                    z = tl.load(z_row + t * s_zl + offs_d * s_zd, mask=md, other=0.0).to(tl.float32)
                    y = tl.sum(h * Ct[None, :], axis=1) + Dv * u
                    sz = _sigmoid(z)
                    tl.store(dz_ptr + tok, g_out * y * sz * (1.0 + z * (1.0 - sz)), mask=md)
                    dy = g_out * z * sz
                dy = tl.where(md, dy, 0.0)
                part = ((pid_b * L + t) * n_db + pid_d) * N + offs_n  # dB, dC of this block
                tl.store(dC_ptr + part, tl.sum(dy[:, None] * h, axis=0), mask=mn)
                G = G + dy[:, None] * Ct[None, :]
                dD_acc += dy * u
                gah = G * dA_t * h_prev
                dA_acc += gah * dt[:, None]
                ddt = tl.sum(gah * A + G * u[:, None] * Bt[None, :], axis=1)
                if SOFTPLUS:
                    ddt = ddt * _sigmoid(raw)
                tl.store(dB_ptr + part, tl.sum(G * (dt * u)[:, None], axis=0), mask=mn)
                tl.store(du_ptr + tok, tl.sum(G * Bt[None, :], axis=1) * dt + dy * Dv, mask=md)
                tl.store(ddt_ptr + tok, ddt, mask=md)
                G = G * dA_t
        tl.debug_barrier()  # the next chunk reuses the scratch rows
    tl.store(dh0_ptr + pid_b * Dm * N + dn, G, mask=mdn)
    tl.store(dA_ptr + pid_b * Dm * N + dn, dA_acc, mask=mdn)
    tl.store(dD_ptr + pid_b * Dm + offs_d, dD_acc, mask=md)


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, reverse, store_ckpt):
    Bsz, L, Dm = u.shape
    N = A.shape[1]
    BD = block_d(Bsz, Dm)
    BN = max(triton.next_power_of_2(N), 2)
    out = torch.empty(Bsz, L, Dm, device=u.device, dtype=u.dtype)
    last = torch.empty(Bsz, Dm, N, device=u.device, dtype=torch.float32)
    CK = CKPT_EVERY
    n_ck = triton.cdiv(L, CK)
    ckpt = (
        torch.empty(Bsz, n_ck, Dm, N, device=u.device, dtype=torch.float32) if store_ckpt else last
    )  # an unused pointer when not stored
    zz = z if z is not None else u
    grid = (Bsz, triton.cdiv(Dm, BD))
    chunk = math.gcd(16, CK)
    chunked = FORWARD_FORM == "chunked" and chunk >= 2
    kernel = _scan_fwd_chunked_kernel if chunked else _scan_fwd_kernel
    extra = dict(CHUNK=chunk) if chunked else {}
    kernel[grid](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else A,
        zz,
        delta_bias if delta_bias is not None else A,
        h0 if h0 is not None else last,
        out,
        last,
        ckpt,
        L,
        Dm,
        N,
        n_ck,
        CK,
        u.stride(0),
        u.stride(1),
        u.stride(2),
        delta.stride(0),
        delta.stride(1),
        delta.stride(2),
        B.stride(0),
        B.stride(1),
        B.stride(2),
        C.stride(0),
        C.stride(1),
        C.stride(2),
        zz.stride(0),
        zz.stride(1),
        zz.stride(2),
        out.stride(0),
        out.stride(1),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        HAS_H0=h0 is not None,
        SOFTPLUS=bool(softplus),
        REVERSE=bool(reverse),
        STORE_CKPT=bool(store_ckpt),
        BLOCK_D=BD,
        BLOCK_N=BN,
        num_warps=2 if BD <= 16 and not chunked else 4,
        **extra,
    )
    return out, last, ((ckpt, CK) if store_ckpt else None)


def _scan_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, CK, dout, dlast, softplus, reverse):
    Bsz, L, Dm = u.shape
    N = A.shape[1]
    BD = block_d(Bsz, Dm)
    BN = max(triton.next_power_of_2(N), 2)
    n_db = triton.cdiv(Dm, BD)
    n_ck = ckpt.shape[1]
    dev, f32 = u.device, torch.float32
    du = torch.empty(Bsz, L, Dm, device=dev, dtype=f32)
    ddt = torch.empty_like(du)
    dz = torch.empty_like(du) if z is not None else du
    dA = torch.empty(Bsz, Dm, N, device=dev, dtype=f32)
    dD = torch.empty(Bsz, Dm, device=dev, dtype=f32)
    dB = torch.empty(Bsz, L, n_db, N, device=dev, dtype=f32)
    dC = torch.empty_like(dB)
    dh0 = torch.empty(Bsz, Dm, N, device=dev, dtype=f32)
    scratch = torch.empty(Bsz, n_db, CK, BD, BN, device=dev, dtype=f32)
    zz = z if z is not None else u
    _scan_bwd_kernel[(Bsz, n_db)](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else A,
        zz,
        delta_bias if delta_bias is not None else A,
        ckpt,
        dout,
        dlast if dlast is not None else dh0,
        du,
        ddt,
        dz,
        dA,
        dD,
        dB,
        dC,
        dh0,
        scratch,
        L,
        Dm,
        N,
        n_ck,
        CK,
        n_db,
        u.stride(0),
        u.stride(1),
        u.stride(2),
        delta.stride(0),
        delta.stride(1),
        delta.stride(2),
        B.stride(0),
        B.stride(1),
        B.stride(2),
        C.stride(0),
        C.stride(1),
        C.stride(2),
        zz.stride(0),
        zz.stride(1),
        zz.stride(2),
        dout.stride(0),
        dout.stride(1),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        HAS_DLAST=dlast is not None,
        SOFTPLUS=bool(softplus),
        REVERSE=bool(reverse),
        BLOCK_D=BD,
        BLOCK_N=BN,
        num_warps=2 if BD <= 16 else 4,
    )
    return du, ddt, dz, dA.sum(0), dD.sum(0), dB.sum(2), dC.sum(2), dh0


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, reverse):
        out, last, (ckpt, every) = _scan_forward(
            u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, reverse, store_ckpt=True
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.flags = (softplus, reverse, every)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        softplus, reverse, every = ctx.flags
        if dout is None:
            dout = torch.zeros_like(u)
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        du, ddt, dz, dA, dD, dB, dC, dh0 = _scan_backward(
            u, delta, A, B, C, D, z, delta_bias, ckpt, every, dout, dlast, softplus, reverse
        )
        need = ctx.needs_input_grad
        return (
            du.to(u.dtype),
            ddt.to(delta.dtype),
            dA.to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            dD.to(D.dtype) if D is not None else None,
            dz.to(z.dtype) if z is not None else None,
            ddt.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None and need[7] else None,
            dh0 if need[8] else None,
            None,
            None,
        )


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def check_device(t: torch.Tensor) -> None:
    """CUDA tensors, or CPU tensors under the interpreter: anything else is a clear error."""
    if t.is_cuda and not INTERPRET:
        return
    if INTERPRET and INTERPRETER_PROBLEM:
        raise RuntimeError(f"scan backend 'triton': {INTERPRETER_PROBLEM}")
    if INTERPRET and t.device.type in ("cpu", "cuda"):
        return
    if t.device.type == "cpu":
        raise ValueError(
            "scan backend 'triton' got CPU tensors: set TRITON_INTERPRET=1 in the "
            "environment (before the first Triton scan of the process) to run the "
            "Triton kernels on the CPU through Triton's interpreter"
        )
    raise ValueError(f"scan backend 'triton' needs CUDA tensors, got {t.device}")


def selective_scan_triton(
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
):
    """The contract of `dispatch.selective_scan` on the Triton kernels."""
    check_device(u)
    A = A.float().contiguous()
    D = None if D is None else D.float().contiguous()
    delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    if _needs_grad(u, delta, A, B, C, D, z, delta_bias, h0):
        out, last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, bool(delta_softplus), bool(reverse))
    else:
        out, last, _ = _scan_forward(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, reverse, store_ckpt=False)
    return (out, last) if return_last_state else out


@triton.jit
def _conv_fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    tail_ptr,
    out_ptr,
    L,
    Dm,
    s_xb,
    s_xl,
    s_xd,
    s_ob,
    s_ol,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_TAIL: tl.constexpr,
    SILU: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # step s (scan order) reads the padded input xp[s .. s+K-1], xp = tail ++ x in scan order
    pid_b = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    ms = offs_s < L
    md = offs_d < Dm
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for k in tl.static_range(K):
        p = offs_s + k  # position in xp
        src = p - (K - 1)
        in_x = src >= 0
        if REVERSE:
            tok = L - 1 - src
        else:
            tok = src
        m = (ms & in_x)[:, None] & md[None, :]
        xv = tl.load(x_ptr + pid_b * s_xb + tok[:, None] * s_xl + offs_d[None, :] * s_xd, mask=m, other=0.0).to(
            tl.float32
        )
        if HAS_TAIL:
            mt = (ms & (p < K - 1))[:, None] & md[None, :]
            xv += tl.load(tail_ptr + (pid_b * Dm + offs_d[None, :]) * (K - 1) + p[:, None], mask=mt, other=0.0).to(
                tl.float32
            )
        wk = tl.load(w_ptr + offs_d * K + k, mask=md, other=0.0).to(tl.float32)
        acc += xv * wk[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * _sigmoid(acc)
    if REVERSE:
        tok_out = L - 1 - offs_s
    else:
        tok_out = offs_s
    tl.store(
        out_ptr + pid_b * s_ob + tok_out[:, None] * s_ol + offs_d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=ms[:, None] & md[None, :],
    )


def _conv_forward(x, w, bias, tail, silu, reverse):
    Bsz, L, Dm = x.shape
    K = w.shape[-1]
    out = torch.empty(Bsz, L, Dm, device=x.device, dtype=x.dtype)
    BL, BD = 32, 32
    grid = (Bsz, triton.cdiv(L, BL), triton.cdiv(Dm, BD))
    _conv_fwd_kernel[grid](
        x,
        w,
        bias if bias is not None else w,
        tail if tail is not None else w,
        out,
        L,
        Dm,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        out.stride(0),
        out.stride(1),
        K=K,
        HAS_BIAS=bias is not None,
        HAS_TAIL=tail is not None,
        SILU=bool(silu),
        REVERSE=bool(reverse),
        BLOCK_L=BL,
        BLOCK_D=BD,
        num_warps=4,
    )
    return out


def _final_tail(x, tail, K, reverse):
    """The last K-1 inputs in scan order, [B, D, K-1] (read off x, never a full copy)."""
    Bsz, L, Dm = x.shape
    xs = x[:, : K - 1].flip(1) if reverse else x[:, max(L - (K - 1), 0) :]
    head = tail if tail is not None else x.new_zeros(Bsz, Dm, K - 1)
    return torch.cat([head.to(x.dtype), xs.transpose(1, 2)], dim=2)[:, :, -(K - 1) :]


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, tail, silu, reverse):
        ctx.save_for_backward(x, w, bias, tail)
        ctx.flags = (silu, reverse)
        return _conv_forward(x, w, bias, tail, silu, reverse)

    @staticmethod
    def backward(ctx, dout):
        x, w, bias, tail = ctx.saved_tensors
        silu, reverse = ctx.flags
        inputs = [
            t.detach().requires_grad_(need) if t is not None else None
            for t, need in zip((x, w, bias, tail), ctx.needs_input_grad)
        ]
        with torch.enable_grad():
            # in float32 as the forward computed (x may be bf16 beside a float32 weight);
            # each gradient comes back in its input's dtype through the casts
            f32 = [None if t is None else t.float() for t in inputs]
            out = causal_conv1d_ref(*f32, "silu" if silu else None, reverse=reverse)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, dout.float()))
        return (*(next(grads) if t is not None and t.requires_grad else None for t in inputs), None, None)


def causal_conv1d_triton(
    x, weight, bias=None, initial_tail=None, activation=None, return_final_tail=False, reverse=False
):
    """The contract of `dispatch.causal_conv1d` on the Triton kernel."""
    check_device(x)
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r} (silu or None)")
    Dm = x.shape[-1]
    K = weight.shape[-1]
    w = weight.reshape(Dm, K).contiguous()
    bias = None if bias is None else bias.contiguous()
    tail = None if initial_tail is None else initial_tail.contiguous()
    silu = activation is not None
    if _needs_grad(x, w, bias, tail):
        out = _CausalConv1dFn.apply(x, w, bias, tail, silu, bool(reverse))
    else:
        out = _conv_forward(x, w, bias, tail, silu, reverse)
    if return_final_tail:
        return out, _final_tail(x, tail, K, reverse)
    return out
