"""Exact initial-state injection around scans that start from zero.

mamba-ssm's CUDA `selective_scan_fn` has no initial state. The scan is linear in the
state, so starting from h0 adds a term that depends only on h0, Δ, A and C:

    y_t(h0) = y_t(0) + C_t · (exp(A · S_t) ⊙ h0)       (before the z gate)
    h_L(h0) = h_L(0) + exp(A · S_L) ⊙ h0

with S_t the sum of Δ over the steps taken up to and including token t (tokens 0..t,
or t..L-1 when the scan runs in reverse) and S_L the sum over all tokens. These pure
functions compute those terms in token-major layout; `cuda.py` applies them around the
kernel and the tests check them against the reference scan on the CPU.

`final_state_from_zero` is h_L(0) as a differentiable expression, for training on
CUDA: mamba-ssm's kernel returns its last state without a gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 256  # tokens per [B, chunk, D, N] intermediate


def effective_delta(delta: Tensor, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False) -> Tensor:
    """Δ as the scan uses it: float32, plus delta_bias, through softplus when asked."""
    d = delta.float()
    if delta_bias is not None:
        d = d + delta_bias.float()
    return F.softplus(d) if delta_softplus else d


def cumulative_delta(delta_eff: Tensor, reverse: bool = False) -> Tensor:
    """S [B, L, D]: Δ summed over the steps up to and including each token, in scan
    order. Accumulated in float64: over thousands of tokens a float32 running sum
    drifts by ~1e-4 relative, which exp(A·S) would amplify."""
    d = delta_eff.double()
    s = d.flip(1).cumsum(1).flip(1) if reverse else d.cumsum(1)
    return s.float()


def initial_state_output(
    delta_eff: Tensor, A: Tensor, C: Tensor, h0: Tensor, reverse: bool = False, chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """The output term of h0, [B, L, D]: C_t · (exp(A S_t) ⊙ h0), before the z gate.

    delta_eff [B, L, D] (see `effective_delta`), A [D, N], C [B, L, N], h0 [B, D, N].
    The [B, chunk, D, N] decay is built `chunk` tokens at a time.
    """
    S = cumulative_delta(delta_eff, reverse)
    A = A.float()
    h0 = h0.float()
    C = C.float()
    parts = []
    for l0 in range(0, S.shape[1], chunk):
        decay = torch.exp(S[:, l0 : l0 + chunk, :, None] * A)  # [B, c, D, N]
        parts.append(torch.einsum("bldn,bdn,bln->bld", decay, h0, C[:, l0 : l0 + chunk]))
    return torch.cat(parts, dim=1)


def initial_state_final(delta_eff: Tensor, A: Tensor, h0: Tensor) -> Tensor:
    """The final-state term of h0, [B, D, N]: exp(A · ΣΔ) ⊙ h0 (any scan direction)."""
    total = delta_eff.double().sum(1).float()  # [B, D]
    return torch.exp(total[:, :, None] * A.float()) * h0.float()


def _final_chunk(delta_c: Tensor, u_c: Tensor, B_c: Tensor, after_c: Tensor, A: Tensor) -> Tensor:
    # Σ_t exp(A · (Δ summed over the steps after t)) ⊙ Δ_t u_t B_t over one chunk of tokens
    decay = torch.exp(after_c[..., None] * A)  # [B, c, D, N]
    return torch.einsum("bldn,bld,bln->bdn", decay, delta_c * u_c, B_c)


def final_state_from_zero(
    u: Tensor, delta_eff: Tensor, A: Tensor, B: Tensor, reverse: bool = False, chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """h_L of a scan started from zero, [B, D, N], as a differentiable expression:
    h_L = Σ_t exp(A · Σ_{steps after t} Δ) ⊙ Δ_t u_t B_t.

    The exponent is never positive for A < 0, so nothing overflows. Under autograd each
    chunk is checkpointed: memory stays O(B·chunk·D·N) in the backward too.
    """
    if reverse:  # the last step of a reverse scan is token 0: flip and scan forward
        u, delta_eff, B = u.flip(1), delta_eff.flip(1), B.flip(1)
    u, delta_eff, A, B = u.float(), delta_eff.float(), A.float(), B.float()
    d64 = delta_eff.double()
    # Σ over steps after t = total - inclusive cumsum, formed in float64 (a difference
    # of two large sums).
    after = (d64.sum(1, keepdim=True) - d64.cumsum(1)).float()
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta_eff, A, B))
    h = None
    for l0 in range(0, u.shape[1], chunk):
        sl = slice(l0, l0 + chunk)
        args = (delta_eff[:, sl], u[:, sl], B[:, sl], after[:, sl], A)
        part = checkpoint(_final_chunk, *args, use_reentrant=False) if grad else _final_chunk(*args)
        h = part if h is None else h + part
    return h
