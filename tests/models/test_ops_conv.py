"""The fast causal depthwise conv backends (`BACKENDS`: "cpu" C++, "numba", "triton") against the reference."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.ops import BACKENDS, assert_close, conv_inputs, leaf_copies, use_backend
from vmstream.models.ops import causal_conv1d, causal_conv1d_ref


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each fast backend (`tests.fixtures.ops.BACKENDS`)."""
    return use_backend(request.param, monkeypatch)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("K", [4, 3])
@pytest.mark.parametrize(
    "activation,use_bias,use_tail",
    [("silu", True, True), (None, False, False), ("silu", False, True), (None, True, False)],
)
def test_forward_matches_reference(backend, reverse, K, activation, use_bias, use_tail):
    inp = conv_inputs(K=K)
    if not use_bias:
        inp["bias"] = None
    if not use_tail:
        inp["initial_tail"] = None
    y_ref, t_ref = causal_conv1d_ref(**inp, activation=activation, return_final_tail=True, reverse=reverse)
    y, t = causal_conv1d(**inp, activation=activation, return_final_tail=True, reverse=reverse, backend=backend)
    assert_close(y, y_ref, what="out")
    assert_close(t, t_ref, what="final_tail")


@pytest.mark.parametrize("L,D", [(1, 17), (2, 17), (5, 17), (33, 33), (70, 40)])
@pytest.mark.parametrize("reverse", [False, True])
def test_sizes_short_and_across_block_edges(backend, L, D, reverse):
    """With L < K-1 the final tail still holds part of the initial tail; L = 33 and D = 33
    cross both edges of Triton's 32 x 32 tiles, 70 x 40 crosses several."""
    inp = conv_inputs(Bsz=2, L=L, D=D, K=4, seed=1)
    y_ref, t_ref = causal_conv1d_ref(**inp, activation="silu", return_final_tail=True, reverse=reverse)
    y, t = causal_conv1d(**inp, activation="silu", return_final_tail=True, reverse=reverse, backend=backend)
    assert_close(y, y_ref, what="out")
    assert_close(t, t_ref, what="final_tail")


def test_accepts_conv1d_weight_shape(backend):
    inp = conv_inputs(D=16)
    w3 = inp["weight"][:, None, :]  # nn.Conv1d(groups=D).weight: [D, 1, K]
    y = causal_conv1d(inp["x"], w3, inp["bias"], inp["initial_tail"], "silu", backend=backend)
    assert_close(y, causal_conv1d_ref(**inp, activation="silu"), what="out")


def test_half_inputs_beside_a_float32_weight(backend):
    """bf16 x with a float32 weight, as under autocast: out and dx in bf16, dweight in
    float32, all as close to float32 math on the same rounded x as bf16 allows."""
    inp = conv_inputs(L=9, D=20)
    x = inp["x"].to(torch.bfloat16).requires_grad_(True)
    w = inp["weight"].clone().requires_grad_(True)
    y = causal_conv1d(x, w, inp["bias"], inp["initial_tail"], "silu", backend=backend)
    y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    x_ref = x.detach().float().requires_grad_(True)
    w_ref = inp["weight"].clone().requires_grad_(True)
    ref = causal_conv1d_ref(x_ref, w_ref, inp["bias"], inp["initial_tail"], "silu")
    ref.square().sum().backward()
    assert_close(y, ref, rtol=1e-2, atol_rel=1e-2, what="bf16 out")
    assert_close(x.grad, x_ref.grad, rtol=2e-2, atol_rel=2e-2, what="bf16 dx")
    assert_close(w.grad, w_ref.grad, rtol=2e-2, atol_rel=2e-2, what="dweight")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("K,L", [(4, 23), (3, 9), (4, 2)])
def test_gradients_match_reference(backend, reverse, K, L):
    """Gradients of x, weight, bias and the initial tail, with the loss on the output and
    on the final tail (which is a copy of inputs, so its gradient lands on them)."""
    base = conv_inputs(L=L, K=K, seed=2)
    g = torch.Generator().manual_seed(3)
    gy = torch.randn(2, L, 20, generator=g)
    gt = torch.randn(2, 20, K - 1, generator=g)
    grads = []
    for fn in (lambda **a: causal_conv1d(**a, backend=backend), causal_conv1d_ref):
        inp = leaf_copies(base)
        y, t = fn(**inp, activation="silu", return_final_tail=True, reverse=reverse)
        ((y * gy).sum() + (t * gt).sum()).backward()
        grads.append({k: v.grad for k, v in inp.items()})
    for k in base:
        assert_close(grads[0][k], grads[1][k], rtol=1e-3, atol_rel=1e-4, what=f"d{k}")


@pytest.mark.parametrize("reverse", [False, True])
def test_pieces_equal_whole(backend, reverse):
    inp = conv_inputs(L=30, seed=4)
    whole, tail = causal_conv1d(**inp, activation="silu", return_final_tail=True, reverse=reverse, backend=backend)
    pieces = [slice(0, 11), slice(11, 30)]
    if reverse:
        pieces = pieces[::-1]
    t = inp["initial_tail"]
    outs = {}
    for sl in pieces:
        outs[sl.start], t = causal_conv1d(
            inp["x"][:, sl],
            inp["weight"],
            inp["bias"],
            t,
            "silu",
            return_final_tail=True,
            reverse=reverse,
            backend=backend,
        )
    assert_close(torch.cat([outs[0], outs[11]], dim=1), whole, what="out")
    assert_close(t, tail, what="final_tail")
