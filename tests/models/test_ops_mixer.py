"""`mamba_inner` (a Mamba layer between in_proj and out_proj) on the fused C++ kernel and
as the composition of the dispatched ops, held to `reference.mamba_inner_ref`."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.ops import assert_close
from vmstream.models.ops import MixerDirection, cpu_ext, mamba_inner
from vmstream.models.ops.mixer import mamba_inner_cpu
from vmstream.models.ops.reference import exp_bf16_mode_ref, mamba_inner_ref, silu_bf16_mode_ref, softplus_bf16_mode_ref


def directions(D=40, N=16, R=5, K=4, n=2, seed=0, conv_bias=True):
    g = torch.Generator().manual_seed(seed)

    def one():
        return MixerDirection(
            torch.randn(D, 1, K, generator=g) * 0.4,
            torch.randn(D, generator=g) * 0.1 if conv_bias else None,
            torch.randn(R + 2 * N, D, generator=g) * 0.2,
            torch.randn(D, R, generator=g) * 0.4,
            torch.randn(D, generator=g) * 0.5 - 2,
            -torch.rand(D, N, generator=g) * 3 - 0.05,
            torch.randn(D, generator=g),
        )

    return [one() for _ in range(n)]


def inputs(Bsz=2, L=45, D=40, N=16, K=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(Bsz, L, 2 * D, generator=g),
        torch.randn(Bsz, D, K - 1, generator=g),
        torch.randn(Bsz, D, N, generator=g),
    )


@pytest.mark.parametrize("chunk", [1, 4, 16, 1000])
@pytest.mark.parametrize("ndir", [1, 2])
def test_fused_kernel_matches_the_reference(chunk, ndir):
    dirs = directions(n=ndir)
    xz, tail, h0 = inputs()
    y, (t, h) = mamba_inner_cpu(xz, dirs, tail, h0, return_state=True, chunk=chunk)
    yr, (tr, hr) = mamba_inner_ref(xz, dirs, tail, h0, return_state=True)
    assert y.dtype == torch.float32
    assert_close(y, yr, what="y")
    assert torch.equal(t, tr), "the final conv tail is a copy of inputs"
    assert_close(h, hr, what="last state")


@pytest.mark.parametrize("N,K,D", [(8, 4, 16), (16, 3, 33), (5, 2, 7)])
def test_fused_kernel_other_shapes_and_no_conv_bias(N, K, D):
    dirs = directions(D=D, N=N, K=K, R=3, conv_bias=False)
    xz, tail, h0 = inputs(D=D, N=N, K=K, L=23)
    y, (t, h) = mamba_inner_cpu(xz, dirs, tail, h0, return_state=True, chunk=6)
    yr, (tr, hr) = mamba_inner_ref(xz, dirs, tail, h0, return_state=True)
    assert_close(y, yr, what="y")
    assert_close(h, hr, what="last state")
    assert torch.equal(t, tr)


def test_fused_kernel_without_state_and_strided_xz():
    dirs = directions()
    big = torch.randn(2, 30, 100)
    xz = big[:, :, 10:90]  # last dim contiguous, rows strided
    assert_close(mamba_inner_cpu(xz, dirs, chunk=8), mamba_inner_ref(xz, dirs), what="y")


def test_state_carried_across_calls_equals_one_call():
    dirs = directions()
    xz, tail, h0 = inputs(L=40)
    y, state = mamba_inner_cpu(xz[:, :25], dirs[:1], tail, h0, return_state=True, chunk=7)
    y2, state2 = mamba_inner_cpu(xz[:, 25:], dirs[:1], *state, return_state=True, chunk=7)
    yw, statew = mamba_inner_cpu(xz, dirs[:1], tail, h0, return_state=True, chunk=7)
    assert_close(torch.cat([y, y2], 1), yw, what="y")
    assert_close(state2[1], statew[1], what="state")


def check_bf16_mode(variant="native", chunk=9, D=40, L=45):
    """The bf16 mode (a bfloat16 y): x_proj and dt_proj on bf16-rounded operands, the
    degree-3 decay, the float32 sum gated and rounded once. Held to
    `mamba_inner_ref(bf16=True)`: the float32 last state tightly (it sees the decay
    polynomial and the projections, unrounded), y within one bf16 rounding everywhere and
    equal for nearly all elements (the two differ only in float32 summation order)."""
    dirs = directions(D=D)
    xz, tail, h0 = inputs(D=D, L=L)
    xzb = xz.bfloat16()
    y, (t, h) = mamba_inner_cpu(
        xzb, dirs, tail, h0, return_state=True, out_dtype=torch.bfloat16, chunk=chunk, variant=variant
    )
    assert y.dtype == torch.bfloat16
    yr, (tr, hr) = mamba_inner_ref(xzb, dirs, tail, h0, return_state=True, bf16=True)
    assert_close(h, hr, what=f"{variant} bf16-mode state")
    assert torch.equal(t, tr)
    assert_close(y.float(), yr, rtol=2**-8, atol_rel=2e-5, what=f"{variant} bf16 y")
    equal = (y == yr.bfloat16()).float().mean().item()
    assert equal >= 0.99, f"{variant}: only {equal:.3f} of the bf16 y equal the reference rounded"
    return h, hr


def test_bf16_mode_matches_its_reference():
    h, _ = check_bf16_mode()
    # ... and the reference is not the fp32 one: the state tells the two apart.
    xz, tail, h0 = inputs()
    _, (_, h32) = mamba_inner_ref(xz.bfloat16(), directions(), tail, h0, return_state=True)
    assert not torch.allclose(h, h32, rtol=2e-4, atol=0), "bf16 mode computed the fp32 math"


def test_bf16_mode_other_chunks_and_odd_width():
    check_bf16_mode(chunk=16, D=37, L=50)  # AMX tiles: rows and the summed index padded
    check_bf16_mode(chunk=1000, D=40, L=17)


def test_bf16_mode_decay_polynomial():
    """exp_bf16_mode_ref: relative error <= 1.3e-4, exact to first order near 0 (a long
    memory keeps its time constant), exactly 0 far below and NaN kept."""
    x = torch.linspace(-80, 0, 400001, dtype=torch.float64)
    rel = (exp_bf16_mode_ref(x.float()).double() / torch.exp(x) - 1).abs()
    assert rel.max().item() <= 1.3e-4
    small = -torch.logspace(-7, -3, 1000)
    rel_small = (exp_bf16_mode_ref(small).double() / torch.exp(small.double()) - 1).abs()
    assert rel_small.max().item() <= 2e-7  # float32 resolution near 1
    assert exp_bf16_mode_ref(torch.tensor([-1e4])).item() == 0.0
    assert exp_bf16_mode_ref(torch.tensor([float("nan")])).isnan().all()


def test_bf16_mode_silu_and_softplus():
    """The bf16 mode's SiLU and softplus stay within 1.5e-4 of the exact functions (the
    exp's 1.3e-4 and the shortened log1p series' 2e-5), and behave at the extremes."""
    x = torch.linspace(-60, 60, 200001, dtype=torch.float64)
    silu = silu_bf16_mode_ref(x.float()).double()
    assert ((silu - F.silu(x)).abs() <= 1.5e-4 * F.silu(x).abs() + 1e-30).all()
    sp = softplus_bf16_mode_ref(x.float()).double()
    assert ((sp - F.softplus(x)).abs() <= 1.5e-4 * F.softplus(x)).all()
    big = torch.tensor([-1e4, 1e4, float("inf")])
    assert silu_bf16_mode_ref(big).tolist()[1:] == [1e4, float("inf")]
    assert silu_bf16_mode_ref(big)[0].item() == 0.0
    assert softplus_bf16_mode_ref(big).tolist() == [0.0, 1e4, float("inf")]


def test_dispatch_picks_the_kernel_and_the_composition_agrees():
    dirs = directions()
    xz, tail, h0 = inputs()
    with torch.no_grad():
        fused = mamba_inner(xz, dirs, tail, h0, return_state=True, backend="cpu")
        composed = mamba_inner(xz, dirs, tail, h0, return_state=True, backend="ref")
    ref = mamba_inner_ref(xz, dirs, tail, h0, return_state=True)
    for got in (fused, composed):
        assert_close(got[0], ref[0], what="y")
        assert_close(got[1][1], ref[1][1], what="state")


def test_gradients_flow_through_the_composed_path():
    dirs = [MixerDirection(*(None if t is None else t.clone().requires_grad_() for t in d)) for d in directions()]
    xz, tail, h0 = inputs(L=12)
    xz.requires_grad_()
    y = mamba_inner(xz, dirs, tail, h0, backend="cpu")
    y.square().sum().backward()
    grads = [xz.grad.clone()] + [t.grad.clone() for d in dirs for t in d if t is not None]
    xz.grad = None
    for d in dirs:
        for t in d:
            if t is not None:
                t.grad = None
    mamba_inner_ref(xz, dirs, tail, h0).square().sum().backward()
    ref = [xz.grad] + [t.grad for d in dirs for t in d if t is not None]
    for i, (a, b) in enumerate(zip(grads, ref)):
        assert_close(a, b, rtol=1e-3, atol_rel=1e-4, what=f"grad {i}")


def test_bad_input_is_refused():
    dirs = directions()
    with pytest.raises(ValueError, match="xz must be"):
        mamba_inner(torch.randn(2, 5, 7), dirs)
    with pytest.raises(ValueError, match="no tokens"):
        mamba_inner(torch.randn(2, 0, 80), dirs)
    with pytest.raises(RuntimeError, match="x_proj weight"):
        mamba_inner_cpu(torch.randn(2, 5, 80), directions(D=40)[:1] + directions(D=40, R=2)[:1])


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or cpu_ext._compiler() is None,
    reason="x86-64 variants need an x86-64 machine and a C++ compiler",
)
def test_avx2_variant_matches_the_reference():
    dirs = directions(D=37)
    xz, tail, h0 = inputs(D=37, L=21)
    y, (t, h) = mamba_inner_cpu(xz, dirs, tail, h0, return_state=True, chunk=5, variant="avx2")
    yr, (tr, hr) = mamba_inner_ref(xz, dirs, tail, h0, return_state=True)
    assert_close(y, yr, what="avx2 y")
    assert_close(h, hr, what="avx2 state")
    check_bf16_mode("avx2", chunk=5, D=37, L=21)  # no tiles there: rounded operands in the fp32 loops
