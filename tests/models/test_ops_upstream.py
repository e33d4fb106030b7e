"""The scan and conv backends on mamba-ssm's and causal-conv1d's own test grids.

Ported facts (not code), see tests/fixtures/ops.py: mamba-ssm tests/ops/test_selective_scan.py
(its active grid: seqlen 128..4096, batch 2, dim 4, dstate 8, D, z, delta_bias, softplus,
variable B and C; its commented-out full grid: more lengths, fp16/bf16, every feature on
and off) and causal-conv1d tests/test_causal_conv1d.py (dim 64 and 4128, width 2-4, 18
lengths, bias, SiLU, fp32/fp16/bf16 x beside a float32 weight, initial and final states),
with their input distributions and allclose tolerances. Two changes: every backend,
the reference too, is held to the float64 truth of the same math on the same (rounded)
inputs (upstream holds its CUDA kernel to the float32 reference), and the carried state
is added (an initial state in, a loss on the last state). Upstream's grouped B/C
(varBC_groups=2) has no counterpart: vmstream's scan takes one B and C per token.

Backends here: "ref" (the readable reference) and every fast backend
(`tests.fixtures.ops.BACKENDS`: "cpu", the fused C++ kernel, "numba", and "triton" through
its interpreter on CPU tensors). The interpreter runs each program step by step (~10 ms a
step): Triton takes upstream's shorter lengths by default, its longer cases are `slow`,
and the cases of thousands of steps or thousands of channels leave it out (`cases`).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.fixtures.ops import (
    BACKENDS,
    CONV_SEQLENS,
    SCAN_SEQLENS,
    assert_within,
    conv_excess,
    pick,
    scan_excess,
    upstream_conv_inputs,
    upstream_scan_inputs,
    use_backend,
)
from vmstream.models.ops import causal_conv1d, causal_conv1d_ref, dispatch, selective_scan, selective_scan_ref

HALF = (torch.float16, torch.bfloat16)


UPSTREAM_BACKENDS = ("ref", *BACKENDS)


@pytest.fixture
def backend(request, monkeypatch):
    """The backend a case names (parametrised indirectly, through `cases`)."""
    if request.param == "cpu":
        from vmstream.models.ops import cpu_ext

        if cpu_ext._compiler() is None:
            pytest.skip("no C++ compiler on this machine (the numba tests cover the fallback)")
        cpu_ext.load()
        dispatch.reset()
    elif request.param == "triton":  # skips where the interpreter cannot run; checkpoints every 8 steps
        use_backend("triton", monkeypatch)
    return request.param


def cases(values=(None,), *, runs=lambda backend, value: True, default=lambda backend, value: True):
    """Parameters (backend, *value) for `parametrize(..., indirect=["backend"])`: every
    upstream backend with every value that `runs` accepts, the pairs `default` rejects
    marked `slow`. `values=(None,)` gives the backend alone."""
    out = []
    for b in UPSTREAM_BACKENDS:
        for v in values:
            if not runs(b, v):
                continue
            args = (b,) if v is None else (b, *(v if isinstance(v, tuple) else (v,)))
            out.append(pytest.param(*args, marks=() if default(b, v) else pytest.mark.slow))
    return out


def not_triton(backend, value=None):
    """Thousands of steps, or thousands of channels: minutes through Triton's interpreter."""
    return backend != "triton"


def scan_fn(backend):
    if backend == "ref":
        return selective_scan_ref
    return lambda **a: selective_scan(**a, backend=backend)


def conv_fn(backend):
    if backend == "ref":
        return causal_conv1d_ref
    return lambda **a: causal_conv1d(**a, backend=backend)


# --------------------------------------------------------------------------- selective scan


@pytest.mark.parametrize(
    "backend,seqlen",
    cases(
        SCAN_SEQLENS,
        runs=lambda b, L: b != "triton" or L <= 256,
        default=lambda b, L: L < (256 if b == "triton" else 2048),
    ),
    indirect=["backend"],
)
def test_selective_scan_upstream_grid(backend, seqlen):
    inp = upstream_scan_inputs(seqlen)
    assert_within(scan_excess(scan_fn(backend), inp), f"{backend} seqlen={seqlen}")


