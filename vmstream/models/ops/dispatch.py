"""Backend selection for the scan and conv ops.

Contract (every backend honours it, tests hold each to `reference.py`):

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, initial_state=None,
                   return_last_state=False, reverse=False, backend=None,
                   out=None, accumulate=False)
        u, delta, z: [B, L, D] (last dim contiguous; any stride over L and B)
        A: [D, N]   B, C: [B, L, N]   D, delta_bias: [D]   initial_state: [B, D, N]
        -> out [B, L, D]  (and last_state [B, D, N] float32 if return_last_state)

    causal_conv1d(x, weight, bias=None, initial_tail=None, activation=None,
                  return_final_tail=False, reverse=False, backend=None)
        x: [B, L, D]  weight: [D, K] (or nn.Conv1d's [D, 1, K])  initial_tail: [B, D, K-1]
        -> out [B, L, D]  (and final_tail [B, D, K-1] if return_final_tail)

Optional keyword arguments added to the contract:
    out=None, accumulate=False (selective_scan): when `out` ([B, L, D]) is given the
        result is written into it, or added to it with `accumulate=True`, and `out` is
        returned. The bidirectional block sums its two directions this way: the
        backward-direction scan (`reverse=True`) adds into the forward direction's
        output with no extra [B, L, D] temporary. On the "cpu" backend without
        gradients a float32 `out` with a contiguous last dim is written by the kernel
        itself; elsewhere (and under autograd) it is `out.add_(y)` / `out.copy_(y)`.

`backend` is None (automatic), or one of "ref", "cpu", "numba", "triton": the
argument is the only way to choose, nothing process-wide (a model holds its mixers'
`scan_backend` and passes it to every call; the pipeline's `model.scan_backend` sets it).
Automatic: CUDA tensors -> "triton" (vmstream's own Triton
kernels, `triton_scan.py`; Triton ships with torch's CUDA wheels); where Triton does not
import, "ref" — the choice logged once, with the reason for the fallback. CPU tensors ->
"cpu", the fused C++ kernel, built on first use (`cpu_ext.py`); where it cannot be built
it falls back to "numba", and where numba is missing too, to "ref" — each fallback
logged once with its reason. "numba" asks for the numba kernels explicitly. "triton" on
CPU tensors runs the Triton kernels through Triton's interpreter and needs
TRITON_INTERPRET=1 in the environment before the first Triton scan (tests, and checking
the whole model through the GPU kernels on a machine without a GPU). Backends differ
only in float rounding (a few ulp per op); the CPU and Triton ones compute in float32
and return `out` in u's dtype (x's for the conv). Each earns its place with a line in a
benchmark: benchmarks/scan_backends.py (cpu and numba against ref), gpu_check.py
(triton against ref on a GPU). There is no mamba-ssm backend any more (it was "cuda"):
the Triton kernels carry the state natively, and gpu_check.py holds them against
mamba-ssm's own kernels, as a yardstick, where those are installed.

Gradients: every backend is differentiable with respect to every tensor input,
`initial_state` and `initial_tail` included, and a loss on `last_state` / `final_tail`
flows back (truncated BPTT across segments). "cpu" and "numba" have backward kernels
that recompute the states from checkpoints every 64 steps (memory O(B·D·N·L/64));
"triton" has a backward kernel with the same checkpoint scheme (every 32 steps) for the
scan and recomputes the conv's backward through `F.conv1d` (its forward has two parallel
forms, VMSTREAM_TRITON_SCAN_FORM=sequential|chunked, see `triton_scan.py`).

`available_backends()` tells which backends work here and why not (`vmstream info`).
Pre-build the C++ kernel with `python -m vmstream.models.ops.build`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

import torch
from torch import Tensor

from vmstream.scan_backend_names import check_backend_name

from .reference import causal_conv1d_ref, selective_scan_ref

log = logging.getLogger("vmstream.models.ops")


_lock = threading.Lock()
_cpu_impl: Optional[str] = None  # what "cpu" resolved to: "cpp", "numba" or "ref"
_numba_error: Optional[str] = None
_triton_error: Optional[str] = None
_warned: set[str] = set()


def _numba_status() -> str:
    if _numba_error is not None:
        return _numba_error
    try:
        import numba  # noqa: F401, PLC0415
    except ImportError as e:
        return f"numba not installed ({e})"
    return "ok"


def _triton_status() -> str:
    """ "ok", or why the Triton kernels cannot run here. Imports triton only where it
    could run: with a CUDA device, or with TRITON_INTERPRET=1 (the interpreter)."""
    global _triton_error
    if _triton_error is not None:
        return _triton_error
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the Triton kernels on CPU tensors)"
    try:
        from . import triton_scan  # noqa: F401, PLC0415
    except Exception as e:  # ImportError, or a triton that breaks at import
        _triton_error = (
            f"triton not importable ({type(e).__name__}: {e}); it ships with torch's "
            "CUDA wheels, or pip install 'vmstream[gpu]'"
        )
        return _triton_error
    return "ok"


def available_backends(build: bool = True) -> dict[str, str]:
    """Backend name -> "ok" or the reason it is unusable here.

    With `build=True` (the default) the C++ kernel is built if it is not cached yet
    (about 10-20 s, once per machine); with `build=False` an unbuilt kernel is
    reported as such instead.
    """
    from . import cpu_ext  # noqa: PLC0415

    result = {"ref": "ok"}
    if build:
        try:
            cpu_ext.load()
            result["cpu"] = "ok"
        except cpu_ext.ExtensionUnavailable as e:
            result["cpu"] = str(e)
    else:
        result["cpu"] = "ok" if "native" in cpu_ext._loaded else "not built yet (built on first use)"
    result["numba"] = _numba_status()
    result["triton"] = _triton_status()
    return result


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def _info_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.info(msg, *args)


def _auto_cuda() -> str:
    """The automatic choice for CUDA tensors: Triton, else the reference; the choice (and
    why Triton was passed over) logged once."""
    triton_status = _triton_status()
    if triton_status == "ok":
        _info_once("auto-cuda", "scan backend: triton (vmstream's Triton kernels on CUDA)")
        return "triton"
    _warn_once(
        "auto-cuda",
        "scan backend: ref on CUDA tensors, the slow PyTorch loop (Triton unavailable: %s)",
        triton_status,
    )
    return "ref"


def _resolve_cpu() -> str:
    """What the "cpu" backend runs on this machine: decided once, logged once."""
    global _cpu_impl
    with _lock:
        if _cpu_impl is not None:
            return _cpu_impl
        from . import cpu_ext  # noqa: PLC0415

        try:
            ops = cpu_ext.load()
            _cpu_impl = "cpp"
            log.info("scan backend: cpu (fused C++ kernel, %s)", ops.isa())
            return _cpu_impl
        except cpu_ext.ExtensionUnavailable as e:
            reason = str(e)
        status = _numba_status()
        if status == "ok":
            _cpu_impl = "numba"
            log.warning("scan backend: numba (the fused C++ kernel is unavailable: %s)", reason)
        else:
            _cpu_impl = "ref"
            log.warning(
                "scan backend: ref, the slow PyTorch loop (C++ kernel unavailable: %s; numba unavailable: %s)",
                reason,
                status,
            )
        return _cpu_impl


def _choose(tensor: Tensor, backend: Optional[str]) -> str:
    if backend is not None:
        check_backend_name(backend)
        if backend in ("cpu", "numba") and tensor.device.type != "cpu":
            raise ValueError(f"scan backend {backend!r} needs CPU tensors, got {tensor.device}")
        if backend == "triton":
            status = _triton_status()
            if status.startswith("triton not importable"):
                raise RuntimeError(f"scan backend 'triton': {status}")
            if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError(
                    "scan backend 'triton' needs CUDA tensors, or "
                    f"TRITON_INTERPRET=1 in the environment to run on {tensor.device} "
                    "tensors through Triton's interpreter"
                )
        _info_once(f"named-{backend}", "scan backend: %s (asked for by name)", backend)
        return backend
    if tensor.is_cuda:
        return _auto_cuda()
    if tensor.device.type == "cpu":
        return "cpu"
    return "ref"


def check_backend(name: Optional[str], device=None) -> None:
    """ValueError when the scan backend `name` does not exist or cannot run on `device`
    (triton on a machine without a GPU): the check a first scan would make, made
    before any work starts. None (automatic) always passes; without a device only the
    name is checked (no tensor made: a CUDA context is not wanted yet)."""
    if name is None:
        return
    check_backend_name(name)
    if device is None:
        return
    try:
        _choose(torch.empty(0, device=device), name)
    except RuntimeError as e:
        raise ValueError(str(e)) from None


def _numba_kernels(explicit: bool):
    """The numba module (importing it compiles the kernels, or loads them from numba's
    cache), or None when they fail to compile here and numba was only a fallback."""
    global _numba_error
    try:
        from . import numba_scan  # noqa: PLC0415

        return numba_scan
    except Exception as e:  # an LLVM/numba version problem: say so, keep working
        _numba_error = f"numba kernels failed to compile ({type(e).__name__}: {e})"
        if explicit:
            raise RuntimeError(f"scan backend 'numba': {_numba_error}") from e
        _warn_once("numba", "scan backend: ref, the slow PyTorch loop (%s)", _numba_error)
        return None


def reset() -> None:
    """Forget the resolved CPU backend and the kernels' build/compile failures, so the
    next call decides again (after installing a compiler, or in tests)."""
    global _cpu_impl, _numba_error, _triton_error
    from . import cpu_ext  # noqa: PLC0415

    with _lock:
        _cpu_impl = None
        _numba_error = None
        _triton_error = None
        _warned.clear()
        cpu_ext._failed.clear()


# ----------------------------------------------------------------------------- checks
def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def _check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, out):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be [B, L, D], got shape {_shape(u)}")
    Bsz, L, Dm = u.shape
    if L == 0:
        raise ValueError("selective_scan: u has no tokens (L == 0)")
    if A.dim() != 2 or A.shape[0] != Dm:
        raise ValueError(f"selective_scan: A must be [D, N] = [{Dm}, N], got shape {_shape(A)}")
    N = A.shape[1]
    expect = {
        "delta": (delta, (Bsz, L, Dm)),
        "B": (B, (Bsz, L, N)),
        "C": (C, (Bsz, L, N)),
        "D": (D, (Dm,)),
        "z": (z, (Bsz, L, Dm)),
        "delta_bias": (delta_bias, (Dm,)),
        "initial_state": (initial_state, (Bsz, Dm, N)),
        "out": (out, (Bsz, L, Dm)),
    }
    for name, (t, shape) in expect.items():
        if t is None:
            continue
        if _shape(t) != shape:
            raise ValueError(
                f"selective_scan: {name} must have shape {list(shape)} "
                f"(u is [B, L, D] = {list(u.shape)}, A is [D, N] = {list(A.shape)}), "
                f"got {list(t.shape)}"
            )
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device}, u on {u.device}")
        if not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
    if not u.is_floating_point():
        raise ValueError(f"selective_scan: u must be a floating-point tensor, got {u.dtype}")


def _check_conv(x, weight, bias, initial_tail):
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be [B, L, D], got shape {_shape(x)}")
    Bsz, L, Dm = x.shape
    if L == 0:
        raise ValueError("causal_conv1d: x has no tokens (L == 0)")
    if weight.dim() not in (2, 3) or weight.shape[0] != Dm or (weight.dim() == 3 and weight.shape[1] != 1):
        raise ValueError(
            f"causal_conv1d: weight must be [D, K] (or [D, 1, K]) with D = {Dm}, got shape {_shape(weight)}"
        )
    K = weight.shape[-1]
    if K < 2:
        raise ValueError(f"causal_conv1d: kernel width K must be >= 2, got {K}")
    for name, t, shape in (("bias", bias, (Dm,)), ("initial_tail", initial_tail, (Bsz, Dm, K - 1))):
        if t is None:
            continue
        if _shape(t) != shape:
            raise ValueError(f"causal_conv1d: {name} must have shape {list(shape)}, got {list(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"causal_conv1d: {name} is on {t.device}, x on {x.device}")


# ----------------------------------------------------------------------------- entry points
def fused_cpu_ops(tensor: Tensor, backend: Optional[str] = None):
    """The compiled C++ op namespace when `backend` (or the automatic choice) is "cpu" and
    resolves to the C++ kernel for `tensor`; else None (fused ops then fall back to the
    composition of the dispatched ones)."""
    if _choose(tensor, backend) != "cpu" or _resolve_cpu() != "cpp":
        return None
    from . import cpu_ext  # noqa: PLC0415

    return cpu_ext.load()


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_last_state=False,
    reverse=False,
    backend=None,
    out=None,
    accumulate=False,
):
    _check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, out)
    name = explicit = _choose(u, backend)
    if name == "cpu":
        impl = _resolve_cpu()
        if impl == "cpp":
            from .cpu import selective_scan_cpu  # noqa: PLC0415

            return selective_scan_cpu(
                u,
                delta,
                A,
                B,
                C,
                D,
                z,
                delta_bias,
                delta_softplus,
                initial_state,
                return_last_state,
                reverse,
                out,
                accumulate,
            )
        name = impl
    if name == "numba":
        nbk = _numba_kernels(explicit == "numba")
        if nbk is not None:
            return nbk.selective_scan_numba(
                u,
                delta,
                A,
                B,
                C,
                D,
                z,
                delta_bias,
                delta_softplus,
                initial_state,
                return_last_state,
                reverse,
                out,
                accumulate,
            )
        name = "ref"
    if name == "triton":
        from .triton_scan import selective_scan_triton  # noqa: PLC0415

        res = selective_scan_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state, reverse
        )
    else:
        res = selective_scan_ref(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state, reverse
        )
    if out is None:
        return res
    y, rest = (res[0], res[1:]) if return_last_state else (res, ())
    y = out.add_(y) if accumulate else out.copy_(y)
    return (y, *rest) if return_last_state else y


def causal_conv1d(
    x, weight, bias=None, initial_tail=None, activation=None, return_final_tail=False, reverse=False, backend=None
):
    _check_conv(x, weight, bias, initial_tail)
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r} (silu or None)")
    name = explicit = _choose(x, backend)
    if name == "cpu":
        impl = _resolve_cpu()
        if impl == "cpp":
            from .cpu import causal_conv1d_cpu  # noqa: PLC0415

            return causal_conv1d_cpu(x, weight, bias, initial_tail, activation, return_final_tail, reverse)
        name = impl
    if name == "numba":
        nbk = _numba_kernels(explicit == "numba")
        if nbk is not None:
            return nbk.causal_conv1d_numba(x, weight, bias, initial_tail, activation, return_final_tail, reverse)
        name = "ref"
    if name == "triton":
        from .triton_scan import causal_conv1d_triton  # noqa: PLC0415

        return causal_conv1d_triton(x, weight, bias, initial_tail, activation, return_final_tail, reverse)
    return causal_conv1d_ref(x, weight, bias, initial_tail, activation, return_final_tail, reverse)
