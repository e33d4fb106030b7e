"""benchmarks/gpu_check.py --dry-run: every step of the GPU check on CPU tensors (the
Triton kernels through the interpreter, tiny models, PyAV), so its first real run on a
GPU meets no plumbing error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(prelude: str = "") -> subprocess.CompletedProcess:
    code = (
        f"import sys, runpy\n{prelude}"
        f"sys.argv = [{str(SCRIPT)!r}, '--dry-run']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env, cwd=REPO)


def _figures(stdout: str) -> dict:
    tail = stdout.split("\n== figures", 1)[1].splitlines()[1:]
    pairs = [line.split("=", 1) for line in tail if line.strip()]
    assert all(len(p) == 2 and re.fullmatch(r"[a-z0-9_]+", p[0]) for p in pairs), tail
    return {k: float(v) for k, v in pairs}


@pytest.mark.slow  # ~35 CPU-seconds, 45-75 s on a shared 2-core machine
def test_dry_run_runs_every_section_and_passes(triton_ops):
    r = _run()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    for title in ("1. parity", "2. decoding", "3. throughput", "4. faiss"):
        assert f"== {title}" in r.stdout
    assert "FAIL" not in r.stdout
    assert "log: scan backend: triton (asked for by name)" in r.stdout
    assert "SKIP mamba-ssm yardstick (Triton against mamba-ssm's own kernels): no CUDA device" in r.stdout
    figs = _figures(r.stdout)
    assert figs["gpu_check_ok"] == 1 and figs["failures"] == 0
    assert r.stdout.rstrip().splitlines()[-1] == "gpu_check_ok=1"
    for key in (
        "parity_scan_fp32_fwd",
        "parity_scan_fp32_bwd",
        "parity_conv_fp32_bwd",
        "parity_model_ti_fp32",
        "parity_model_m_fp32",
    ):
        assert figs[key] < 1e-4, key
    assert 0 < figs["parity_scan_bf16_bwd"] < 5e-2  # bf16 inputs really reached the kernels
    assert figs["bf16_drift_ti"] > 0  # autocast really ran in bf16
    assert figs["decode_pyav_fps"] > 0 and figs["ti2_b2_bf16_seg_per_s"] > 0
    assert figs["matmul_tflops_fp32"] > 0 and figs["faiss_top10_mismatch"] == 0
    assert figs["scan_backend_triton_vs_ref"] > 0 and figs["scan_backend_triton_vs_ref_train"] > 0
    assert figs["scan_triton_vs_mamba_ssm"] != figs["scan_triton_vs_mamba_ssm"]  # nan: no mamba-ssm here
    assert figs["pipeline_2x108p_seg_per_s"] > 0 and figs["pipeline_2x108p_vs_slowest_stage"] > 0


@pytest.mark.slow
def test_dry_run_with_only_torch_skips_each_missing_package(triton_ops):
    """PyAV, faiss and DALI missing: each of their steps says so, the kernels and
    models are still checked, and the run passes."""
    r = _run("for m in ('av', 'faiss', 'nvidia', 'nvidia.dali', 'pyarrow'):\n    sys.modules[m] = None\n")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "SKIP decoding: PyAV (or pyarrow) not installed" in r.stdout
    assert "SKIP faiss: faiss or the store's dependencies not installed" in r.stdout
    assert "SKIP pipeline: a package of the pipeline is missing" in r.stdout
    figs = _figures(r.stdout)
    assert figs["parity_model_m_fp32"] < 1e-3 and figs["gpu_check_ok"] == 1
    assert figs["decode_pyav_fps"] != figs["decode_pyav_fps"]  # nan: did not run
