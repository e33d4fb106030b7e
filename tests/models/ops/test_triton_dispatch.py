"""Where the Triton kernels are chosen (dispatch.py): the automatic rule on CUDA with its
fallbacks and log lines, a model built with scan_backend="triton" running every op on
it, and clear errors where Triton cannot run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from vmstream.models import set_scan_backend
from vmstream.models.ops import dispatch

TRITON_MISSING = "triton not importable (ImportError: No module named 'triton')"


def _scan_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("scan backend")]


@pytest.fixture(autouse=True)
def fresh_dispatch():
    dispatch.reset()
    yield
    dispatch.reset()


def test_cuda_tensors_get_triton_first(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_triton_status", lambda: "ok")
    with caplog.at_level(logging.INFO, logger="vmstream.models.ops"):
        assert dispatch._auto_cuda() == "triton"
        assert dispatch._auto_cuda() == "triton"
    assert _scan_lines(caplog) == ["scan backend: triton (vmstream's Triton kernels on CUDA)"]


def test_without_triton_the_reference_runs_and_the_log_says_why(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_triton_status", lambda: TRITON_MISSING)
    with caplog.at_level(logging.INFO, logger="vmstream.models.ops"):
        assert dispatch._auto_cuda() == "ref"
        assert dispatch._auto_cuda() == "ref"
    (line,) = _scan_lines(caplog)
    assert line.startswith("scan backend: ref on CUDA tensors") and TRITON_MISSING in line


def test_available_backends_reports_triton(triton_ops):
    assert dispatch.available_backends(build=False)["triton"] == "ok"  # the interpreter here


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(changes)
    return env


SCAN = (
    "import torch\n"
    "from vmstream.models.ops import selective_scan\n"
    "x = torch.randn(1, 4, 16)\n"
    "scan = lambda backend: selective_scan(x, x.abs(), -torch.ones(16, 4), torch.randn(1, 4, 4), "
    "torch.randn(1, 4, 4), backend=backend)\n"
)


def test_forcing_triton_without_triton_installed_says_so():
    """Triton missing: `vmstream info` says why; the automatic choice runs another
    backend; forcing Triton fails with the reason instead of running something else."""
    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # as if not installed\n"
        "from vmstream.models.ops import available_backends\n"
        "print('status:', available_backends(build=False)['triton'])\n" + SCAN + "scan(None)\n"
        "print('automatic: ran')\n"
        "scan('triton')\n"
    )
    r = _run(code, _env(TRITON_INTERPRET="1"))
    assert "status: triton not importable" in r.stdout, r.stdout + r.stderr
    assert "automatic: ran" in r.stdout
    assert r.returncode != 0
    assert "RuntimeError: scan backend 'triton': triton not importable" in r.stderr


def test_forcing_triton_on_cpu_tensors_without_the_interpreter_is_a_clear_error():
    pytest.importorskip("triton")
    r = _run(SCAN + "scan('triton')\n", _env())
    assert r.returncode != 0
    assert "needs CUDA tensors, or TRITON_INTERPRET=1" in r.stderr, r.stderr


def test_the_whole_model_streams_through_the_triton_kernels(triton_ops, monkeypatch, caplog):
    """A model on scan_backend="triton": every scan and conv of it runs on the Triton
    kernels (interpreted here), three segments with carried state equal to the reference,
    and the gradients of a training step through the carried state too."""
    model = make_tiny_model(seed=5, num_frames=2, depth=1).train()
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(1, 3, 2, 32, 32, generator=g) for _ in range(3)]
    ran = []
    for name in ("selective_scan_triton", "causal_conv1d_triton"):
        orig = getattr(triton_ops, name)
        monkeypatch.setattr(triton_ops, name, lambda *a, _o=orig, _n=name, **k: (ran.append(_n), _o(*a, **k))[1])

    def stream(backend):
        set_scan_backend(model, backend)
        model.zero_grad(set_to_none=True)
        state, feats = None, []
        for clip in clips:
            out = model.forward_segment(clip, state)
            state, feats = out.state, feats + [out.features]
        (torch.stack(feats).square().sum() + state.ssm.sum()).backward()
        return torch.stack(feats), state, {n: p.grad for n, p in model.named_parameters()}

    with caplog.at_level(logging.INFO, logger="vmstream.models.ops"):
        feats, state, grads = stream("triton")
    assert "scan backend: triton (asked for by name)" in _scan_lines(caplog)
    assert ran.count("selective_scan_triton") == 3 * 2 and ran.count("causal_conv1d_triton") == 3 * 2
    ref_feats, ref_state, ref_grads = stream("ref")
    torch.testing.assert_close(feats, ref_feats, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.ssm, ref_state.ssm, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.conv, ref_state.conv, atol=1e-6, rtol=1e-6)
    assert sum(g is not None for g in ref_grads.values()) > 10
    for n in ref_grads:
        assert (grads[n] is None) == (ref_grads[n] is None), n
        if ref_grads[n] is None:
            continue
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-3, msg=lambda m, n=n: f"{n}: {m}")
