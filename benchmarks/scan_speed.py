"""Selective-scan and causal-conv speed on this machine's CPU: the PyTorch reference loop
vs the fused C++ kernel vs numba, forward and forward+backward, at the shapes of one
direction of one VideoMamba-Ti layer (B=1, d_inner=384, d_state=16; L=3137 is T=16
frames of 14x14 patches plus the cls token, L=1569 is T=8).

Inputs are laid out as the model passes them (u and z views of one in_proj output,
B and C views of one x_proj output) with Δ like a trained model. Every figure is a
median over repeats measured in this run, so the ratios compare like with like; min
values are printed beside the medians. On a machine that others are loading, wall-clock
times of multi-threaded code swing widely (the load average is printed); the
single-thread CPU-time figures (time.thread_time) are the stable measure of the kernel.

    python benchmarks/scan_speed.py [--repeats 15] [--quick] [--measure-build]

The last lines are machine-readable, one figure each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmstream.models.ops import causal_conv1d_ref, cpu, cpu_ext, selective_scan_ref  # noqa: E402

D_INNER, D_STATE, DT_RANK = 384, 16, 12


def inputs(L: int, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    xz = torch.randn(1, L, 2 * D_INNER, generator=g)
    x_dbl = torch.randn(1, L, DT_RANK + 2 * D_STATE, generator=g)
    dt0 = torch.exp(
        torch.rand(D_INNER, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
        + torch.log(torch.tensor(1e-3))
    )
    t = dict(
        xz=xz,
        x_dbl=x_dbl,
        delta=torch.rand(1, L, D_INNER, generator=g) * 8 - 4,
        A=-torch.exp(torch.rand(D_INNER, D_STATE, generator=g) * 2.8),
        D=torch.ones(D_INNER),
        delta_bias=dt0 + torch.log(-torch.expm1(-dt0)),
        initial_state=torch.randn(1, D_INNER, D_STATE, generator=g) * 0.1,
    )
    if grad:
        t = {k: v.requires_grad_(True) for k, v in t.items()}
    return t


def scan_args(t):
    xz, x_dbl = t["xz"], t["x_dbl"]
    return dict(
        u=xz[..., :D_INNER],
        z=xz[..., D_INNER:],
        delta=t["delta"],
        A=t["A"],
        B=x_dbl[..., DT_RANK : DT_RANK + D_STATE],
        C=x_dbl[..., DT_RANK + D_STATE :],
        D=t["D"],
        delta_bias=t["delta_bias"],
        initial_state=t["initial_state"],
        delta_softplus=True,
        return_last_state=True,
    )


def timed(fn, repeats: int, warmup: int = 1, clock=time.perf_counter) -> tuple[float, float]:
    """(median, min) time in ms: wall clock, or the calling thread's CPU time."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        ts.append(clock() - t0)
    return statistics.median(ts) * 1e3, min(ts) * 1e3


