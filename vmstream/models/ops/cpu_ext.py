"""Build-on-first-use of the fused C++ CPU kernels (`csrc/scan_cpu.cpp`).

The extension is compiled with `torch.utils.cpp_extension.load` for the machine it runs
on (`-O3 -march=native`) into `~/.cache/vmstream/ext/<name>/` (or `$VMSTREAM_CACHE_DIR`,
or `$XDG_CACHE_HOME/vmstream`). The name is a hash of the source, the flags, the torch
and Python versions, the compiler and the CPU's feature flags, so a second process (or a
second run) loads the cached library instead of rebuilding, and a changed source, torch
or CPU gets a fresh build. The ops are registered with `TORCH_LIBRARY` under a namespace
that carries the same hash (no pybind11, no Python headers: a smaller, faster build).

`load()` returns the op namespace (`ops.selective_scan_fwd(...)` etc.) or raises
`ExtensionUnavailable` with the reason (no compiler, no ninja, a failed build).
`python -m vmstream.models.ops.build` calls it ahead of time to warm the cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger("vmstream.models.ops")

SOURCE = Path(__file__).with_name("csrc") / "scan_cpu.cpp"

# Instruction-set variants. "native" is what users get; the others exist so the tests
# can exercise the AVX2 and the portable code paths on an AVX-512 machine.
VARIANT_FLAGS = {
    "native": ["-march=native"],
    "avx2": ["-march=haswell", "-mtune=generic"],
    "scalar": ["-march=x86-64", "-mtune=generic"] if platform.machine() in ("x86_64", "AMD64") else [],
}
# -ffp-contract=off: every intended fma is an explicit intrinsic; GCC would otherwise fuse
# a written multiply and add (the exp's argument reduction relies on them being rounded
# separately: fused, exp(-huge) came out inf).
BASE_FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-Wno-unused-function"]


def _openmp_flags() -> list[str]:
    """at::parallel_for's OpenMP backend is a `#pragma omp parallel` in an ATen header,
    so our translation unit must be compiled with -fopenmp or it runs on one thread.
    The library it links (libgomp.so.1) resolves by SONAME to the copy torch has already
    loaded: one OpenMP runtime, torch's own thread pool. With torch's native backend the
    header needs no flag."""
    if "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]:
        return ["-fopenmp"]
    return []


class ExtensionUnavailable(RuntimeError):
    """The C++ kernels cannot be built or loaded here; the message says why."""


_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}


def cache_root() -> Path:
    env = os.environ.get("VMSTREAM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vmstream"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or shutil.which("g++") or shutil.which("clang++")


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux) or its name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _ensure_ninja() -> None:
    """torch's builder runs `ninja`; the `ninja` wheel ships one outside PATH."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # noqa: PLC0415
    except ImportError:
        raise ExtensionUnavailable("ninja not found (pip install ninja)") from None
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def build_key(variant: str = "native") -> tuple[str, list[str]]:
    """(extension name, compiler flags) for a variant; the name hashes every input."""
    if variant not in VARIANT_FLAGS:
        raise ValueError(f"unknown kernel variant {variant!r}; expected one of {list(VARIANT_FLAGS)}")
    cxx = _compiler()
    flags = BASE_FLAGS + _openmp_flags() + VARIANT_FLAGS[variant]
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(flags).encode(), torch.__version__.encode(),
                 sys.version.encode(), _compiler_version(cxx).encode() if cxx else b"",
                 _cpu_identity().encode()):
        h.update(part)
        h.update(b"\0")
    name = f"vmstream_scan_{variant}_{h.hexdigest()[:16]}"
    return name, flags + [f"-DVMS_NS={name}"]


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """One builder per build directory across processes. torch's own lock is a file whose
    mere existence means "busy": a build killed midway (Ctrl-C on first use) leaves it
    behind and every later load waits on it forever. Ours is an flock, which the kernel
    drops when its holder dies; while we hold it nobody else is building here, so a
    torch lock file found then is such a leftover and is removed."""
    import fcntl  # noqa: PLC0415 (POSIX; Windows never builds, see _build_and_load)

    with open(build_dir / "build.flock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("removing %s, left by a build that was killed", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(variant: str = "native"):
    """The op namespace of the compiled kernels, building them on first use."""
    with _lock:
        if variant in _loaded:
            return _loaded[variant]
        if variant in _failed:
            raise ExtensionUnavailable(_failed[variant])
        try:
            ops = _build_and_load(variant)
        except ExtensionUnavailable as e:
            _failed[variant] = str(e)
            raise
        except Exception as e:  # a failed compile: keep the compiler's last words
            msg = f"building {SOURCE.name} failed: {_tail(str(e))}"
            _failed[variant] = msg
            raise ExtensionUnavailable(msg) from e
        _loaded[variant] = ops
        return ops


def _tail(text: str, lines: int = 12) -> str:
    err = [ln for ln in text.splitlines() if "error" in ln.lower()]
    return " | ".join((err or text.splitlines())[-lines:])[-2000:]


def _build_and_load(variant: str):
    if sys.platform == "win32":
        raise ExtensionUnavailable("the fused CPU kernels are built with gcc/clang; not on Windows")
    if _compiler() is None:
        raise ExtensionUnavailable("no C++ compiler (c++, g++ or clang++) on PATH")
    _ensure_ninja()
    from torch.utils import cpp_extension  # noqa: PLC0415 (slow import, only when building)

    name, flags = build_key(variant)
    build_dir = cache_root() / "ext" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    cached = (build_dir / f"{name}.so").exists()
    t0 = time.perf_counter()
    ldflags = ["-fopenmp"] if "-fopenmp" in flags else []
    with _build_lock(build_dir):
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=ldflags,
                           build_directory=str(build_dir), is_python_module=False, verbose=False)
    ops = getattr(torch.ops, name)
    isa = ops.isa()
    if cached:
        log.info("fused CPU scan kernels (%s) loaded from %s", isa, build_dir)
    else:
        log.info("fused CPU scan kernels (%s) built in %.1f s into %s", isa,
                 time.perf_counter() - t0, build_dir)
    return ops
