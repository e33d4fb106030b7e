"""The CUDA backend: mamba-ssm's `selective_scan_fn` and causal-conv1d's `causal_conv1d_fn`.

Imported lazily: nothing here imports mamba_ssm, causal_conv1d or triton until a scan
actually runs on CUDA tensors (`status()` imports them only when a GPU is present).

Both kernels want channel-major [B, D, L] tensors and start from zero. Around them:
- transposes to and from the token-major [B, L, D] contract;
- `reverse=True` flips the token axis (the kernels only scan forward);
- the carried SSM state is added exactly (`injection.py`): the kernel runs without z,
  the h0 term is added to y, then the z gate is applied; the final state gets
  exp(A·ΣΔ) ⊙ h0;
- the conv tail is prepended to the input and the final tail is read off its end.
mamba-ssm returns its last state without a gradient; when gradients are on and the
last state is asked for, it is recomputed as a differentiable expression instead.

This path cannot be run on the CPU-only development machine; the injection math is
tested on the CPU around the reference scan (tests/test_ops_injection.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import injection


def status() -> str:
    """ "ok", or why the CUDA backend cannot run here."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as e:  # ImportError, or a broken build raising at import
        return f"mamba-ssm not importable ({type(e).__name__}: {e}); pip install 'vmstream[mamba]'"
    try:
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
    except Exception as e:
        return f"causal-conv1d not importable ({type(e).__name__}: {e}); pip install 'vmstream[mamba]'"
    return "ok"


def selective_scan_cuda(
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
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    dtype_in = u.dtype
    if reverse:
        u, delta, B, C = u.flip(1), delta.flip(1), B.flip(1), C.flip(1)
        z = None if z is None else z.flip(1)

    # [B, L, X] -> [B, X, L] with the token axis contiguous, as the kernel requires;
    # delta, B, C must share u's dtype there (A, D, delta_bias are float32).
    def chan(t):
        return t.to(dtype_in).transpose(1, 2).contiguous()

    y, last = selective_scan_fn(
        chan(u),
        chan(delta),
        A.float().contiguous(),
        chan(B),
        chan(C),
        None if D is None else D.float().contiguous(),
        None,
        None if delta_bias is None else delta_bias.float().contiguous(),
        bool(delta_softplus),
        return_last_state=True,
    )
    y = y.transpose(1, 2).float()  # [B, L, D]
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias, initial_state)
    )
    if initial_state is not None or (return_last_state and need_grad):
        d_eff = injection.effective_delta(delta, delta_bias, delta_softplus)
    if return_last_state and need_grad:
        last = injection.final_state_from_zero(u, d_eff, A, B)
    if initial_state is not None:
        y = y + injection.initial_state_output(d_eff, A, C, initial_state)
        if return_last_state:
            last = last.float() + injection.initial_state_final(d_eff, A, initial_state)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype_in)
    if reverse:
        y = y.flip(1)
    return (y, last.float()) if return_last_state else y


def causal_conv1d_cuda(
    x, weight, bias=None, initial_tail=None, activation=None, return_final_tail=False, reverse=False
):
    from causal_conv1d import causal_conv1d_fn

    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r} (silu or None)")
    Bsz, L, D = x.shape
    w = weight.reshape(D, weight.shape[-1]).to(x.dtype).contiguous()
    K = w.shape[-1]
    if reverse:
        x = x.flip(1)
    xt = x.transpose(1, 2)  # [B, D, L]
    tail = xt.new_zeros(Bsz, D, K - 1) if initial_tail is None else initial_tail.to(x.dtype)
    xp = torch.cat([tail, xt], dim=2).contiguous()  # the tail goes in front
    out = causal_conv1d_fn(xp, w, None if bias is None else bias.to(x.dtype).contiguous(), activation=activation)[
        ..., K - 1 :
    ]
    out = out.transpose(1, 2)  # [B, L, D] view; transposing back for the scan is free
    if reverse:
        out = out.flip(1)
    if return_final_tail:
        return out, xp[:, :, xp.shape[2] - (K - 1) :]
    return out
