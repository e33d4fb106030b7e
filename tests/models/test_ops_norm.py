"""`ops.add_rms_norm` (the block's residual add + RMSNorm in one pass) held to its reference."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.ops import assert_close
from vmstream.models.ops import add_rms_norm
from vmstream.models.ops.reference import add_rms_norm_ref


def _inputs(C=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 37, C, generator=g),
        torch.randn(2, 37, C, generator=g) * 3,
        torch.rand(C, generator=g) + 0.5,
    )


@pytest.mark.parametrize("C", [192, 20, 7])
@pytest.mark.parametrize("with_residual", [True, False])
def test_kernel_matches_the_reference(C, with_residual):
    hidden, residual, weight = _inputs(C)
    residual = residual if with_residual else None
    with torch.no_grad():
        normed, res = add_rms_norm(hidden, residual, weight, 1e-5, backend="cpu")
    ref_normed, ref_res = add_rms_norm_ref(hidden, residual, weight, 1e-5)
    assert torch.equal(res, ref_res), "the residual sum is one float32 add"
    assert_close(normed, ref_normed, rtol=1e-6, atol_rel=1e-6, what="normed")


def test_bf16_hidden_in_and_normed_out():
    hidden, residual, weight = _inputs()
    hb = hidden.bfloat16()
    with torch.no_grad():
        normed, res = add_rms_norm(hb, residual, weight, 1e-5, out_dtype=torch.bfloat16, backend="cpu")
        normed32, _ = add_rms_norm(hb, residual, weight, 1e-5, backend="cpu")
    ref_normed, ref_res = add_rms_norm_ref(hb, residual, weight, 1e-5)
    assert normed.dtype == torch.bfloat16 and res.dtype == torch.float32
    assert torch.equal(res, ref_res)
    assert torch.equal(normed, normed32.bfloat16()), "bf16 out is the fp32 result rounded to nearest even"
    assert_close(normed.float(), ref_normed, rtol=2**-8, atol_rel=1e-6, what="bf16 normed")


def test_gradients_use_the_reference():
    hidden, residual, weight = _inputs(C=8)
    weight.requires_grad_()
    normed, _ = add_rms_norm(hidden, residual, weight, 1e-5, backend="cpu")
    normed.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_large_batches_split_across_threads_the_same():
    g = torch.Generator().manual_seed(3)
    hidden, residual = torch.randn(2, 11000, 192, generator=g), torch.randn(2, 11000, 192, generator=g)
    weight = torch.rand(192, generator=g) + 0.5
    with torch.no_grad():
        normed, res = add_rms_norm(hidden, residual, weight, 1e-5, backend="cpu")
    ref_normed, ref_res = add_rms_norm_ref(hidden, residual, weight, 1e-5)
    assert torch.equal(res, ref_res)
    assert_close(normed, ref_normed, rtol=1e-6, atol_rel=1e-6, what="normed")
