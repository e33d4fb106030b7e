"""Numeric precision of a model's matmuls: "fp32" (the default, exact to the official
outputs) or "bf16".

In bf16 the big matmuls (patch embedding, in_proj, out_proj: 84 % of a segment's matmul
work) take bf16 inputs and weights and return fp32. On CPU, the fused Mamba layer kernel
(`ops.mamba_inner`) runs its bf16 mode too: x_proj and dt_proj on bf16-rounded operands
(float32 products and sums, on AMX tiles where the CPU has them), and the scan's decay
exp(Δ·A), its SiLUs and softplus with a degree-3 exponential (relative error <= 1.3e-4,
exact to first order for long-memory channels), all below the 2^-9 rounding that bf16
inputs already bring.
Everything else stays fp32: the norms and the residual stream, the depthwise conv, the
selective scan's state and accumulation and the sum of its two directions, the carried
StreamState, the head. On CPUs with AVX512-BF16 or AMX the mode runs about 1.6x as fast
as fp32; the drift against fp32 is measured by tests/models/test_precision.py and
`benchmarks/model_speed.py` (`bf16_embedding_cosine_min=`) and stated in the README.

The change is in place and one way in effect: the weights are rounded to bf16, so going
back to "fp32" keeps the rounded values. Load the model again for exact fp32.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .videomamba import PRECISIONS, Mamba, precision_dtype, set_matmul_dtype

__all__ = ["PRECISIONS", "set_precision", "precision_of", "bf16_is_native"]

log = logging.getLogger(__name__)


def bf16_is_native() -> bool:
    """Whether this CPU runs bf16 matmuls in hardware (AVX512-BF16 or AMX); elsewhere
    oneDNN emulates them and bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def set_precision(model: nn.Module, precision: str) -> nn.Module:
    """Run `model`'s VideoMamba matmuls in `precision` ("fp32" or "bf16"); in place, returns it.

    The way to change a built or loaded model (a new one takes `precision=` in its
    constructor). Works on any module containing VideoMamba mixers and patch embeddings
    (the classifier, the video-text model's vision tower, the pretraining student): each
    one's declared `matmul_dtype` is set and its big matmuls' weights cast; other modules
    are left as they are.
    """
    dtype = precision_dtype(precision)
    if not set_matmul_dtype(model, dtype):
        raise ValueError(f"{type(model).__name__} has no VideoMamba layers to set to {precision}")
    if dtype is torch.bfloat16 and not bf16_is_native() and _on_cpu(model):
        log.warning(
            "precision bf16: this CPU has no native bf16 matmuls (AVX512-BF16/AMX); "
            "they are emulated and slower than fp32"
        )
    return model


def precision_of(model: nn.Module) -> str:
    """The precision of `model`'s VideoMamba matmuls ("fp32" for a model without any)."""
    for m in model.modules():
        if isinstance(m, Mamba):
            return next(name for name, d in PRECISIONS.items() if d == m.matmul_dtype)
    return "fp32"


def _on_cpu(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is None or p.device.type == "cpu"