def one_thread_cpu_ms(fn, repeats: int) -> tuple[float, float]:
    """CPU time of fn on one intra-op thread: what the kernel costs, whatever the load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return timed(fn, repeats, clock=time.thread_time)
    finally:
        torch.set_num_threads(n)


def fwd(impl, L):
    t = inputs(L)
    a = scan_args(t)

    def run():
        with torch.no_grad():
            impl(**a)

    return run


def fwd_bwd(impl, L):
    t = inputs(L, grad=True)

    def run():
        for v in t.values():
            v.grad = None
        y, last = impl(**scan_args(t))
        (y.sum() + last.square().sum()).backward()

    return run


def measure_build() -> float:
    """Seconds for a first build of the C++ kernel in an empty cache (separate process)."""
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, VMSTREAM_CACHE_DIR=d)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "vmstream.models.ops.build"],
            env=env,
            check=True,
            capture_output=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="fewer repeats of the slow reference")
    ap.add_argument(
        "--measure-build", action="store_true", help="also time a first build of the C++ kernel in an empty cache"
    )
    args = ap.parse_args()
    ops = cpu_ext.load()
    from vmstream.models.ops.numba_scan import selective_scan_numba

    nthreads = torch.get_num_threads()
    print(
        f"# torch {torch.__version__}, {nthreads} threads, C++ kernel {ops.isa()}, "
        f"B=1 D={D_INNER} N={D_STATE}; load average {os.getloadavg()[0]:.1f} at start"
    )
    ref_reps = 1 if args.quick else 3
    res = {}
    for L in (1569, 3137):
        exps = D_INNER * D_STATE * L
        r = {
            "ref": timed(fwd(selective_scan_ref, L), ref_reps, warmup=0),
            "cpp": timed(fwd(cpu.selective_scan_cpu, L), args.repeats),
            "numba": timed(fwd(selective_scan_numba, L), max(3, args.repeats // 3)),
            "ref_fb": timed(fwd_bwd(selective_scan_ref, L), max(1, ref_reps - 1), warmup=0),
            "cpp_fb": timed(fwd_bwd(cpu.selective_scan_cpu, L), max(5, args.repeats // 2)),
            "numba_fb": timed(fwd_bwd(selective_scan_numba, L), 3),
            "cpp_1t": one_thread_cpu_ms(fwd(cpu.selective_scan_cpu, L), args.repeats),
            "cpp_fb_1t": one_thread_cpu_ms(fwd_bwd(cpu.selective_scan_cpu, L), max(5, args.repeats // 2)),
            "numba_1t": one_thread_cpu_ms(fwd(selective_scan_numba, L), 3),
            "ref_1t": one_thread_cpu_ms(fwd(selective_scan_ref, L), ref_reps),
        }
        res[L] = r
        print(f"\nL={L}: scan forward (median / min ms)")
        print(f"  reference loop   {r['ref'][0]:9.2f} / {r['ref'][1]:9.2f}")
        print(
            f"  fused C++        {r['cpp'][0]:9.2f} / {r['cpp'][1]:9.2f}   "
            f"x{r['ref'][0] / r['cpp'][0]:.0f} vs reference, "
            f"{exps / (r['cpp'][0] * 1e-3) / 1e9:.2f} G exp/s"
        )
        print(
            f"  fused C++, CPU time on 1 thread {r['cpp_1t'][0]:.2f} / {r['cpp_1t'][1]:.2f}   "
            f"{exps / (r['cpp_1t'][0] * 1e-3) / 1e9:.2f} G exp/s per core"
        )
        print(
            f"  numba            {r['numba'][0]:9.2f} / {r['numba'][1]:9.2f}   "
            f"x{r['ref'][0] / r['numba'][0]:.0f} vs reference"
        )
        print(
            f"  CPU time on 1 thread: reference {r['ref_1t'][0]:.1f}, fused C++ {r['cpp_1t'][0]:.2f} "
            f"(x{r['ref_1t'][0] / r['cpp_1t'][0]:.0f}), numba {r['numba_1t'][0]:.1f} "
            f"(x{r['ref_1t'][0] / r['numba_1t'][0]:.0f})"
        )
        print(f"L={L}: scan forward + backward (median / min ms)")
        print(f"  reference        {r['ref_fb'][0]:9.2f} / {r['ref_fb'][1]:9.2f}")
        print(
            f"  fused C++        {r['cpp_fb'][0]:9.2f} / {r['cpp_fb'][1]:9.2f}   "
            f"x{r['ref_fb'][0] / r['cpp_fb'][0]:.0f} vs reference"
        )
        print(f"  fused C++, CPU time on 1 thread {r['cpp_fb_1t'][0]:.2f} / {r['cpp_fb_1t'][1]:.2f}")
        print(
            f"  numba            {r['numba_fb'][0]:9.2f} / {r['numba_fb'][1]:9.2f}   "
            f"x{r['ref_fb'][0] / r['numba_fb'][0]:.0f} vs reference"
        )

    # the conv: the torch formulation (transpose, cat, F.conv1d, silu) vs the fused kernel
    L = 3137
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, L, 2 * D_INNER, generator=g)[..., :D_INNER]
    w, b = torch.randn(D_INNER, 4, generator=g), torch.randn(D_INNER, generator=g)
    tail = torch.randn(1, D_INNER, 3, generator=g)
    with torch.no_grad():
        conv_ref = timed(lambda: causal_conv1d_ref(x, w, b, tail, "silu", True), args.repeats)
        conv_cpp = timed(lambda: cpu.causal_conv1d_cpu(x, w, b, tail, "silu", True), args.repeats)
        conv_ref_1t = one_thread_cpu_ms(lambda: causal_conv1d_ref(x, w, b, tail, "silu", True), args.repeats)
        conv_cpp_1t = one_thread_cpu_ms(lambda: cpu.causal_conv1d_cpu(x, w, b, tail, "silu", True), args.repeats)
    print(f"\nL={L}: causal conv K=4 + silu, with tails (median / min ms)")
    print(f"  torch (reference) {conv_ref[0]:8.3f} / {conv_ref[1]:8.3f}   1-thread CPU {conv_ref_1t[0]:.3f}")
    print(
        f"  fused C++         {conv_cpp[0]:8.3f} / {conv_cpp[1]:8.3f}   1-thread CPU {conv_cpp_1t[0]:.3f}"
        f"   x{conv_ref[0] / conv_cpp[0]:.1f} (1 thread x{conv_ref_1t[0] / conv_cpp_1t[0]:.1f})"
    )
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")

    build_s = measure_build() if args.measure_build else None
    if build_s is not None:
        print(f"\nfirst build of the C++ kernel (empty cache): {build_s:.1f} s")

    r = res[3137]
    exps = D_INNER * D_STATE * 3137
    print()
    print(f"scan_ms_L3137={r['cpp'][0]:.3f}")
    print(f"scan_ms_L1569={res[1569]['cpp'][0]:.3f}")
    print(f"scan_cpu_ms_L3137_1thread={r['cpp_1t'][0]:.3f}")
    print(f"scan_fwd_bwd_ms_L3137={r['cpp_fb'][0]:.3f}")
    print(f"scan_fwd_bwd_cpu_ms_L3137_1thread={r['cpp_fb_1t'][0]:.3f}")
    print(f"numba_scan_ms_L3137={r['numba'][0]:.3f}")
    print(f"numba_scan_fwd_bwd_ms_L3137={r['numba_fb'][0]:.3f}")
    print(f"reference_scan_ms_L3137={r['ref'][0]:.3f}")
    print(f"scan_speedup_vs_reference={r['ref'][0] / r['cpp'][0]:.1f}")
    print(f"scan_speedup_vs_reference_1thread_cpu={r['ref_1t'][0] / r['cpp_1t'][0]:.1f}")
    print(f"numba_cpu_ms_L3137_1thread={r['numba_1t'][0]:.3f}")
    print(f"scan_fwd_bwd_speedup_vs_reference={r['ref_fb'][0] / r['cpp_fb'][0]:.1f}")
    print(f"numba_speedup_vs_reference={r['ref'][0] / r['numba'][0]:.1f}")
    print(f"exps_per_s={exps / (r['cpp'][0] * 1e-3):.3e}")
    print(f"conv_ms_L3137={conv_cpp[0]:.3f}")
    print(f"conv_speedup_vs_torch={conv_ref[0] / conv_cpp[0]:.2f}")
    print(f"conv_speedup_vs_torch_1thread={conv_ref_1t[0] / conv_cpp_1t[0]:.2f}")
    if build_s is not None:
        print(f"cpu_kernel_build_s={build_s:.1f}")


if __name__ == "__main__":
    main()
