"""Scan and conv ops with interchangeable backends.

`selective_scan` and `causal_conv1d` are the only entry points the model uses; the
backend is chosen per call (see `dispatch.py`): the PyTorch reference (the oracle), a
fast fused CPU kernel, vmstream's Triton kernels on CUDA (`triton_scan.py`), or
mamba-ssm / causal-conv1d on CUDA where asked for.
"""
from .reference import causal_conv1d_ref, selective_scan_ref
from .dispatch import available_backends, causal_conv1d, selective_scan

__all__ = [
    "selective_scan",
    "causal_conv1d",
    "selective_scan_ref",
    "causal_conv1d_ref",
    "available_backends",
]