@pytest.mark.parametrize("backend", cases(runs=not_triton), indirect=True)
def test_selective_scan_long_wide_channels(backend):
    """The case an outside run of the grid flagged: seqlen 4096, dim 64, dstate 16, all
    features on. The fused kernel's and numba's exp2 polynomial had p(0) = 1 + 1.2e-7; a
    long-memory channel (|Δ·A| small every step) compounded it to 6x the fp32 tolerance.
    Forward only (the reference's autograd over 4096 steps of [2, 64, 16] is slow)."""
    from tests.fixtures.ops import allclose_excess, scan_tolerances, selective_scan_f64

    inp = upstream_scan_inputs(4096, dim=64, dstate=16)
    with torch.no_grad():
        y, h = scan_fn(backend)(**inp, delta_softplus=True, return_last_state=True)
        y64, h64 = selective_scan_f64(**inp, delta_softplus=True)
    tol = scan_tolerances(torch.float32)
    assert_within(
        {"out": allclose_excess(y, y64, *tol["out"]), "last_state": allclose_excess(h, h64, *tol["last_state"])},
        backend,
    )


FEATURE_SETS = list(itertools.product([True, False], repeat=4))  # D, z, delta_bias, softplus


def _full_grid(backend, itype, seqlens, features):
    for seqlen in seqlens:
        base = upstream_scan_inputs(seqlen, itype=itype, seed=seqlen)
        for has_D, has_z, has_bias, softplus in features:
            inp = pick(base, use_D=has_D, use_z=has_z, use_bias=has_bias)
            assert_within(
                scan_excess(scan_fn(backend), inp, delta_softplus=softplus, itype=itype),
                f"{backend} {itype} seqlen={seqlen} D={has_D} z={has_z} bias={has_bias} sp={softplus}",
            )


@pytest.mark.parametrize(
    "backend,itype",
    cases((torch.float32, *HALF), default=lambda b, it: b != "triton" or it != torch.float16),
    indirect=["backend"],
)
def test_selective_scan_upstream_full_grid_short(backend, itype):
    """Upstream's commented-out grid at two short lengths (Triton: the shorter), every
    on/off combination of D, z, delta_bias and softplus, in fp32, fp16 and bf16."""
    _full_grid(backend, itype, (8,) if backend == "triton" else (8, 64), FEATURE_SETS)


@pytest.mark.slow
@pytest.mark.parametrize("backend,itype", cases((torch.float32, *HALF), runs=not_triton), indirect=["backend"])
def test_selective_scan_upstream_full_grid_long(backend, itype):
    """The rest of the commented-out grid's lengths; every fifth feature combination."""
    _full_grid(backend, itype, (16, 32), FEATURE_SETS)
    _full_grid(backend, itype, (372, 784, 1134), FEATURE_SETS[::5])


@pytest.mark.parametrize(
    "backend,chunk",
    cases(
        (1, 63, 339, 64, 200, 333),
        runs=lambda b, c: b != "triton" or c in (63, 200),
        default=lambda b, c: b != "triton" and c in (1, 63, 339),
    ),
    indirect=["backend"],
)
def test_streaming_in_chunks_with_gradients(backend, chunk):
    """1,000 steps (Triton: 400) scanned in pieces of `chunk` carrying the state (the
    streaming mode, gradients flowing back through every carry) against the float64
    whole: upstream's fp32 tolerances for the output and every gradient."""
    if backend == "ref" and chunk == 1:
        pytest.skip("1,000 one-step reference calls under autograd: slow, and the chunk=63 case covers the carry")
    L = 400 if backend == "triton" else 1000
    inp = upstream_scan_inputs(L, seed=3)
    fn = scan_fn(backend)

    def chunked(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state):
        h, outs = initial_state, []
        for s in range(0, L, chunk):
            sl = slice(s, s + chunk)
            y, h = fn(
                u=u[:, sl],
                delta=delta[:, sl],
                A=A,
                B=B[:, sl],
                C=C[:, sl],
                D=D,
                z=z[:, sl],
                delta_bias=delta_bias,
                initial_state=h,
                delta_softplus=delta_softplus,
                return_last_state=True,
            )
            outs.append(y)
        return torch.cat(outs, 1), h

    assert_within(scan_excess(chunked, inp), f"{backend} chunk={chunk}")


