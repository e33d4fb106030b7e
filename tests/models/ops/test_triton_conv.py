"""The Triton causal depthwise conv (triton_scan.py) against the reference, on CPU
tensors through Triton's interpreter. Its tiles are 32 tokens x 32 channels: L = 33 and
D = 33 cross both edges; L < K-1 keeps part of the initial tail in the final tail."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.ops import assert_close, conv_inputs
from vmstream.models.ops import causal_conv1d_ref


def _inputs(use_bias=True, use_tail=True, **kw):
    inp = conv_inputs(**kw)
    if not use_bias:
        inp["bias"] = None
    if not use_tail:
        inp["initial_tail"] = None
    return inp


@pytest.mark.parametrize("L,D", [(1, 17), (2, 17), (33, 33), (70, 40)])
@pytest.mark.parametrize("reverse", [False, True])
def test_sizes_across_tile_edges(triton_ops, L, D, reverse):
    inp = _inputs(Bsz=2, L=L, D=D, K=4, seed=1)
    y_ref, t_ref = causal_conv1d_ref(**inp, activation="silu", return_final_tail=True, reverse=reverse)
    y, t = triton_ops.causal_conv1d_triton(**inp, activation="silu", return_final_tail=True, reverse=reverse)
    assert_close(y, y_ref, what="out")
    assert_close(t, t_ref, what="final_tail")


def test_half_inputs_beside_a_float32_weight(triton_ops):
    """bf16 x with a float32 weight, as under autocast: out and dx in bf16, dweight in
    float32, all as close to float32 math on the same rounded x as bf16 allows."""
    inp = _inputs(L=9, D=20)
    x = inp["x"].to(torch.bfloat16).requires_grad_(True)
    w = inp["weight"].clone().requires_grad_(True)
    y = triton_ops.causal_conv1d_triton(x, w, inp["bias"], inp["initial_tail"], "silu")
    y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    x_ref = x.detach().float().requires_grad_(True)
    w_ref = inp["weight"].clone().requires_grad_(True)
    ref = causal_conv1d_ref(x_ref, w_ref, inp["bias"], inp["initial_tail"], "silu")
    ref.square().sum().backward()
    assert_close(y, ref, rtol=1e-2, atol_rel=1e-2, what="bf16 out")
    assert_close(x.grad, x_ref.grad, rtol=2e-2, atol_rel=2e-2, what="bf16 dx")
    assert_close(w.grad, w_ref.grad, rtol=2e-2, atol_rel=2e-2, what="dweight")
