"""Shared pytest fixtures. Each area keeps its fixtures in its own module under
tests/fixtures/ and registers it here with one import line."""

import os

# Triton decides between interpreted and compiled kernels when a kernel module is
# imported: set the interpreter before anything can import one (the CI tool check below
# imports triton, and collection may import the kernels through the ops dispatch). Only
# Triton reads it; the Triton tests run on CPU tensors through it (tests/models/ops/).
os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.fixtures.kafka import *  # noqa: F401,F403
from tests.fixtures.media import *  # noqa: F401,F403
from tests.fixtures.training import *  # noqa: F401,F403
from tests.fixtures.videomamba import *  # noqa: F401,F403


def pytest_sessionstart(session):
    """In CI a missing test tool is a failure, not a quiet skip: `scripts/setup --dev`
    installs all of them, so a skip there would mean a broken setup passing as green."""
    import os
    import platform
    import shutil

    import pytest

    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    from vmstream.models.ops import cpu_ext

    missing = [tool for tool in ("ffmpeg", "java", "mvn") if shutil.which(tool) is None]
    if cpu_ext._compiler() is None:
        missing.append("a C++ compiler")
    for mod in (
        ["duckdb", "matplotlib"]
        + (["nvidia.dali"] if platform.machine() == "x86_64" else [])
        + (["triton"] if platform.system() == "Linux" else [])
    ):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise pytest.UsageError(f"CI: scripts/setup --dev left these test tools missing: {', '.join(missing)}")
