"""Backend selection: automatic choice, overrides, fallbacks and their log lines, errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.fixtures.ops import pick, scan_inputs
from vmstream.models.ops import causal_conv1d as conv
from vmstream.models.ops import cpu_ext, dispatch, selective_scan


@pytest.fixture(autouse=True)
def fresh_dispatch():
    dispatch.reset()
    yield
    dispatch.reset()


@pytest.fixture
def calls(monkeypatch):
    """Which implementation ran: wraps each backend's entry point."""
    seen = []
    from vmstream.models.ops import cpu, numba_scan

    def spy(mod, name, tag):
        orig = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, **k: (seen.append(tag), orig(*a, **k))[1])

    spy(dispatch, "selective_scan_ref", "ref")
    spy(cpu, "selective_scan_cpu", "cpp")
    spy(numba_scan, "selective_scan_numba", "numba")
    return seen


def small():
    return pick(scan_inputs(Bsz=1, L=5, D=16, N=4), use_z=False)


def test_available_backends_reports_each_one():
    status = dispatch.available_backends()
    assert set(status) == {"ref", "cpu", "numba", "triton"}
    assert status["ref"] == "ok"
    assert status["numba"] == "ok"
    if cpu_ext._compiler() is not None:
        assert status["cpu"] == "ok"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        assert status["triton"].startswith("no CUDA device")


def test_cpu_tensors_use_the_fused_kernel(calls):
    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    selective_scan(**small())
    assert calls == ["cpp"]


def test_the_argument_is_the_only_choice(calls, monkeypatch):
    """backend= picks the backend; an environment variable the old releases read changes nothing."""
    selective_scan(**small(), backend="ref")
    selective_scan(**small(), backend="numba")
    monkeypatch.setenv("VMSTREAM_SCAN_BACKEND", "ref")
    selective_scan(**small(), backend="numba")
    assert calls == ["ref", "numba", "numba"]


def test_unknown_or_misplaced_backends_are_clear_errors():
    with pytest.raises(ValueError, match="unknown scan backend 'gpu'; expected one of"):
        selective_scan(**small(), backend="gpu")
    # the mamba-ssm backend, removed: the error says so and names its successor
    with pytest.raises(ValueError, match="'cuda' was removed .*mamba-ssm.*'triton' is the GPU backend"):
        selective_scan(**small(), backend="cuda")


