"""The Triton selective scan (triton_scan.py) against the reference, on CPU tensors
through Triton's interpreter (see conftest.py).

Block edges crossed: D = 20 spans two channel blocks of 16 (the second partial), N = 5
pads to a state block of 8, and with checkpoints every 8 steps L = 1, 8, 9 and 19 are
one partial chunk, exactly one chunk, one chunk plus a step, and two full chunks plus a
partial one. The interpreter is slow (~10 ms a step per program): shapes stay small.
"""
from __future__ import annotations

import pytest
import torch

from tests.fixtures.ops import SCAN_INPUTS, assert_close, leaf_copies, pick, scan_inputs
from vmstream.models.ops import dispatch, selective_scan, selective_scan_ref

FEATURES = [  # (D skip, z gate, delta_bias + softplus, initial state)
    (True, True, True, True),
    (False, False, False, False),
    (True, False, True, False),
    (False, True, False, True),
]


def _inputs(Bsz=1, L=19, D=20, N=5, seed=0, features=FEATURES[0]):
    use_D, use_z, use_bias, use_h0 = features
    inp = pick(scan_inputs(Bsz=Bsz, L=L, D=D, N=N, seed=seed), use_D=use_D, use_z=use_z,
               use_bias=use_bias, use_h0=use_h0)
    if not use_bias:  # without softplus Δ must still be a sensible step size
        inp["delta"] = inp["delta"].abs() * 0.3
    return inp, use_bias


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("features", FEATURES)
def test_forward_matches_reference(triton_ops, reverse, features):
    inp, softplus = _inputs(Bsz=2, L=9, features=features)
    y, last = triton_ops.selective_scan_triton(**inp, delta_softplus=softplus, return_last_state=True,
                                               reverse=reverse)
    y_ref, last_ref = selective_scan_ref(**inp, delta_softplus=softplus, return_last_state=True,
                                         reverse=reverse)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


@pytest.mark.parametrize("L", [1, 8, 9, 19])
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_across_chunk_edges(triton_ops, L, reverse):
    inp, _ = _inputs(L=L, seed=1)
    y, last = triton_ops.selective_scan_triton(**inp, delta_softplus=True, return_last_state=True,
                                               reverse=reverse)
    y_ref, last_ref = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True,
                                         reverse=reverse)
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_a_float32_state(triton_ops, dtype):
    """bf16/fp16 inputs: out in the input's dtype, the state in float32, both as close to
    the float32 reference (on the same rounded inputs) as one final rounding allows."""
    inp, _ = _inputs(L=9, seed=2)
    low = {k: (v.to(dtype) if k in ("u", "delta", "z", "B", "C") and v is not None else v)
           for k, v in inp.items()}
    y, last = triton_ops.selective_scan_triton(**low, delta_softplus=True, return_last_state=True)
    assert y.dtype == dtype and last.dtype == torch.float32
    y_ref, last_ref = selective_scan_ref(**{k: v.float() if v is not None else None for k, v in low.items()},
                                         delta_softplus=True, return_last_state=True)
    assert_close(last, last_ref, what="last_state")
    assert_close(y, y_ref, rtol=1e-2, atol_rel=1e-2, what="out")


def test_huge_delta_forgets_exactly(triton_ops):
    """exp(Δ·A) of a huge Δ is exactly 0 (never NaN): the state restarts from Δ·u·B."""
    inp, _ = _inputs(L=6, D=16, seed=4)
    inp["delta"] = torch.full_like(inp["delta"], 1e4)
    inp["delta"][:, ::3] = 1e30
    y, last = triton_ops.selective_scan_triton(**inp, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**inp, return_last_state=True)
    assert torch.isfinite(y).all()
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("features", [FEATURES[0], FEATURES[1]])
def test_gradients_match_reference(triton_ops, reverse, features):
    """Every input's gradient, the loss on the output and on the last state (truncated
    BPTT carries the state), across three checkpoint chunks and two channel blocks."""
    base, softplus = _inputs(L=19, seed=5, features=features)
    g = torch.Generator().manual_seed(6)
    gy = torch.randn(1, 19, 20, generator=g)
    gl = torch.randn(1, 20, 5, generator=g)
    grads = []
    for fn in (triton_ops.selective_scan_triton, selective_scan_ref):
        inp = leaf_copies(base)
        y, last = fn(**inp, delta_softplus=softplus, return_last_state=True, reverse=reverse)
        ((y * gy).sum() + (last * gl).sum()).backward()
        grads.append({k: v.grad for k, v in inp.items() if v is not None})
    got, ref = grads
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] is not None, f"no gradient for {k}"
        assert_close(got[k], ref[k], rtol=1e-3, atol_rel=1e-4, what=f"d{k}")


