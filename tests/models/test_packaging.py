"""What a user installs: the `read` extra the README points to for reading the Parquet
output, and the kernel pre-build `scripts/setup` runs (which must fail soft, in one line,
where no compiler exists)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_the_read_extra_brings_what_the_readme_promises():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"pandas", "duckdb"} <= _requirement_names(extras["read"])
    assert _requirement_names(extras["read"]) <= _requirement_names(extras["dev"])  # the tests read like users
    readme = (REPO / "README.md").read_text()
    assert "pandas/duckdb" in readme
    assert '.venv/bin/pip install -e ".[read]"' in readme


def test_setup_parses_and_prebuilds_the_kernel():
    setup = REPO / "scripts" / "setup"
    r = subprocess.run(["bash", "-n", str(setup)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ".venv/bin/python -m vmstream.models.ops.build" in setup.read_text()


def test_the_prebuild_without_a_compiler_says_so_in_one_line(tmp_path):
    """`scripts/setup` shows the build's last line and goes on with numba."""
    env = {
        **os.environ,
        "PATH": str(tmp_path),
        "CXX": "no-such-compiler",
        "PYTHONPATH": str(REPO),
        "VMSTREAM_CACHE_DIR": str(tmp_path / "cache"),
    }
    r = subprocess.run(
        [sys.executable, "-m", "vmstream.models.ops.build"], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert lines == ["fused CPU kernels unavailable: no C++ compiler (c++, g++ or clang++) on PATH"], lines
