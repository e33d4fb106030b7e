"""Build-on-first-use of the fused C++ CPU kernels (`csrc/scan_cpu.cpp`).

The extension is compiled with `torch.utils.cpp_extension.load` for the machine it runs
on (`-O3 -march=native`) into `~/.cache/vmstream/ext/<name>/` (or `$VMSTREAM_CACHE_DIR`,
or `$XDG_CACHE_HOME/vmstream`). The name is a hash of everything that changes the binary
(`_key_parts`): the source's content, the flags, the compiler and its version, the CPU's
feature flags, the torch version, installation and C++ ABI, and the Python build. Two
checkouts with the same source and the same torch share one build; another torch gets
its own. A finished build leaves `built.txt` (its key, written last); a process that finds
it loads the library directly, without asking torch's builder, whose ninja file names the
source's path and the torch headers' paths and would rebuild for every other checkout.
The ops are registered with `TORCH_LIBRARY` under a namespace that carries the same hash
(no pybind11, no Python headers: a smaller, faster build).

`load()` returns the op namespace (`ops.selective_scan_fwd(...)` etc.) or raises
`ExtensionUnavailable` with the reason (no compiler, no ninja, a failed build).
`python -m vmstream.models.ops.build` calls it ahead of time to warm the cache
(`scripts/setup` does).
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
import sysconfig
import threading
import time
from pathlib import Path

import torch

from vmstream import cache_dir

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
    return cache_dir.cache_root()


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
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
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


def _key_parts(flags: list[str]) -> dict[str, str]:
    """Everything the compiled library depends on, by name (written to `built.txt`)."""
    cxx = _compiler()
    return {
        "source": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "flags": " ".join(flags),
        "compiler": f"{os.path.realpath(cxx)} {_compiler_version(cxx)}" if cxx else "none",
        "CPU": _cpu_identity(),
        "torch version": torch.__version__,
        # Headers and libtorch come from this directory: two venvs with the same torch
        # version are still two builds (each .so links its own libtorch).
        "torch installation": str(Path(torch.__file__).resolve().parent),
        "C++ ABI": f"cxx11abi={int(torch.compiled_with_cxx11_abi())}",
        "Python": f"{sys.version} {sysconfig.get_paths()['include']}",
    }


def build_key(variant: str = "native") -> tuple[str, list[str]]:
    """(extension name, compiler flags) for a variant; the name hashes every input."""
    if variant not in VARIANT_FLAGS:
        raise ValueError(f"unknown kernel variant {variant!r}; expected one of {list(VARIANT_FLAGS)}")
    flags = BASE_FLAGS + _openmp_flags() + VARIANT_FLAGS[variant]
    h = hashlib.sha256()
    for label, value in _key_parts(flags).items():
        h.update(f"{label}={value}".encode())
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
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _notice(f"waiting for another process that is building the fused CPU scan kernel in {build_dir}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("removing %s, left by a build that was killed", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _notice(message: str) -> None:
    """A line the user sees before a long silent step: through logging where the program
    configured it (the CLI shows `vmstream` INFO by default), else straight to stderr
    (Python's fallback handler drops INFO, and 15 s of silence looks like a hang)."""
    if log.hasHandlers():
        log.info(message)
    else:
        print(f"vmstream: {message}", file=sys.stderr, flush=True)


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
    name, flags = build_key(variant)
    build_dir = cache_root() / "ext" / name
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExtensionUnavailable(
            f"cannot create the kernel cache directory {build_dir} ({e.strerror or e}); "
            "set VMSTREAM_CACHE_DIR to a writable directory"
        ) from None
    library, done = build_dir / f"{name}.so", build_dir / "built.txt"
    with _build_lock(build_dir):
        if done.exists() and library.exists():
            torch.ops.load_library(str(library))
            ops = getattr(torch.ops, name)
            # Every run: the "scan backend" line already says which kernels run.
            log.debug("fused CPU scan kernels (%s) loaded from %s", ops.isa(), build_dir)
            return ops
        before = library.stat().st_mtime_ns if library.exists() else None
        # Measured: 36 s on a quiet 2-core machine, 60-90 s on a busy one.
        _notice(
            "building the fused CPU scan kernel for this machine (once per torch install; "
            "about a minute on 2 cores) ..."
        )
        t0 = time.perf_counter()
        _compile(name, flags, build_dir)
        ops = getattr(torch.ops, name)
        done.write_text("".join(f"{k}: {v}\n" for k, v in _key_parts(flags).items()))
    isa = ops.isa()
    if before is not None and library.stat().st_mtime_ns == before:
        log.info("fused CPU scan kernels (%s) loaded from %s", isa, build_dir)
    else:
        _notice(f"fused CPU scan kernels ({isa}) built in {time.perf_counter() - t0:.1f} s into {build_dir}")
    return ops


def _compile(name: str, flags: list[str], build_dir: Path) -> None:
    """Build and load through torch's builder, from a copy of the source inside the build
    directory: the ninja file then names no checkout, so whichever checkout finishes an
    interrupted build reuses what another one compiled."""
    _ensure_ninja()
    from torch.utils import cpp_extension  # noqa: PLC0415 (slow import, only when building)

    source = build_dir / SOURCE.name
    text = SOURCE.read_bytes()
    if not source.exists() or source.read_bytes() != text:  # rewritten only when it differs: ninja reads mtimes
        source.write_bytes(text)
    ldflags = ["-fopenmp"] if "-fopenmp" in flags else []
    cpp_extension.load(
        name=name,
        sources=[str(source)],
        extra_cflags=flags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
