"""What only the Triton selective scan (triton_scan.py) has, on CPU tensors through
Triton's interpreter (see conftest.py): its chunked forward form, and the error where
numpy is too new for the interpreter. What every backend must do is in
tests/models/test_ops_scan.py, Triton among `BACKENDS`.

Block edges crossed: D = 20 spans two channel blocks of 16 (the second partial), N = 5
pads to a state block of 8, and with checkpoints every 8 steps L = 1, 8, 9 and 19 are
one partial chunk, exactly one chunk, one chunk plus a step, and two full chunks plus a
partial one. The interpreter is slow (~10 ms a step per program): shapes stay small.
"""

from __future__ import annotations

import pytest

from tests.fixtures.ops import assert_close, leaf_copies, pick, scan_inputs
from vmstream.models.ops import dispatch, selective_scan_ref

FEATURES = [  # (D skip, z gate, delta_bias + softplus, initial state)
    (True, True, True, True),
    (False, False, False, False),
    (True, False, True, False),
    (False, True, False, True),
]


def _inputs(Bsz=1, L=19, D=20, N=5, seed=0, features=FEATURES[0]):
    use_D, use_z, use_bias, use_h0 = features
    inp = pick(
        scan_inputs(Bsz=Bsz, L=L, D=D, N=N, seed=seed), use_D=use_D, use_z=use_z, use_bias=use_bias, use_h0=use_h0
    )
    if not use_bias:  # without softplus Δ must still be a sensible step size
        inp["delta"] = inp["delta"].abs() * 0.3
    return inp, use_bias


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
