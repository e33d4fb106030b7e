"""Scan and conv ops with interchangeable backends.

`mamba_inner` (a Mamba layer between in_proj and out_proj, `mixer.py`) is the entry point
the model uses, built on `selective_scan` and `causal_conv1d`; the
backend is chosen per call (see `dispatch.py`): the PyTorch reference (the oracle), a
fast fused CPU kernel (numba where no compiler exists), or vmstream's Triton kernels on
CUDA (`triton_scan.py`).
"""

from .dispatch import available_backends, causal_conv1d, selective_scan
from .mixer import MixerDirection, mamba_inner
from .norm import add_rms_norm
from .reference import causal_conv1d_ref, selective_scan_ref

__all__ = [
    "selective_scan",
    "causal_conv1d",
    "selective_scan_ref",
    "causal_conv1d_ref",
    "available_backends",
    "mamba_inner",
    "MixerDirection",
    "add_rms_norm",
]
