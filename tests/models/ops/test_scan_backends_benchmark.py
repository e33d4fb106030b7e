"""benchmarks/scan_backends.py at tiny sizes: one run prints every backend's line (a ratio
against the reference measured in the same run), and Triton's pointer to gpu_check."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "scan_backends.py"
KEYS = [f"scan_backend_{k}{s}" for s in ("", "_train") for k in ("cpu_vs_ref", "numba_vs_ref", "numba_vs_cpu")] + [
    "scan_backend_ref_forward_ms",
    "scan_backend_ref_train_ms",
]


def test_one_run_prints_a_line_per_backend():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--frames", "1", "--img-size", "32", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    lines = [line for line in r.stdout.splitlines() if line and not line.startswith("#")]
    pairs = dict(line.split("=", 1) for line in lines)
    assert all(re.fullmatch(r"[a-z0-9_]+", k) for k in pairs), lines
    assert sorted(pairs) == sorted(KEYS), lines
    figs = {k: float(v) for k, v in pairs.items()}
    from vmstream.models.ops import cpu_ext

    for key in KEYS:  # numba always runs here; cpu wherever a compiler is
        if "cpu" in key and cpu_ext._compiler() is None:
            assert math.isnan(figs[key]), key
        else:
            assert figs[key] > 0, key
    segment = [line for line in r.stdout.splitlines() if line.startswith("# segment forward [")]
    assert len(segment) == (3 if cpu_ext._compiler() is not None else 2), segment
    assert "scan_backend_triton_vs_ref= is printed by benchmarks/gpu_check.py" in r.stdout
