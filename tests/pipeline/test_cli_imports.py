"""`--version`, `--help` and a config error answer at once: they import no torch (about
10 s on a busy machine) and stay under a fixed number of modules. Counted, not timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What the parser and a config error need today is ~120 / ~370 modules (argparse, yaml,
# pydantic); torch alone brings over 1000, so these bounds catch it and anything as heavy.
PARSER_BUDGET = 200
CONFIG_BUDGET = 600

_PROBE = """
import json, sys
from vmstream.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = sorted(m for m in ("torch", "numpy", "av", "faiss", "kafka", "tokenizers", "pyarrow") if m in sys.modules)
print(json.dumps({"rc": rc, "modules": len(sys.modules), "heavy": heavy}), file=sys.stderr)
"""


def _imports(*argv: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)
    return json.loads(r.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["run", "--help"],
        ["search", "--help"],
        ["eval-retrieval", "--help"],
        ["train", "--help"],
    ],
)
def test_version_and_help_import_no_torch(argv):
    got = _imports(*argv)
    assert got["rc"] == 0
    assert got["heavy"] == [], f"{' '.join(argv)} imported {got['heavy']}"
    assert got["modules"] < PARSER_BUDGET, f"{' '.join(argv)} imported {got['modules']} modules"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "clip.mp4", "--set", "decode.fpss=2"],
        ["run", "nosuch.mp4"],
        ["train", "--config", "configs/train/synthetic_memory.yaml", "--set", "epochz=1"],
        ["eval", "--config", "nosuch.yaml"],
    ],
)
def test_a_config_error_does_not_wait_for_torch(argv):
    got = _imports(*argv)
    assert got["rc"] == 2
    assert "torch" not in got["heavy"], f"{' '.join(argv)} imported torch before its one-line error"
    assert got["modules"] < CONFIG_BUDGET, f"{' '.join(argv)} imported {got['modules']} modules"


def test_python_m_training_takes_set_as_vmstream_train_does():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmstream.training",
            "train",
            "--config",
            "configs/train/synthetic_memory.yaml",
            "--set",
            "epochz=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith("epochz: unknown key"), r.stderr