def test_gradient_through_last_state_only(triton_ops):
    """A loss on the carried state alone reaches every input that shapes it."""
    base = scan_inputs(Bsz=1, L=10, D=16, N=5, seed=7)
    grads = []
    for fn in (triton_ops.selective_scan_triton, selective_scan_ref):
        inp = leaf_copies(base)
        _, last = fn(**inp, delta_softplus=True, return_last_state=True)
        (last ** 2).sum().backward()
        grads.append({k: v.grad for k, v in inp.items()})
    for k in SCAN_INPUTS:
        got, ref = grads[0][k], grads[1][k]
        if ref is None:  # C, D and z act on the output only
            assert k in ("C", "D", "z") and (got is None or got.abs().max() == 0), k
            continue
        assert_close(got, ref, rtol=1e-3, atol_rel=1e-4, what=f"d{k}")


@pytest.mark.parametrize("reverse", [False, True])
def test_pieces_equal_whole_through_dispatch(triton_ops, reverse):
    """The streaming mode through `selective_scan(backend="triton")`: scanning in pieces
    and carrying the state equals one pass."""
    inp = scan_inputs(Bsz=1, L=12, D=16, N=5, seed=8)
    whole, last = selective_scan(**inp, delta_softplus=True, return_last_state=True,
                                 reverse=reverse, backend="triton")
    pieces = [slice(0, 5), slice(5, 12)]
    if reverse:  # a reverse scan meets the later tokens first
        pieces = pieces[::-1]
    h, outs = inp["initial_state"], {}
    for sl in pieces:
        part = {k: inp[k][:, sl] for k in ("u", "delta", "B", "C", "z")}
        outs[sl.start], h = selective_scan(**part, A=inp["A"], D=inp["D"], delta_bias=inp["delta_bias"],
                                           initial_state=h, delta_softplus=True,
                                           return_last_state=True, reverse=reverse, backend="triton")
    assert_close(torch.cat([outs[0], outs[5]], dim=1), whole, what="out")
    assert_close(h, last, what="last_state")


def test_out_accumulates_the_backward_direction(triton_ops):
    """The bidirectional block's call: the reverse scan adds into the forward output."""
    inp = scan_inputs(Bsz=1, L=7, D=16, N=5, seed=9)
    expect = (selective_scan_ref(**inp, delta_softplus=True)
              + selective_scan_ref(**pick(inp, use_h0=False), delta_softplus=True, reverse=True))
    with torch.no_grad():
        y = selective_scan(**inp, delta_softplus=True, backend="triton")
        y2 = selective_scan(**pick(inp, use_h0=False), delta_softplus=True, reverse=True,
                            out=y, accumulate=True, backend="triton")
    assert y2 is y
    assert_close(y, expect, what="fwd + bwd")


def test_numpy_too_new_for_the_interpreter_is_a_clear_error(triton_ops, monkeypatch):
    monkeypatch.setattr(triton_ops, "INTERPRETER_PROBLEM", "install numpy<2.4")
    inp, _ = _inputs(L=2, D=16)
    with pytest.raises(RuntimeError, match="scan backend 'triton': install numpy<2.4"):
        triton_ops.selective_scan_triton(**inp)
    assert dispatch  # imported for the fixture's reset


@pytest.mark.parametrize("L", [1, 8, 9, 19])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("features", [FEATURES[0], FEATURES[1]])
def test_chunked_form_matches_reference(triton_ops, monkeypatch, L, reverse, features):
    """The chunked forward (tl.associative_scan over 8 steps here, as the checkpoint
    interval is 8): partial chunks, the carried state, and the checkpoints it stores for
    the backward, whose gradients must come out the same."""
    monkeypatch.setattr(triton_ops, "FORWARD_FORM", "chunked")
    base, softplus = _inputs(Bsz=2, L=L, seed=11, features=features)
    outs = []
    for fn in (triton_ops.selective_scan_triton, selective_scan_ref):
        inp = leaf_copies(base)
        y, last = fn(**inp, delta_softplus=softplus, return_last_state=True, reverse=reverse)
        (y.square().sum() + last.sum()).backward()
        outs.append((y, last, {k: v.grad for k, v in inp.items() if v is not None}))
    (y, last, grads), (y_ref, last_ref, grads_ref) = outs
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")
    for k in grads_ref:
        assert_close(grads[k], grads_ref[k], rtol=1e-3, atol_rel=1e-4, what=f"d{k}")
