"""The Triton kernels compile for real GPUs, here without one: Triton's compiler runs its
frontend, MLIR passes and the bundled ptxas for sm_90 (H100) and sm_80 (A100) targets.

The interpreter tests (test_ops_scan.py, test_ops_conv.py, test_ops_upstream.py with
"triton" among their backends, and test_triton_scan.py) check the math but
accept Python that the compiler rejects; this catches that before a GPU machine does.
Run in a subprocess: the kernels must be imported with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource
from vmstream.models.ops import triton_scan as ts

def compile_one(fn, dtype, consts, num_warps, arch):
    data = ("u_ptr", "dt_ptr", "z_ptr", "B_ptr", "C_ptr", "out_ptr", "dout_ptr", "x_ptr")
    sig = {n: "constexpr" if n in consts else (f"*{dtype}" if n in data else "*fp32")
           if n.endswith("_ptr") else "i32" for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": num_warps})
    assert ".entry " + fn.__name__ in k.asm["ptx"]

ALL = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
NONE = dict(HAS_D=False, HAS_Z=False, HAS_BIAS=False, SOFTPLUS=False)
n = 0
for arch in (90, 80):
    for dtype, flags, rev in (("fp32", ALL, True), ("fp32", NONE, False), ("bf16", ALL, False), ("fp16", ALL, True)):
        compile_one(ts._scan_fwd_kernel, dtype, dict(flags, HAS_H0=rev, REVERSE=rev, STORE_CKPT=not rev,
                                                     BLOCK_D=32, BLOCK_N=16), 4, arch)
        compile_one(ts._scan_bwd_kernel, dtype, dict(flags, HAS_DLAST=rev, REVERSE=rev, BLOCK_D=16, BLOCK_N=16),
                    2, arch)
        compile_one(ts._conv_fwd_kernel, dtype, dict(K=4, HAS_BIAS=rev, HAS_TAIL=not rev, SILU=True, REVERSE=rev,
                                                     BLOCK_L=32, BLOCK_D=32), 4, arch)
        compile_one(ts._scan_fwd_chunked_kernel, dtype, dict(flags, HAS_H0=rev, REVERSE=rev, STORE_CKPT=not rev,
                                                             BLOCK_D=16, BLOCK_N=16, CHUNK=16), 4, arch)
        n += 4
print("compiled", n)
"""


def test_kernels_compile_for_sm90_and_sm80():
    pytest.importorskip("triton")
    try:
        import triton.backends.nvidia  # noqa: F401  (the CUDA backend and its ptxas)
    except ImportError:
        pytest.skip("this triton build has no CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "compiled 32" in r.stdout
