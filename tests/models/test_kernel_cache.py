"""The fused CPU kernel's build cache: one build per (source, compiler, flags, CPU, torch
installation, Python), shared by every checkout that has that source, announced before
it starts, and never reported as "loaded from" when it was rebuilt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vmstream
from vmstream.models.ops import cpu_ext

PACKAGE = Path(vmstream.__file__).parent


def _checkout(root: Path) -> Path:
    """A second copy of the package, as another clone of the repository would have."""
    shutil.copytree(PACKAGE, root / "vmstream", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _start_in(checkout: Path, cache: Path, *, logging: bool = True) -> subprocess.Popen:
    code = (
        "import logging; logging.basicConfig(level=logging.DEBUG)\n" if logging else ""
    ) + "from vmstream.models.ops import cpu_ext\ncpu_ext.load()\nprint(cpu_ext.SOURCE)\n"
    env = {**os.environ, "PYTHONPATH": str(checkout), "VMSTREAM_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _load_in(checkout: Path, cache: Path, *, logging: bool = True) -> subprocess.CompletedProcess:
    return _finish(_start_in(checkout, cache, logging=logging))


def _library(cache: Path) -> Path:
    (so,) = (cache / "ext").glob("*/*.so")
    return so


def test_two_checkouts_share_one_build_and_say_so(tmp_path):
    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    cache = tmp_path / "cache"
    a, b = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")

    first = _load_in(a, cache, logging=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(a / "vmstream" / "models" / "ops" / "csrc" / "scan_cpu.cpp")
    # Announced before the build, then reported as built: bare stderr lines, since this
    # process configured no logging (the CLI does, and they go through it there).
    announce = first.stderr.find("building the fused CPU scan kernel")
    assert announce >= 0, first.stderr
    assert first.stderr.find("built in") > announce, first.stderr
    so = _library(cache)
    built = so.stat().st_mtime_ns

    second = _load_in(b, cache)
    assert second.returncode == 0, second.stderr
    assert "building" not in second.stderr and "loaded from" in second.stderr, second.stderr
    assert _library(cache) == so and so.stat().st_mtime_ns == built  # not rebuilt

    again = _load_in(a, cache)  # and back: no ping-pong between the checkouts
    assert again.returncode == 0 and "loaded from" in again.stderr, again.stderr
    assert so.stat().st_mtime_ns == built


def test_two_checkouts_starting_together_build_once(tmp_path):
    """A pool of workers started at once on a fresh cache: one builds, the others wait for
    it (the flock) and load its library."""
    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    cache = tmp_path / "cache"
    procs = [_start_in(_checkout(tmp_path / n), cache) for n in ("a", "b")]
    runs = [_finish(p) for p in procs]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert sorted("built in" in r.stderr for r in runs) == [False, True], [r.stderr for r in runs]
    assert sum("loaded from" in r.stderr for r in runs) == 1, [r.stderr for r in runs]
    _library(cache)  # exactly one build directory


def test_the_key_follows_everything_that_changes_the_binary(tmp_path, monkeypatch):
    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    name, flags = cpu_ext.build_key()
    copy = tmp_path / "scan_cpu.cpp"
    copy.write_bytes(cpu_ext.SOURCE.read_bytes())
    monkeypatch.setattr(cpu_ext, "SOURCE", copy)
    assert cpu_ext.build_key()[0] == name  # same content elsewhere: the same build

    copy.write_bytes(copy.read_bytes() + b"\n// changed\n")
    assert cpu_ext.build_key()[0] != name  # changed source: a new build
    copy.write_bytes(cpu_ext.SOURCE.read_bytes()[: -len(b"\n// changed\n")])
    assert cpu_ext.build_key()[0] == name

    assert cpu_ext.build_key("scalar")[0] != name  # flags
    for part, value in [
        ("torch installation", "/elsewhere/site-packages/torch"),
        ("torch version", "9.9.9"),
        ("C++ ABI", "cxx11abi=0"),
        ("compiler", "/usr/bin/clang++ clang version 99"),
        ("CPU", "flags: sse2"),
        ("Python", "3.99.0"),
    ]:
        real = cpu_ext._key_parts

        def changed(flags, part=part, value=value, real=real):
            return {**real(flags), part: value}

        monkeypatch.setattr(cpu_ext, "_key_parts", changed)
        assert cpu_ext.build_key()[0] != name, part
        monkeypatch.setattr(cpu_ext, "_key_parts", real)
    assert cpu_ext.build_key()[0] == name


def test_the_key_names_the_torch_installation():
    """Two venvs with the same torch version are two builds: each links its own libtorch."""
    import torch

    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    parts = cpu_ext._key_parts(cpu_ext.build_key()[1])
    assert parts["torch installation"] == str(Path(torch.__file__).resolve().parent)
    assert parts["torch version"] == torch.__version__
    assert set(parts) >= {"source", "flags", "compiler", "CPU", "C++ ABI", "Python"}


def test_an_unwritable_cache_is_named_in_the_error(tmp_path, monkeypatch):
    if cpu_ext._compiler() is None:
        pytest.skip("no C++ compiler")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("VMSTREAM_CACHE_DIR", str(blocker / "cache"))  # under a file: no directory can be made
    monkeypatch.setattr(cpu_ext, "_loaded", {})
    monkeypatch.setattr(cpu_ext, "_failed", {})
    with pytest.raises(
        cpu_ext.ExtensionUnavailable, match=f"cannot create the kernel cache directory {blocker}.*VMSTREAM_CACHE_DIR"
    ):
        cpu_ext.load()
