"""The C++ kernel's other instruction-set paths, built on this machine with other -march
flags: AVX2 (most laptops: no AVX-512) and the portable scalar code (slow: one more
15-20 s build on a fresh cache)."""

from __future__ import annotations

import platform

import pytest
import torch

from tests.fixtures.ops import assert_close, conv_inputs, leaf_copies, scan_inputs
from vmstream.models.ops import causal_conv1d_ref, cpu, cpu_ext, selective_scan_ref

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or cpu_ext._compiler() is None,
    reason="x86-64 variants need an x86-64 machine and a C++ compiler",
)


def _check_variant(variant, monkeypatch):
    ops = cpu_ext.load(variant)
    assert ops.isa().startswith({"avx2": "avx2", "scalar": "scalar"}[variant])
    monkeypatch.setattr(cpu, "CKPT_EVERY", 8)
    # N = 16 and a generic N, D with a partial lane chunk, both directions, gradients
    for N, reverse in ((16, False), (5, True)):
        base = scan_inputs(Bsz=2, L=29, D=21, N=N, seed=N)
        g = torch.Generator().manual_seed(1)
        gy, gl = torch.randn(2, 29, 21, generator=g), torch.randn(2, 21, N, generator=g)
        res = []
        for fn in (lambda **a: cpu.selective_scan_cpu(**a, variant=variant), selective_scan_ref):
            inp = leaf_copies(base)
            y, last = fn(**inp, delta_softplus=True, return_last_state=True, reverse=reverse)
            ((y * gy).sum() + (last * gl).sum()).backward()
            res.append((y, last, {k: v.grad for k, v in inp.items()}))
        assert_close(res[0][0], res[1][0], what=f"{variant} out")
        assert_close(res[0][1], res[1][1], what=f"{variant} last_state")
        for k in base:
            assert_close(res[0][2][k], res[1][2][k], rtol=1e-3, atol_rel=1e-4, what=f"{variant} d{k}")
    huge = scan_inputs(Bsz=1, L=6, D=16, N=16, seed=9)
    huge["delta"] = torch.full_like(huge["delta"], 1e4)
    with torch.no_grad():
        y = cpu.selective_scan_cpu(**huge, variant=variant)
    assert torch.isfinite(y).all()
    assert_close(y, selective_scan_ref(**huge), what=f"{variant} huge delta")
    base = conv_inputs(L=13, seed=2)
    res = []
    for fn in (lambda **a: cpu.causal_conv1d_cpu(**a, variant=variant), causal_conv1d_ref):
        inp = leaf_copies(base)
        y, t = fn(**inp, activation="silu", return_final_tail=True, reverse=True)
        (y.square().sum() + t.sum()).backward()
        res.append((y, t, {k: v.grad for k, v in inp.items()}))
    assert_close(res[0][0], res[1][0], what=f"{variant} conv out")
    for k in base:
        assert_close(res[0][2][k], res[1][2][k], rtol=1e-3, atol_rel=1e-4, what=f"{variant} conv d{k}")


def test_avx2_kernels(monkeypatch):
    _check_variant("avx2", monkeypatch)


@pytest.mark.slow
def test_scalar_kernels(monkeypatch):
    _check_variant("scalar", monkeypatch)