# --------------------------------------------------------------------------- causal conv

FLAGS = list(itertools.product([False, True], repeat=4))  # bias, SiLU, initial state, final state


def _conv_grid(backend, itype, width, seqlens, flags):
    for seqlen in seqlens:
        base = upstream_conv_inputs(seqlen, dim=64, width=width, itype=itype, seed=seqlen)
        for has_bias, silu, has_init, final in flags:
            inp = dict(
                base, bias=base["bias"] if has_bias else None, initial_tail=base["initial_tail"] if has_init else None
            )
            assert_within(
                conv_excess(conv_fn(backend), inp, activation="silu" if silu else None, final=final, itype=itype),
                f"{backend} {itype} L={seqlen} width={width} bias={has_bias} silu={silu} init={has_init} final={final}",
            )


# By default fp32 at width 4 and bf16 at width 2 (every flag at the short lengths; fp32
# also every length); the other dtype/width combinations are `slow`.
CONV_DEFAULT = {(torch.float32, 4), (torch.bfloat16, 2)}


@pytest.mark.parametrize(
    "backend,itype,width",
    cases([(it, w) for it in (torch.float32, *HALF) for w in (2, 3, 4)], default=lambda b, iw: iw in CONV_DEFAULT),
    indirect=["backend"],
)
def test_causal_conv1d_upstream_grid(backend, itype, width):
    """causal-conv1d's grid at dim 64: all 18 lengths with bias, SiLU, initial and final
    states on (Triton: test_causal_conv1d_upstream_every_length, `slow`), and every on/off
    combination of those at lengths 1, 2, 8 and 129 (shorter than, about, and past a block
    of the kernel); x in `itype` beside a float32 weight and bias (upstream's mixed dtypes)."""
    if backend != "triton" and (itype == torch.float32 or (itype, width) not in CONV_DEFAULT):
        _conv_grid(backend, itype, width, CONV_SEQLENS, [(True, True, True, True)])
    _conv_grid(backend, itype, width, (1, 2, 8, 129), FLAGS)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend,itype", cases((torch.float32, *HALF), runs=lambda b, it: b == "triton"), indirect=["backend"]
)
def test_causal_conv1d_upstream_every_length(backend, itype):
    """The grid's 18 lengths with every state on, for the backend whose interpreter makes
    them too slow for test_causal_conv1d_upstream_grid's default cases."""
    _conv_grid(backend, itype, 4, CONV_SEQLENS, [(True, True, True, True)])


@pytest.mark.slow
@pytest.mark.parametrize("backend,itype", cases((torch.float32, torch.bfloat16), runs=not_triton), indirect=["backend"])
def test_causal_conv1d_upstream_grid_every_flag(backend, itype, width=4):
    """Every length with every flag combination (width 4, fp32 and bf16; the other widths
    and dtypes run every flag at the short lengths above)."""
    _conv_grid(backend, itype, width, CONV_SEQLENS, FLAGS)


@pytest.mark.slow
@pytest.mark.parametrize("backend,itype", cases((torch.float32, torch.bfloat16), runs=not_triton), indirect=["backend"])
def test_causal_conv1d_upstream_wide(backend, itype):
    """Upstream's dim 4096 + 32 (channel blocks with a partial last one)."""
    for seqlen in (1, 129, 1134):
        inp = upstream_conv_inputs(seqlen, dim=4096 + 32, width=4, itype=itype, seed=seqlen)
        assert_within(
            conv_excess(conv_fn(backend), inp, activation="silu", final=True, itype=itype),
            f"{backend} {itype} L={seqlen} dim=4128",
        )
