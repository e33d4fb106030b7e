"""The store fuzz (benchmarks/store_fuzz.py) in small: every damaged copy ends in a clear
error or a harmless clean run, never a traceback, a hang or silent damage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_store_fuzz_finds_no_traceback_hang_or_silent_damage():
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "store_fuzz.py"), "--cases", "8", "--seed", "3", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    figures = dict(line.split("=") for line in p.stdout.splitlines() if line.startswith("store_fuzz_"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert figures["store_fuzz_traceback"] == figures["store_fuzz_hang"] == figures["store_fuzz_wrong_result"] == "0"
    assert int(figures["store_fuzz_clear_error"]) + int(figures["store_fuzz_clean_run"]) == 8
