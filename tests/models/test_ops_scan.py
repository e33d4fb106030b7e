"""The fast selective-scan backends (`BACKENDS`: fused C++ "cpu", "numba", "triton") against the reference."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.ops import BACKENDS, SCAN_INPUTS, assert_close, leaf_copies, pick, scan_inputs, use_backend
from vmstream.models.ops import selective_scan, selective_scan_ref


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each fast backend (`tests.fixtures.ops.BACKENDS`), its backward checkpoints every 8 steps."""
    return use_backend(request.param, monkeypatch)


def run_both(backend, inp, softplus=True, reverse=False, **kw):
    ref = selective_scan_ref(**inp, delta_softplus=softplus, return_last_state=True, reverse=reverse)
    got = selective_scan(**inp, delta_softplus=softplus, return_last_state=True, reverse=reverse, backend=backend, **kw)
    return got, ref


FEATURES = [  # (D skip, z gate, delta_bias + softplus, initial state)
    (True, True, True, True),
    (False, False, False, False),
    (True, False, True, False),
    (False, True, False, True),
    (True, True, False, False),
    (False, False, True, True),
]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_D,use_z,use_bias,use_h0", FEATURES)
def test_forward_matches_reference(backend, reverse, use_D, use_z, use_bias, use_h0):
    inp = pick(scan_inputs(), use_D=use_D, use_z=use_z, use_bias=use_bias, use_h0=use_h0)
    # without softplus Δ must still be a sensible step size: make it positive
    softplus = use_bias
    if not softplus:
        inp["delta"] = inp["delta"].abs() * 0.3
    (y, last), (y_ref, last_ref) = run_both(backend, inp, softplus, reverse)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


@pytest.mark.parametrize("L", [1, 8, 9, 19])
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_across_chunk_edges(backend, L, reverse):
    """With checkpoints every 8 steps (`use_backend`), L = 1, 8, 9 and 19 are one partial
    chunk, exactly one chunk, one chunk plus a step, and two full chunks plus a partial
    one; D = 20 spans two of Triton's channel blocks of 16 (the second partial), N = 5
    pads to its state block of 8."""
    inp = scan_inputs(Bsz=1, L=L, D=20, N=5, seed=1)
    (y, last), (y_ref, last_ref) = run_both(backend, inp, True, reverse)
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (3, 5, 7, 3), (1, 9, 33, 16), (2, 4, 17, 32), (1, 6, 1, 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_odd_sizes(backend, shape, reverse):
    Bsz, L, D, N = shape
    inp = scan_inputs(Bsz, L, D, N, seed=1)
    (y, last), (y_ref, last_ref) = run_both(backend, inp, True, reverse)
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


def test_strided_views(backend):
    """Any stride over L and B: every-other token of a longer sequence, a batch taken
    from a transposed [L, B, D] buffer, a delta with a padded row."""
    inp = scan_inputs(Bsz=2, L=30, D=24, seed=2)
    lbd = torch.randn(30, 2, 24).transpose(0, 1)  # [B, L, D] with B-stride 24
    padded = torch.randn(2, 60, 32)[:, ::2, :24]  # L-stride 64, row padding
    inp.update(u=lbd, delta=padded)
    assert inp["u"].stride(-1) == 1 and not inp["u"].is_contiguous()
    (y, last), (y_ref, last_ref) = run_both(backend, inp)
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


def test_long_sequence_with_trained_delta(backend):
    """L = 3000 with Δ like a trained model (softplus of up to ~5): no overflow, no NaN."""
    inp = scan_inputs(Bsz=1, L=3000, D=32, N=16, seed=3, trained=True)
    (y, last), (y_ref, last_ref) = run_both(backend, inp)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


def test_huge_delta_forgets_exactly(backend):
    """exp(Δ·A) of a huge Δ is exactly 0 (never NaN): the state restarts from Δ·u·B."""
    inp = scan_inputs(Bsz=1, L=8, D=16, N=16, seed=4)
    inp["delta"] = torch.full_like(inp["delta"], 1e4)
    inp["delta"][:, ::3] = 1e30
    (y, last), (y_ref, last_ref) = run_both(backend, inp, softplus=False)
    assert torch.isfinite(y).all()
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_D,use_z,use_bias,use_h0", FEATURES[:4])
def test_gradients_match_reference(backend, reverse, use_D, use_z, use_bias, use_h0):
    """Gradients of every input, with the loss on the output and on the last state
    (truncated BPTT carries the state: its gradient must flow back in)."""
    base = pick(
        scan_inputs(Bsz=2, L=37, D=20, N=16, seed=5), use_D=use_D, use_z=use_z, use_bias=use_bias, use_h0=use_h0
    )
    softplus = use_bias
    if not softplus:
        base["delta"] = base["delta"].abs() * 0.3
    g = torch.Generator().manual_seed(6)
    gy = torch.randn(2, 37, 20, generator=g)
    gl = torch.randn(2, 20, 16, generator=g)
    grads = []
    for fn in (lambda **a: selective_scan(**a, backend=backend), selective_scan_ref):
        inp = leaf_copies(base)
        y, last = fn(**inp, delta_softplus=softplus, return_last_state=True, reverse=reverse)
        ((y * gy).sum() + (last * gl).sum()).backward()
        grads.append({k: v.grad for k, v in inp.items() if v is not None})
    got, ref = grads
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] is not None, f"no gradient for {k}"
        assert_close(got[k], ref[k], rtol=1e-3, atol_rel=1e-4, what=f"d{k}")