def test_check_backend_checks_the_name_it_is_given():
    dispatch.check_backend(None, torch.device("cpu"))  # automatic: always runs
    dispatch.check_backend("ref", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown scan backend 'fast'"):
        dispatch.check_backend("fast")
    with pytest.raises(ValueError, match="scan backend 'cuda' was removed"):
        dispatch.check_backend("cuda", torch.device("cpu"))


def test_no_compiler_falls_back_to_numba_and_says_why(calls, monkeypatch, caplog):
    monkeypatch.setattr(cpu_ext, "_compiler", lambda: None)
    monkeypatch.setattr(cpu_ext, "_loaded", {})
    with caplog.at_level(logging.INFO, logger="vmstream.models.ops"):
        selective_scan(**small())
        selective_scan(**small())
    assert calls == ["numba", "numba"]
    lines = [r.getMessage() for r in caplog.records if "scan backend" in r.getMessage()]
    assert len(lines) == 1 and "numba" in lines[0] and "no C++ compiler" in lines[0]
    assert "no C++ compiler" in dispatch.available_backends()["cpu"]


def test_no_compiler_and_no_numba_falls_back_to_the_reference(calls, monkeypatch, caplog):
    monkeypatch.setattr(cpu_ext, "_compiler", lambda: None)
    monkeypatch.setattr(cpu_ext, "_loaded", {})
    monkeypatch.setattr(dispatch, "_numba_status", lambda: "numba not installed")
    with caplog.at_level(logging.INFO, logger="vmstream.models.ops"):
        selective_scan(**small())
    assert calls == ["ref"]
    assert any("ref" in r.getMessage() and "numba not installed" in r.getMessage() for r in caplog.records)


def test_a_failed_build_is_reported_with_the_compiler_error(monkeypatch, tmp_path):
    """A build that fails keeps the compiler's message (and never retries per call)."""
    bad = tmp_path / "bad.cpp"
    bad.write_text("this is not C++;\n")
    monkeypatch.setattr(cpu_ext, "SOURCE", bad)
    monkeypatch.setattr(cpu_ext, "_loaded", {})
    monkeypatch.setattr(cpu_ext, "_failed", {})
    monkeypatch.setenv("VMSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(cpu_ext.ExtensionUnavailable, match="failed.*error"):
        cpu_ext.load()
    with pytest.raises(cpu_ext.ExtensionUnavailable):  # remembered, not rebuilt
        cpu_ext.load()


def test_shape_errors_name_the_input():
    inp = small()
    with pytest.raises(ValueError, match=r"delta must have shape \[1, 5, 16\]"):
        selective_scan(**{**inp, "delta": torch.zeros(1, 5, 15)})
    with pytest.raises(ValueError, match=r"initial_state must have shape \[1, 16, 4\]"):
        selective_scan(**{**inp, "initial_state": torch.zeros(1, 4, 16)})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**{**inp, "A": torch.zeros(4, 16)})
    with pytest.raises(ValueError, match="no tokens"):
        selective_scan(**{k: (v[:, :0] if k in ("u", "delta", "B", "C") else v) for k, v in inp.items()})
    x = torch.zeros(1, 5, 16)
    with pytest.raises(ValueError, match=r"initial_tail must have shape \[1, 16, 3\]"):
        conv(x, torch.zeros(16, 4), initial_tail=torch.zeros(1, 16, 4))
    with pytest.raises(ValueError, match="weight must be"):
        conv(x, torch.zeros(8, 4))
    with pytest.raises(ValueError, match="activation"):
        conv(x, torch.zeros(16, 4), activation="relu")


def test_cpu_use_never_imports_the_gpu_packages():
    code = (
        "import sys, torch\n"
        "from vmstream.models.ops import selective_scan, causal_conv1d, available_backends\n"
        "x = torch.randn(1, 4, 16)\n"
        "selective_scan(x, x.abs(), -torch.ones(16, 4), torch.randn(1, 4, 4), torch.randn(1, 4, 4))\n"
        "causal_conv1d(x, torch.randn(16, 4))\n"
        "available_backends(build=False)\n"
        "bad = [m for m in ('mamba_ssm', 'causal_conv1d', 'triton') if m in sys.modules]\n"
        "print('imported:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    # tests/models/ops/conftest.py sets TRITON_INTERPRET=1, which asks for Triton on the CPU
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_build_command_warms_the_cache():
    """`python -m vmstream.models.ops.build`: a second process loads the cached build."""
    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    cpu_ext.load()  # built (or loaded) in this process
    r = subprocess.run([sys.executable, "-m", "vmstream.models.ops.build"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "fused CPU kernels ready" in r.stdout
    assert "loaded from" in r.stdout + r.stderr  # not rebuilt


def test_a_build_lock_left_by_a_killed_build_does_not_hang_later_loads(tmp_path):
    """Ctrl-C during the first build leaves torch's lock file behind; torch alone would
    wait on it forever. The next process removes it under its own flock and loads."""
    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    cpu_ext.load()
    name, _ = cpu_ext.build_key()
    # A private copy of the built cache: the shared one is used by other processes, one
    # of which could clear the stale lock before the process under test sees it.
    shutil.copytree(cpu_ext.cache_root() / "ext" / name, tmp_path / "ext" / name)
    (tmp_path / "ext" / name / "lock").touch()
    r = subprocess.run(
        [sys.executable, "-m", "vmstream.models.ops.build"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VMSTREAM_CACHE_DIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    assert "fused CPU kernels ready" in r.stdout
    assert "left by a build that was killed" in r.stdout + r.stderr
