"""The Triton scan and conv kernels on mamba-ssm's and causal-conv1d's own test grids
(see tests/models/test_ops_upstream.py for what is ported and how), through Triton's
interpreter on CPU tensors. The interpreter runs each program step by step (~10 ms a
step): the default cases take upstream's shortest lengths and a few block edges, the
rest of the grid is `slow`.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.fixtures.ops import (
    CONV_SEQLENS,
    SCAN_SEQLENS,
    assert_within,
    conv_excess,
    pick,
    scan_excess,
    upstream_conv_inputs,
    upstream_scan_inputs,
)

HALF = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("seqlen", [SCAN_SEQLENS[0], pytest.param(SCAN_SEQLENS[1], marks=pytest.mark.slow)])
def test_selective_scan_upstream_grid(triton_ops, seqlen):
    inp = upstream_scan_inputs(seqlen)
    assert_within(scan_excess(triton_ops.selective_scan_triton, inp), f"triton seqlen={seqlen}")


@pytest.mark.parametrize("itype", [torch.float32, torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)])
def test_selective_scan_upstream_features(triton_ops, itype):
    """Every on/off combination of D, z, delta_bias and softplus at seqlen 8, in fp32,
    fp16 and bf16 (upstream's commented-out grid)."""
    base = upstream_scan_inputs(8, itype=itype, seed=8)
    for has_D, has_z, has_bias, softplus in itertools.product([True, False], repeat=4):
        inp = pick(base, use_D=has_D, use_z=has_z, use_bias=has_bias)
        assert_within(
            scan_excess(triton_ops.selective_scan_triton, inp, delta_softplus=softplus, itype=itype),
            f"triton {itype} D={has_D} z={has_z} bias={has_bias} sp={softplus}",
        )


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [63, 200])
def test_streaming_in_chunks_with_gradients(triton_ops, chunk):
    """400 steps in chunks carrying the state (the CPU backends run the 1,000-step grid;
    the interpreter is ~10 ms a step)."""
    L = 400
    inp = upstream_scan_inputs(L, seed=3)

    def chunked(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state):
        h, outs = initial_state, []
        for s in range(0, L, chunk):
            sl = slice(s, s + chunk)
            y, h = triton_ops.selective_scan_triton(
                u[:, sl], delta[:, sl], A, B[:, sl], C[:, sl], D, z[:, sl], delta_bias, delta_softplus, h, True
            )
            outs.append(y)
        return torch.cat(outs, 1), h

    assert_within(scan_excess(chunked, inp), f"triton chunk={chunk}")


@pytest.mark.parametrize(
    "itype,width",
    [
        (it, w) if (it, w) in {(torch.float32, 4), (torch.bfloat16, 3)} else pytest.param(it, w, marks=pytest.mark.slow)
        for it in (torch.float32, *HALF)
        for w in (2, 3, 4)
    ],
)
def test_causal_conv1d_upstream_grid(triton_ops, itype, width):
    """Lengths 1, 8 and 129 with every flag combination (bias, SiLU, initial state,
    final state); x in `itype` beside a float32 weight and bias. fp32 at width 4 and bf16
    at width 3 by default, the rest `slow`."""
    for seqlen in (1, 8, 129):
        base = upstream_conv_inputs(seqlen, dim=64, width=width, itype=itype, seed=seqlen)
        for has_bias, silu, has_init, final in itertools.product([False, True], repeat=4):
            inp = dict(
                base, bias=base["bias"] if has_bias else None, initial_tail=base["initial_tail"] if has_init else None
            )
            assert_within(
                conv_excess(
                    triton_ops.causal_conv1d_triton, inp, activation="silu" if silu else None, final=final, itype=itype
                ),
                f"triton {itype} L={seqlen} width={width} bias={has_bias} silu={silu} init={has_init} final={final}",
            )


@pytest.mark.slow
@pytest.mark.parametrize("itype", [torch.float32, *HALF])
def test_causal_conv1d_upstream_every_length(triton_ops, itype):
    for seqlen in CONV_SEQLENS:
        inp = upstream_conv_inputs(seqlen, dim=64, width=4, itype=itype, seed=seqlen)
        assert_within(
            conv_excess(triton_ops.causal_conv1d_triton, inp, activation="silu", final=True, itype=itype),
            f"triton {itype} L={seqlen}",
        )
