"""The Triton kernels run here on CPU tensors through Triton's interpreter.

triton_scan.py builds interpreted or compiled kernels when it is imported, from
TRITON_INTERPRET at that moment: so the variable is set here, when pytest collects this
folder, before any test imports the kernels. It stays set for the session (only Triton
code reads it); subprocess tests that must not see it remove it from their env.
"""

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # numpy >= 1.25 deprecates what Triton 3.6's interpreter does on every index (int() of
    # a 1-element array); numpy 2.4 makes it an error, hence numpy<2.4 in the dev extra.
    config.addinivalue_line("filterwarnings", "ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@pytest.fixture
def triton_ops(monkeypatch):
    """The Triton kernel module, with the backward checkpoint interval lowered to 8 steps
    so short test sequences cross several recompute chunks (and end in a partial one)."""
    pytest.importorskip("triton", reason="triton not installed (pip install -e '.[dev]')")
    from vmstream.models.ops import dispatch, triton_scan

    if triton_scan.INTERPRETER_PROBLEM:
        # in CI `scripts/setup --dev` installs numpy<2.4: a skip there would hide a broken setup
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(triton_scan.INTERPRETER_PROBLEM)
        pytest.skip(triton_scan.INTERPRETER_PROBLEM)
    dispatch.reset()
    monkeypatch.setattr(triton_scan, "CKPT_EVERY", 8)
    yield triton_scan
    dispatch.reset()