def test_gradient_through_last_state_only(backend):
    """A loss on the carried state alone (the next segment's view) reaches every input."""
    base = scan_inputs(Bsz=1, L=21, D=18, N=5, seed=7)
    grads = []
    for fn in (lambda **a: selective_scan(**a, backend=backend), selective_scan_ref):
        inp = leaf_copies(base)
        _, last = fn(**inp, delta_softplus=True, return_last_state=True)
        (last**2).sum().backward()
        grads.append({k: v.grad for k, v in inp.items()})
    for k in SCAN_INPUTS:
        got, ref = grads[0][k], grads[1][k]
        if ref is None:  # C, D and z act on the output only; autograd leaves them None
            assert k in ("C", "D", "z") and (got is None or got.abs().max() == 0), k
            continue
        assert_close(got, ref, rtol=1e-3, atol_rel=1e-4, what=f"d{k}")


@pytest.mark.parametrize("reverse", [False, True])
def test_pieces_equal_whole(backend, reverse):
    """Scanning in pieces and carrying the state equals one pass (the streaming mode)."""
    inp = scan_inputs(Bsz=2, L=40, D=20, seed=8)
    whole, last = selective_scan(**inp, delta_softplus=True, return_last_state=True, reverse=reverse, backend=backend)
    cut = 13
    pieces = [slice(0, cut), slice(cut, 40)]
    if reverse:  # a reverse scan meets the later tokens first
        pieces = pieces[::-1]
    h = inp["initial_state"]
    outs = {}
    for sl in pieces:
        part = {k: inp[k][:, sl] for k in ("u", "delta", "B", "C", "z")}
        outs[sl.start], h = selective_scan(
            **part,
            A=inp["A"],
            D=inp["D"],
            delta_bias=inp["delta_bias"],
            initial_state=h,
            delta_softplus=True,
            return_last_state=True,
            reverse=reverse,
            backend=backend,
        )
    assert_close(torch.cat([outs[0], outs[cut]], dim=1), whole, what="out")
    assert_close(h, last, what="last_state")


def test_out_accumulates_both_directions(backend):
    """The bidirectional block: the reverse scan adds into the forward scan's output."""
    inp = scan_inputs(Bsz=2, L=19, D=20, seed=9)
    expect = selective_scan_ref(**inp, delta_softplus=True) + selective_scan_ref(
        **pick(inp, use_h0=False), delta_softplus=True, reverse=True
    )
    with torch.no_grad():
        y = selective_scan(**inp, delta_softplus=True, backend=backend)
        y2 = selective_scan(
            **pick(inp, use_h0=False), delta_softplus=True, reverse=True, out=y, accumulate=True, backend=backend
        )
    assert y2 is y
    assert_close(y, expect, what="fwd + bwd")
    # with gradients the same call is out.add_(y): values and gradients still right
    inp_g = leaf_copies(inp)
    y = selective_scan(**inp_g, delta_softplus=True, backend=backend)
    selective_scan(
        **pick(inp_g, use_h0=False), delta_softplus=True, reverse=True, out=y, accumulate=True, backend=backend
    )
    y.sum().backward()
    inp_r = leaf_copies(inp)
    (
        selective_scan_ref(**inp_r, delta_softplus=True)
        + selective_scan_ref(**pick(inp_r, use_h0=False), delta_softplus=True, reverse=True)
    ).sum().backward()
    assert_close(y, expect, what="fwd + bwd (grad mode)")
    for k in ("u", "delta", "A", "B", "C", "initial_state"):
        assert_close(inp_g[k].grad, inp_r[k].grad, rtol=1e-3, atol_rel=1e-4, what=f"d{k}")


def test_out_overwrites_without_accumulate(backend):
    inp = scan_inputs(Bsz=1, L=9, D=16, seed=10)
    out = torch.full((1, 9, 16), 7.0)
    with torch.no_grad():
        res = selective_scan(**inp, delta_softplus=True, out=out, backend=backend)
    assert res is out
    assert_close(out, selective_scan_ref(**inp, delta_softplus=True), what="out=")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_their_dtype_and_a_float32_state(backend, dtype):
    """bf16/fp16 inputs: out in the input's dtype, the state in float32, both as close to
    the float32 reference on the same rounded inputs as one final rounding allows."""
    inp = scan_inputs(Bsz=1, L=12, D=20, N=5, seed=11)
    for k in ("u", "delta", "z", "B", "C"):
        inp[k] = inp[k].to(dtype)
    y, last = selective_scan(**inp, delta_softplus=True, return_last_state=True, backend=backend)
    assert y.dtype == dtype and last.dtype == torch.float32
    y_ref, last_ref = selective_scan_ref(
        **{k: v.float() for k, v in inp.items()}, delta_softplus=True, return_last_state=True
    )
    assert_close(y, y_ref, rtol=1e-2, atol_rel=1e-2, what="out")
    assert_close(last, last_ref, what="last_state")
