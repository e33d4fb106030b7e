"""Exact initial-state injection (what the CUDA backend adds around mamba-ssm), on the CPU.

mamba-ssm's kernels start from zero; `injection.py` adds the carried state's terms. Here
a zero-start reference scan plus the injection must equal the reference scan started
from the state, for outputs and final state, in both directions. The last tests run
`cuda.py` itself on CPU tensors, with mamba-ssm's and causal-conv1d's documented APIs
(channel-major [B, D, L], no initial state, a last state without gradient) emulated by
the references: they pin the transposes, flips and the order of injection and z gate.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.ops import assert_close, leaf_copies, pick, scan_inputs
from vmstream.models.ops import causal_conv1d_ref, injection, selective_scan_ref


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_z", [False, True])
def test_zero_start_plus_injection_equals_started_scan(reverse, use_z):
    inp = pick(scan_inputs(Bsz=2, L=45, D=12, N=16, seed=0, trained=True), use_z=use_z)
    h0 = inp["initial_state"]
    expect, last_expect = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True, reverse=reverse)
    zero = pick(inp, use_z=False, use_h0=False)
    y0, last0 = selective_scan_ref(**zero, delta_softplus=True, return_last_state=True, reverse=reverse)
    d_eff = injection.effective_delta(inp["delta"], inp["delta_bias"], True)
    # chunk < L: the [B, chunk, D, N] decay is built in pieces
    y = y0 + injection.initial_state_output(d_eff, inp["A"], inp["C"], h0, reverse=reverse, chunk=16)
    if use_z:  # the gate comes after the injection
        y = y * F.silu(inp["z"])
    last = last0 + injection.initial_state_final(d_eff, inp["A"], h0)
    assert_close(y, expect, what="out")
    assert_close(last, last_expect, what="last_state")


def test_cumulative_delta_directions():
    d = torch.rand(2, 7, 3)
    assert_close(injection.cumulative_delta(d), d.cumsum(1))
    assert_close(injection.cumulative_delta(d, reverse=True), d.flip(1).cumsum(1).flip(1))


def test_injection_stays_finite_on_long_trained_sequences():
    """Over thousands of tokens the decay underflows towards 0: no NaN, no inf."""
    inp = scan_inputs(Bsz=1, L=2500, D=8, N=16, seed=1, trained=True)
    d_eff = injection.effective_delta(inp["delta"], inp["delta_bias"], True)
    y = injection.initial_state_output(d_eff, inp["A"], inp["C"], inp["initial_state"])
    h = injection.initial_state_final(d_eff, inp["A"], inp["initial_state"])
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    scale = inp["initial_state"].abs().max()
    assert h.abs().max() < 1e-6 * scale and y[:, -1].abs().max() < 1e-6 * scale


@pytest.mark.parametrize("reverse", [False, True])
def test_final_state_from_zero_matches_reference_with_gradients(reverse):
    """The differentiable last state used on CUDA for truncated BPTT."""
    base = pick(scan_inputs(Bsz=2, L=40, D=10, N=16, seed=2), use_z=False, use_h0=False, use_D=False)
    gl = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(3))
    inp = leaf_copies(base)
    _, last_ref = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True, reverse=reverse)
    (last_ref * gl).sum().backward()
    ref_grads = {k: v.grad for k, v in inp.items() if v is not None}
    inp2 = leaf_copies(base)
    d_eff = injection.effective_delta(inp2["delta"], inp2["delta_bias"], True)
    last = injection.final_state_from_zero(inp2["u"], d_eff, inp2["A"], inp2["B"], reverse=reverse, chunk=16)
    assert_close(last, last_ref, what="last_state")
    (last * gl).sum().backward()
    for k in ("u", "delta", "A", "B", "delta_bias"):
        assert_close(inp2[k].grad, ref_grads[k], rtol=1e-3, atol_rel=1e-4, what=f"d{k}")


# ------------------------------------------------------------------ cuda.py's glue on CPU
def _mamba_selective_scan_fn(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """mamba-ssm's selective_scan_fn contract: [B, D, L] / [B, N, L], token axis
    contiguous, no initial state, last state returned without gradient."""
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C)):
        assert t.stride(-1) == 1, f"{name} must have a contiguous token axis"
    y, last = selective_scan_ref(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        D,
        None if z is None else z.transpose(1, 2),
        delta_bias,
        delta_softplus,
        None,
        True,
    )
    y = y.transpose(1, 2)
    return (y, last.detach()) if return_last_state else y


def _causal_conv1d_fn(x, weight, bias=None, activation=None):
    """causal-conv1d's causal_conv1d_fn contract: x [B, D, L], zero history."""
    assert weight.dim() == 2
    return causal_conv1d_ref(x.transpose(1, 2), weight, bias, None, activation).transpose(1, 2)


@pytest.fixture
def emulated_gpu_packages(monkeypatch):
    ssi = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    ssi.selective_scan_fn = _mamba_selective_scan_fn
    cc = types.ModuleType("causal_conv1d")
    cc.causal_conv1d_fn = _causal_conv1d_fn
    for name, mod in (
        ("mamba_ssm", types.ModuleType("mamba_ssm")),
        ("mamba_ssm.ops", types.ModuleType("mamba_ssm.ops")),
        ("mamba_ssm.ops.selective_scan_interface", ssi),
        ("causal_conv1d", cc),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    from vmstream.models.ops import cuda

    return cuda


@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_scan_glue(emulated_gpu_packages, reverse):
    cuda = emulated_gpu_packages
    base = scan_inputs(Bsz=2, L=33, D=12, N=16, seed=4)
    g = torch.Generator().manual_seed(5)
    gy, gl = torch.randn(2, 33, 12, generator=g), torch.randn(2, 12, 16, generator=g)
    results = []
    for fn in (cuda.selective_scan_cuda, selective_scan_ref):
        inp = leaf_copies(base)
        y, last = fn(**inp, delta_softplus=True, return_last_state=True, reverse=reverse)
        ((y * gy).sum() + (last * gl).sum()).backward()
        results.append((y, last, {k: v.grad for k, v in inp.items()}))
    (y, last, grads), (y_ref, last_ref, grads_ref) = results
    assert_close(y, y_ref, what="out")
    assert_close(last, last_ref, what="last_state")
    for k in grads_ref:
        assert_close(grads[k], grads_ref[k], rtol=1e-3, atol_rel=1e-4, what=f"d{k}")
    # without gradients the kernel's own last state is used
    with torch.no_grad():
        y2, last2 = cuda.selective_scan_cuda(**base, delta_softplus=True, return_last_state=True, reverse=reverse)
    assert_close(y2, y_ref, what="out (no grad)")
    assert_close(last2, last_ref, what="last_state (no grad)")


@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_conv_glue(emulated_gpu_packages, reverse):
    cuda = emulated_gpu_packages
    from tests.fixtures.ops import conv_inputs

    inp = conv_inputs(L=17, seed=6)
    y_ref, t_ref = causal_conv1d_ref(**inp, activation="silu", return_final_tail=True, reverse=reverse)
    y, t = cuda.causal_conv1d_cuda(**inp, activation="silu", return_final_tail=True, reverse=reverse)
    assert_close(y, y_ref, what="out")
    assert_close(t, t_ref, what="final_tail")
    y0 = cuda.causal_conv1d_cuda(inp["x"], inp["weight"], inp["bias"], None, None, reverse=reverse)
    assert_close(y0, causal_conv1d_ref(inp["x"], inp["weight"], inp["bias"], reverse=reverse), what="out, no tail")
