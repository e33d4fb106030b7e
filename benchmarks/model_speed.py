"""VideoMamba-Ti segment speed and memory on this machine's CPU (issue 2, "Speed and memory").

Prints, for VideoMamba-Ti at 224x224, batch 1:
  * segment latency (forward_segment, state carried) at T=8 and T=16 frames with the fast
    scan backend and with the reference scan, and their ratio;
  * one isolated scan at L=3137 (d_inner 384, d_state 16), fast vs reference;
  * the share of segment time spent in mamba_inner (a layer between in_proj and out_proj:
    conv, x_proj, dt_proj and scan of both directions) and in the residual add + norm, and
    one mamba_inner inside the model against the same op alone;
  * achieved GFLOP/s against torch.matmul GFLOP/s measured in the same run on the very
    matmul shapes of a segment, and from it `matmul_efficiency`;
  * streaming overhead: forward_segment versus a plain clip forward (forward_features);
  * peak RSS after 1, 10 and 100 segments of one stream (a fresh child process);
  * the CPU floor, priced by what the fused kernel does (see cpu_floor): the BLAS matmuls
    at torch.matmul's rate on their shapes, x_proj/dt_proj at its rate on the kernel's
    chunk shapes, the scan's multiply-adds at torch.addcmul's rate and its exponentials at
    torch.exp's, all measured now; `floor_efficiency_fp32` = floor / segment time (1.0 =
    at the floor), the median over rounds that time each part and the segment once;
  * bf16 mode (models.precision): `bf16_speedup` over fp32 (paired runs, median ratio),
    `bf16_embedding_cosine_min` over many random clips with states carried, top-1 agreement;
  * segments/s with 1, 4 and 16 concurrent streams batched through InferenceStage.process,
    fp32 and bf16 (`streams16_segments_per_s` is fp32).

FLOP counting. A segment's matmul work is counted from the layer shapes, as multiply-adds
(MACs): patch embedding (as a matmul), and per layer in_proj, x_proj and x_proj_b, dt_proj
and dt_proj_b, out_proj; plus the head. For Ti at T=16 that is ~20.4 G MACs. The paper's
"17 GFLOPs" (also multiply-adds, fvcore) is printed beside it; it matches in_proj + out_proj
+ patch embedding alone (17.1 G), i.e. fvcore did not see the x_proj / dt_proj matmuls
inside the fused mamba kernel. `matmul_efficiency` uses our full count, because that is the
matmul work the segment really does: it is (time those matmuls take in isolation at the
rate measured here) / (measured segment time); 1.0 means everything but the matmuls is free.

Backends: the fast one is `--backend` (default "cpu"), the baseline is "ref", each given
to the model (its mixers' `scan_backend`) or to the op it times; the line `backend_used=` says which ran. When the fast backend is not
available, its figures are reported as nan and the rest is measured with the reference.

    .venv/bin/python benchmarks/model_speed.py            # full run
    .venv/bin/python benchmarks/model_speed.py --quick    # fewer repeats, no reference T=16
    .venv/bin/python benchmarks/model_speed.py --floor-only  # the CPU floor lines alone

Timings on a shared machine are noisy: every figure is a median over repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmstream.models import create_model, set_scan_backend  # noqa: E402
from vmstream.models import videomamba as vm_module  # noqa: E402
from vmstream.models.ops import selective_scan  # noqa: E402
from vmstream.models.precision import bf16_is_native, set_precision  # noqa: E402
from vmstream.models.scan_backend import scan_backend_of  # noqa: E402

PAPER_GMACS_TI_T16 = 17.0
IMG = 224


# ------------------------------------------------------------------ utilities


@contextlib.contextmanager
def scan_backend(name: str, *models):
    """`models` on scan backend `name` for a block (`set_scan_backend`), then back on theirs."""
    before = [scan_backend_of(m) for m in models]
    for m in models:
        set_scan_backend(m, name)
    try:
        yield
    finally:
        for m, old in zip(models, before):
            set_scan_backend(m, old)


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def backend_works(name: str) -> tuple[bool, str]:
    """Run one tiny scan and conv with `name`; (usable, reason)."""
    from vmstream.models.ops import causal_conv1d

    u = torch.randn(1, 8, 4)
    try:
        with torch.inference_mode():
            selective_scan(
                u,
                u,
                -torch.rand(4, 2),
                torch.randn(1, 8, 2),
                torch.randn(1, 8, 2),
                torch.ones(4),
                z=u,
                delta_bias=torch.zeros(4),
                delta_softplus=True,
                initial_state=torch.zeros(1, 4, 2),
                return_last_state=True,
                backend=name,
            )
            causal_conv1d(u, torch.randn(4, 4), torch.zeros(4), activation="silu", backend=name)
        return True, "ok"
    except Exception as e:  # not built, no compiler, no GPU ...
        return False, f"{type(e).__name__}: {e}"


def matmul_shapes(T: int, embed=192, depth=24, d_state=16, num_classes=400, patch=16, bimamba=True):
    """(M, K, N, count) of every matmul in one Ti segment of T frames, batch 1."""
    n_patch = (IMG // patch) ** 2
    L = 1 + T * n_patch
    d_inner = 2 * embed
    dt_rank = math.ceil(embed / 16)
    dirs = 2 if bimamba else 1
    return [
        ("patch_embed", T * n_patch, 3 * patch * patch, embed, 1),
        ("in_proj", L, embed, 2 * d_inner, depth),
        ("x_proj", L, d_inner, dt_rank + 2 * d_state, depth * dirs),
        ("dt_proj", L, dt_rank, d_inner, depth * dirs),
        ("out_proj", L, d_inner, embed, depth),
        ("head", 1, embed, num_classes, 1),
    ]


def macs(shapes) -> float:
    return float(sum(m * k * n * c for _, m, k, n, c in shapes))


def time_matmuls(shapes, repeats: int) -> float:
    """Seconds the segment's matmuls take in isolation (torch.matmul, same shapes)."""
    total = 0.0
    for _, m, k, n, count in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        t = median_time(lambda a=a, b=b: torch.matmul(a, b), repeats=max(repeats, 5), warmup=2)
        total += t * count
    return total


class OpTimer:
    """Accumulates time spent inside the model's mamba_inner (both directions' conv, x_proj,
    dt_proj and scan) and add_rms_norm calls."""

    def __init__(self):
        self.inner = 0.0
        self.norm = 0.0

    @contextlib.contextmanager
    def installed(self):
        orig_inner, orig_norm = vm_module.mamba_inner, vm_module.add_rms_norm

        def inner(*a, **k):
            t = time.perf_counter()
            try:
                return orig_inner(*a, **k)
            finally:
                self.inner += time.perf_counter() - t

        def norm(*a, **k):
            t = time.perf_counter()
            try:
                return orig_norm(*a, **k)
            finally:
                self.norm += time.perf_counter() - t

        vm_module.mamba_inner, vm_module.add_rms_norm = inner, norm
        try:
            yield self
        finally:
            vm_module.mamba_inner, vm_module.add_rms_norm = orig_inner, orig_norm


# --------------------------------------------------------------------- phases


def segment_latency(model, T: int, backend: str, repeats: int) -> tuple[float, float, float]:
    """(median seconds of forward_segment, share of time in mamba_inner, share in add_rms_norm)."""
    clip = torch.randn(1, 3, T, IMG, IMG)
    state = model.init_state(1)
    timer = OpTimer()
    times = []
    with scan_backend(backend, model), torch.inference_mode():
        if repeats > 1:
            model.forward_segment(clip, state)  # warm-up
        with timer.installed():  # ~100 perf_counter calls per segment: negligible
            for _ in range(repeats):
                t = time.perf_counter()
                model.forward_segment(clip, state)
                times.append(time.perf_counter() - t)
    total = sum(times)
    return statistics.median(times), timer.inner / total, timer.norm / total


def isolated_scan(backend: str, repeats: int, L: int = 3137, d_inner: int = 384, d_state: int = 16) -> float:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, L, d_inner, generator=g)
    z = torch.randn(1, L, d_inner, generator=g)
    dt = torch.randn(1, L, d_inner, generator=g) * 0.5 - 3
    A = -torch.exp(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
    B, C = torch.randn(1, L, d_state, generator=g), torch.randn(1, L, d_state, generator=g)
    h0 = torch.randn(1, d_inner, d_state, generator=g)

    def run():
        selective_scan(
            u,
            dt,
            A,
            B,
            C,
            torch.ones(d_inner),
            z=z,
            delta_bias=torch.zeros(d_inner),
            delta_softplus=True,
            initial_state=h0,
            return_last_state=True,
            backend=backend,
        )

    with torch.inference_mode():
        return median_time(run, repeats, warmup=1 if repeats > 1 else 0)


def isolated_inner(model, backend: str, repeats: int, T: int = 16) -> float:
    """Seconds of one layer's mamba_inner (both directions, state returned) on its own,
    with the first layer's parameters and a random in_proj output."""
    mixer = model.layers[0].mixer
    L = 1 + T * (IMG // 16) ** 2
    xz = torch.randn(1, L, 2 * mixer.d_inner, generator=torch.Generator().manual_seed(0))
    state = model.init_state(1)
    with torch.inference_mode():
        dirs = mixer.directions()
        tail, h = state.layer(0)
        return median_time(
            lambda: vm_module.mamba_inner(xz, dirs, tail, h, return_state=True, backend=backend), repeats
        )


def stream_overhead(model, T: int, backend: str, repeats: int) -> dict:
    """forward_segment vs forward_features (the plain clip forward), run in adjacent pairs
    (alternating which goes first) and compared pair by pair; the overhead is the median
    ratio minus one. Measured in wall-clock time and in process CPU time: on a shared
    machine the wall clock mostly measures the neighbours (+-10 % between runs), while CPU
    time counts the work this process did, so `stream_overhead` reports the CPU-time one."""
    clip = torch.randn(1, 3, T, IMG, IMG)
    state = model.init_state(1)

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w, time.process_time() - c

    def seg():
        model.forward_segment(clip, state)

    def full():
        model.forward_features(clip)

    seg_t, clip_t = [], []
    with scan_backend(backend, model), torch.inference_mode():
        if repeats > 1:
            seg()
            full()
        for i in range(repeats):
            if i % 2:
                clip_t.append(timed(full))
                seg_t.append(timed(seg))
            else:
                seg_t.append(timed(seg))
                clip_t.append(timed(full))
    out = {}
    for k, name in enumerate(("wall", "cpu")):
        ratios = sorted(s[k] / c[k] - 1.0 for s, c in zip(seg_t, clip_t))
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        out[name] = (
            statistics.median(s[k] for s in seg_t),
            statistics.median(c[k] for c in clip_t),
            statistics.median(ratios),
            q1,
            q3,
        )
    return out


def memory_child(backend: str, T: int, counts: list[int]) -> None:
    """Runs in a fresh process: peak RSS (MB) after each count of segments, as JSON."""
    torch.manual_seed(0)
    model = create_model("videomamba_tiny", num_frames=16, num_classes=400, img_size=IMG, scan_backend=backend)
    model.eval()
    state = model.init_state(1)
    out, done = {}, 0
    with torch.inference_mode():
        for target in counts:
            while done < target:
                clip = torch.randn(1, 3, T, IMG, IMG)
                state = model.forward_segment(clip, state).state
                done += 1
            out[target] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"peak_mb": out, "state_bytes": state.nbytes}))


def peak_memory(backend: str, T: int, counts: list[int]) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        "--backend",
        backend,
        "--mem-frames",
        str(T),
        "--img-size",
        str(IMG),
        "--mem-segments",
        ",".join(map(str, counts)),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory child failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


BLAS_OPS = ("patch_embed", "in_proj", "out_proj", "head")  # what the segment hands to BLAS
KERNEL_OPS = ("x_proj", "dt_proj")  # what the fused mamba_inner kernel does itself, chunk by chunk


def kernel_shapes(T: int, chunk: int, embed=192, depth=24, d_state=16, patch=16, bimamba=True):
    """(M, K, N, count) of x_proj and dt_proj as the fused kernel runs them: on `chunk`
    tokens at a time (mixer.CHUNK), per direction and layer, the last chunk partial."""
    L = 1 + T * (IMG // patch) ** 2
    d_inner, dt_rank, dirs = 2 * embed, math.ceil(embed / 16), 2 if bimamba else 1
    full, rest = divmod(L, chunk)
    out = []
    for m, n_chunks in ((chunk, full), (rest, 1 if rest else 0)):
        if n_chunks:
            out += [
                ("x_proj", m, d_inner, dt_rank + 2 * d_state, n_chunks * depth * dirs),
                ("dt_proj", m, dt_rank, d_inner, n_chunks * depth * dirs),
            ]
    return out


def time_chunk_matmuls(shapes, repeats: int) -> float:
    """Seconds the kernel's chunk-sized matmuls take, each shape's chunks as one batched
    torch.bmm (the kernel makes no Python call per chunk, so neither does the yardstick)."""
    total = 0.0
    for _, m, k, n, count in shapes:
        a, b = torch.randn(count, m, k), torch.randn(1, k, n).expand(count, k, n)
        total += median_time(lambda a=a, b=b: torch.bmm(a, b), repeats=max(repeats, 3), warmup=1)
    return total


# Per (token, channel, state) of one scan direction the kernel does exp(delta*A) (an exp,
# priced apart) and three multiply-adds: delta*u*B (delta*u is shared by the states, so one
# multiply per state), the state update h = dA*h + dBu, the output y += C*h.
SCAN_FMAS_PER_STATE = 3


def cpu_floor(model, repeats: int, T: int = 16) -> dict:
    """The segment's floor, priced by what the fused CPU kernel does, each part at a rate
    measured now on the shapes it really has:

    * the matmuls handed to BLAS (patch embedding, in_proj, out_proj, head), their MACs
      counted by torch's FlopCounterMode on a real forward_segment and checked against
      the layer shapes, at torch.matmul's rate on those shapes;
    * x_proj and dt_proj, which the kernel computes itself on `mixer.CHUNK` tokens at a
      time (FlopCounterMode does not see inside it), at torch.bmm's rate on those chunk
      shapes (what such small blocks get, not what BLAS gets on the whole sequence);
    * the scan's own arithmetic: SCAN_FMAS_PER_STATE multiply-adds per token, channel and
      state per direction, at torch.addcmul's vector rate, plus its exponentials at
      torch.exp's, both timed on one thread on an L2-resident block (the kernel runs each
      direction on its own thread, so the time is divided by the directions that run at
      once, at most the threads torch has; one thread also keeps the fork/join of a
      parallel elementwise op, which a busy machine stretches, out of the yardstick).

    All rates and the segment itself are measured in rounds, one of each per round, and
    the efficiency is the median of the rounds' ratios: each ratio's floor and segment
    share the machine's load of that moment."""
    from torch.utils.flop_counter import FlopCounterMode

    from vmstream.models.ops.mixer import CHUNK

    clip = torch.randn(1, 3, T, IMG, IMG)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.forward_segment(clip, model.init_state(1))
    shapes = matmul_shapes(T)
    blas = [sh for sh in shapes if sh[0] in BLAS_OPS]
    seen = counter.get_total_flops() / 2
    in_kernel = macs([sh for sh in shapes if sh[0] in KERNEL_OPS])
    if abs(seen - macs(blas)) > 1e-6 * seen:
        # The composed (unfused) path runs x_proj/dt_proj as F.linear, which BLAS does.
        if abs(seen - macs(blas) - in_kernel) > 1e-6 * seen:
            raise SystemExit(
                f"FlopCounterMode saw {seen:.4g} MACs; the layer shapes give {macs(blas):.4g} "
                f"(fused) or {macs(blas) + in_kernel:.4g} (composed): the shapes are out of date"
            )
        raise SystemExit(
            "the segment ran the composed path (x_proj/dt_proj through BLAS): the floor prices "
            "the fused CPU kernel; run with --backend cpu where it builds"
        )
    kshapes = kernel_shapes(T, CHUNK)
    L = 1 + T * (IMG // 16) ** 2
    scans = len(model.layers) * (2 if model.bimamba else 1)
    exps = scans * L * model.d_inner * model.d_state
    fmas = SCAN_FMAS_PER_STATE * exps
    # 256 kB blocks: resident in one core's L2, so the vector units are timed, not memory.
    block = torch.randn(64 * 1024) * 0.1 - 1
    b2, dst = torch.randn_like(block), torch.empty_like(block)
    inner = 100
    lanes = min(torch.get_num_threads(), 2 if model.bimamba else 1)  # directions run at once

    def one_thread(fn):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return median_time(fn, repeats=3)
        finally:
            torch.set_num_threads(n)

    state = model.init_state(1)
    rounds = []
    with torch.inference_mode():
        model.forward_segment(clip, state)
        for _ in range(max(repeats, 5)):
            blas_rate = macs(blas) / time_matmuls(blas, 3)
            kernel_rate = macs(kshapes) / time_chunk_matmuls(kshapes, 3)
            t_exp = one_thread(lambda: [torch.exp(block, out=dst) for _ in range(inner)])
            t_fma = one_thread(lambda: [torch.addcmul(block, block, b2, out=dst) for _ in range(inner)])
            exp_rate = lanes * block.numel() * inner / t_exp  # per second, over the kernel's threads
            fma_rate = lanes * block.numel() * inner / t_fma
            seg = median_time(lambda: model.forward_segment(clip, state), repeats=1, warmup=0)
            floor = macs(blas) / blas_rate + in_kernel / kernel_rate + fmas / fma_rate + exps / exp_rate
            rounds.append((floor / seg, blas_rate, kernel_rate, exp_rate, fma_rate, seg))
    med = lambda i: statistics.median(r[i] for r in rounds)  # noqa: E731
    parts = {
        "t_blas": macs(blas) / med(1),
        "t_kernel_mm": in_kernel / med(2),
        "t_fma": fmas / med(4),
        "t_exp": exps / med(3),
    }
    ratios = sorted(r[0] for r in rounds)
    return {
        "blas_macs": macs(blas),
        "kernel_macs": in_kernel,
        "chunk": CHUNK,
        "blas_gmacs": med(1) / 1e9,
        "kernel_gmacs": med(2) / 1e9,
        "exps": exps,
        "exp_rate": med(3),
        "fmas": fmas,
        "fma_rate": med(4),
        **parts,
        "floor": sum(parts.values()),
        "seg": med(5),
        "efficiency": med(0),
        "q1": ratios[len(ratios) // 4],
        "q3": ratios[(3 * len(ratios)) // 4],
        "rounds": len(rounds),
    }


def bf16_speed(fp32_model, bf16_model, backend: str, pairs: int, T: int = 16) -> dict:
    """fp32 vs bf16 forward_segment in adjacent pairs (alternating which runs first), the
    speedup the median of the pairs' ratios: each ratio's two runs share the load."""
    clip = torch.randn(1, 3, T, IMG, IMG)
    state = fp32_model.init_state(1)
    runs = {"fp32": [], "bf16": []}

    def timed(name, m):
        w, c = time.perf_counter(), time.process_time()
        m.forward_segment(clip, state)
        runs[name].append((time.perf_counter() - w, time.process_time() - c))

    with scan_backend(backend, fp32_model, bf16_model), torch.inference_mode():
        fp32_model.forward_segment(clip, state)
        bf16_model.forward_segment(clip, state)
        for i in range(pairs):
            order = [("fp32", fp32_model), ("bf16", bf16_model)]
            for name, m in order if i % 2 == 0 else order[::-1]:
                timed(name, m)
    wall = sorted(a[0] / b[0] for a, b in zip(runs["fp32"], runs["bf16"]))
    cpu = sorted(a[1] / b[1] for a, b in zip(runs["fp32"], runs["bf16"]))
    return {
        "fp32": statistics.median(r[0] for r in runs["fp32"]),
        "bf16": statistics.median(r[0] for r in runs["bf16"]),
        "speedup": statistics.median(wall),
        "q1": wall[len(wall) // 4],
        "q3": wall[(3 * len(wall)) // 4],
        "cpu_speedup": statistics.median(cpu),
    }


def bf16_drift(fp32_model, bf16_model, backend: str, streams: int, segments: int, T: int = 16) -> dict:
    """Cosine of bf16 vs fp32 embeddings and top-1 agreement over streams x segments
    random clips, each stream's state carried in both precisions."""
    g = torch.Generator().manual_seed(1)
    cos, agree = [], 0
    s32 = s16 = None
    with scan_backend(backend, fp32_model, bf16_model), torch.inference_mode():
        for _ in range(segments):
            clip = torch.randn(streams, 3, T, IMG, IMG, generator=g)
            a, b = fp32_model.forward_segment(clip, s32), bf16_model.forward_segment(clip, s16)
            s32, s16 = a.state, b.state
            cos.append(torch.nn.functional.cosine_similarity(a.features.double(), b.features.double()))
            agree += int((a.logits.argmax(-1) == b.logits.argmax(-1)).sum())
    cos = torch.cat(cos)
    return {"clips": len(cos), "cos_min": cos.min().item(), "cos_mean": cos.mean().item(), "top1": agree / len(cos)}


def stream_sweep(fp32_model, bf16_model, backend: str, counts, steps: int, T: int = 16) -> dict:
    """Segments per second with N concurrent streams, one segment of each per step,
    batched through InferenceStage.process (the runner's path), fp32 and bf16."""
    from vmstream.records import Segment
    from vmstream.stages.inference import InferenceStage

    pixels = torch.randn(3, T, IMG, IMG).numpy()
    out = {}
    with scan_backend(backend, fp32_model, bf16_model):
        for prec, m in (("fp32", fp32_model), ("bf16", bf16_model)):
            for n in counts:
                stage = InferenceStage(m)
                times = []
                for step in range(steps + 1):  # step 0 warms up
                    segs = [
                        Segment(stream_id=f"s{i}", index=step, t_start=float(step), t_end=step + 1.0, pixels=pixels)
                        for i in range(n)
                    ]
                    t = time.perf_counter()
                    stage.process(segs)
                    times.append(time.perf_counter() - t)
                out[(prec, n)] = n / statistics.median(times[1:])
    return out


# ------------------------------------------------------------------------ main


def print_floor(model, fast: str, repeats: int) -> dict:
    with scan_backend(fast, model):
        floor = cpu_floor(model, repeats)
    print(
        f"cpu floor T=16 [{fast}], priced by what the fused kernel does (medians of {floor['rounds']} rounds):\n"
        f"  BLAS matmuls (patch, in_proj, out_proj, head) {floor['blas_macs'] / 1e9:.2f} G MACs at torch.matmul's "
        f"{floor['blas_gmacs']:.1f} G MAC/s on their shapes = {floor['t_blas'] * 1e3:.1f} ms\n"
        f"  in-kernel x_proj/dt_proj {floor['kernel_macs'] / 1e9:.2f} G MACs at torch.bmm's "
        f"{floor['kernel_gmacs']:.1f} G MAC/s on {floor['chunk']}-token chunks = {floor['t_kernel_mm'] * 1e3:.1f} ms\n"
        f"  scan multiply-adds {floor['fmas'] / 1e9:.2f} G ({SCAN_FMAS_PER_STATE} per token, channel, state) at "
        f"torch.addcmul's {floor['fma_rate'] / 1e9:.2f} G/s (one thread per direction) = {floor['t_fma'] * 1e3:.1f} ms\n"
        f"  scan exponentials {floor['exps'] / 1e6:.0f} M at torch.exp's {floor['exp_rate'] / 1e9:.2f} G/s "
        f"(one thread per direction) = {floor['t_exp'] * 1e3:.1f} ms\n"
        f"  floor {floor['floor'] * 1e3:.1f} ms vs segment {floor['seg'] * 1e3:.1f} ms: floor_efficiency "
        f"{floor['efficiency']:.3f} (median of the rounds' ratios; quartiles {floor['q1']:.3f}..{floor['q3']:.3f})"
    )

    return floor


def main() -> None:
    global IMG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--backend",
        default="cpu",
        help="the fast scan backend to measure (cpu, numba, triton); the baseline is 'ref'",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-repeats", type=int, default=1, help="repeats for the (slow) reference runs")
    ap.add_argument("--quick", action="store_true", help="fewer repeats; reference segment at T=8 only")
    ap.add_argument("--floor-only", action="store_true", help="only the CPU floor lines (and floor_efficiency_fp32)")
    ap.add_argument("--mem-segments", default="1,10,100")
    ap.add_argument(
        "--mem-frames",
        type=int,
        default=0,
        help="frames per segment in the memory run (default 16; 1 when only the slow reference backend is available)",
    )
    ap.add_argument(
        "--img-size",
        type=int,
        default=224,
        help="frame size (224 is the figure of record; smaller sizes are for smoke tests)",
    )
    ap.add_argument("--cosine-streams", type=int, default=16, help="bf16 drift: random clips per segment")
    ap.add_argument("--cosine-segments", type=int, default=4, help="bf16 drift: segments per stream")
    ap.add_argument("--stream-counts", default="1,4,16", help="concurrent streams to measure, comma-separated")
    ap.add_argument("--stream-steps", type=int, default=2, help="timed steps per stream count (after a warm-up)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    IMG = args.img_size
    args.stream_counts = sorted(int(c) for c in args.stream_counts.split(","))
    if args.stream_counts[0] != 1:
        args.stream_counts.insert(0, 1)  # the baseline of every ratio
    counts = [int(c) for c in args.mem_segments.split(",")]
    if args.memory_child:
        memory_child(args.backend, args.mem_frames or 16, counts)
        return
    repeats = 2 if args.quick else args.repeats

    torch.manual_seed(0)
    model = create_model("videomamba_tiny", num_frames=16, num_classes=400, img_size=IMG).eval()
    fast_ok, why = backend_works(args.backend) if args.backend != "ref" else (False, "baseline itself")
    fast = args.backend if fast_ok else "ref"
    with scan_backend("ref", model), torch.inference_mode():  # one-off lazy initialisation, off the clock
        model.forward_segment(torch.randn(1, 3, 1, IMG, IMG))
    print(
        f"# VideoMamba-Ti {IMG}x{IMG}, batch 1, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (timings on a busy machine are noisy)"
    )
    print(f"# fast backend {args.backend!r}: {'ok' if fast_ok else 'UNAVAILABLE (' + why + ')'}")
    if args.floor_only:
        floor = print_floor(model, fast, repeats)
        print(f"floor_efficiency_fp32={floor['efficiency']:.3f}")
        print(f"floor_ms_fp32={floor['floor'] * 1e3:.1f}")
        return

    # Matmul work of a T=16 segment and its time at the torch.matmul rate measured now.
    shapes16 = matmul_shapes(16)
    gmacs16 = macs(shapes16) / 1e9
    paper_like = macs([s for s in shapes16 if s[0] in ("patch_embed", "in_proj", "out_proj")]) / 1e9
    t_mm16 = time_matmuls(shapes16, repeats)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t_sq = median_time(lambda: torch.matmul(a, b), repeats=max(repeats, 3))
    print(
        f"matmul work T=16: {gmacs16:.2f} G multiply-adds counted from the layer shapes "
        f"(paper: {PAPER_GMACS_TI_T16:.0f} G; in_proj+out_proj+patch alone: {paper_like:.2f} G)"
    )
    print(
        f"torch.matmul on the segment's shapes: {2 * gmacs16 / t_mm16:.1f} GFLOP/s "
        f"({t_mm16 * 1e3:.1f} ms for one segment's matmuls); 2048^3 square: {2 * 2048**3 / t_sq / 1e9:.1f} GFLOP/s"
    )

    # Segment latency, fast vs reference.
    lat, shares = {}, {}
    for T in (8, 16):
        lat[(fast, T)], *shares[(fast, T)] = segment_latency(
            model, T, fast, repeats if fast != "ref" else args.ref_repeats
        )
        print(
            f"segment T={T:2d} [{fast}]: {lat[(fast, T)] * 1e3:9.1f} ms   (mamba_inner {shares[(fast, T)][0]:.1%}, "
            f"add+norm {shares[(fast, T)][1]:.1%} of it)"
        )
        if fast != "ref" and not (args.quick and T == 16):
            lat[("ref", T)], *shares[("ref", T)] = segment_latency(model, T, "ref", args.ref_repeats)
            print(
                f"segment T={T:2d} [ref]: {lat[('ref', T)] * 1e3:9.1f} ms   (mamba_inner {shares[('ref', T)][0]:.1%}) "
                f"-> fast is {lat[('ref', T)] / lat[(fast, T)]:.1f}x faster"
            )

    # One scan at L=3137, the docs/design.md measurement.
    scan_ref = isolated_scan("ref", args.ref_repeats if not args.quick else 1)
    if fast != "ref":
        scan_fast = isolated_scan(fast, repeats)
        speedup = scan_ref / scan_fast
        print(
            f"one scan L=3137 d_inner=384 N=16: ref {scan_ref * 1e3:.1f} ms, {fast} {scan_fast * 1e3:.2f} ms "
            f"-> {speedup:.1f}x"
        )
    else:
        speedup = float("nan")
        print(f"one scan L=3137 d_inner=384 N=16: ref {scan_ref * 1e3:.1f} ms, fast: unavailable")

    inner_share, norm_share = shares[(fast, 16)]
    print(
        f"time in ops at T=16 [{fast}]: mamba_inner (conv, x_proj, dt_proj, scan; both directions) "
        f"{inner_share:.1%}, add+norm {norm_share:.1%}, everything else (in_proj, out_proj, patch embedding, "
        f"head) {1 - inner_share - norm_share:.1%}"
    )
    if fast != "ref":
        # Does a layer's inner part cost more inside the model (its input comes from
        # in_proj, its output goes to out_proj, other ops share the caches) than alone?
        in_model = inner_share * lat[(fast, 16)] / len(model.layers)
        alone = isolated_inner(model, fast, repeats)
        print(
            f"one mamba_inner inside the model T=16 [{fast}]: {in_model * 1e3:.2f} ms vs {alone * 1e3:.2f} ms alone "
            f"-> {in_model / alone:.2f}x"
        )

    seg16 = lat[(fast, 16)]
    efficiency = t_mm16 / seg16
    print(
        f"achieved T=16 [{fast}]: {2 * gmacs16 / seg16:.1f} GFLOP/s vs matmul {2 * gmacs16 / t_mm16:.1f} GFLOP/s "
        f"-> matmul_efficiency {efficiency:.3f} (with the paper's 17 G: "
        f"{t_mm16 * PAPER_GMACS_TI_T16 / gmacs16 / seg16:.3f}); target >= 0.5"
    )

    ov_repeats = max(20, 2 * repeats) if fast != "ref" else max(1, args.ref_repeats)
    ov = stream_overhead(model, 16, fast, ov_repeats)
    for name in ("wall", "cpu"):
        s, c, o, q1, q3 = ov[name]
        print(
            f"streaming overhead T=16 [{fast}], {name} time: forward_segment {s * 1e3:.1f} ms vs forward_features "
            f"{c * 1e3:.1f} ms -> {o:+.1%} (quartiles of {ov_repeats} pairs {q1:+.1%}..{q3:+.1%}; target < 5%)"
        )
    overhead = ov["cpu"][2]

    mem_T = args.mem_frames or (16 if fast != "ref" else 1)
    mem = peak_memory(fast, mem_T, counts)
    peaks = [mem["peak_mb"][str(n)] for n in counts]
    print(
        f"peak RSS after {counts} segments of T={mem_T} [{fast}]: "
        + ", ".join(f"{p:.0f} MB" for p in peaks)
        + f"; state {mem['state_bytes'] / 1e6:.2f} MB"
    )

    floor = print_floor(model, fast, repeats)
    bf16 = set_precision(copy.deepcopy(model), "bf16")
    bf = bf16_speed(model, bf16, fast, max(6, 2 * repeats))
    print(
        f"bf16 T=16 [{fast}] (native bf16 matmuls: {bf16_is_native()}): fp32 {bf['fp32'] * 1e3:.1f} ms vs bf16 "
        f"{bf['bf16'] * 1e3:.1f} ms -> {bf['speedup']:.2f}x wall (paired median; quartiles "
        f"{bf['q1']:.2f}..{bf['q3']:.2f}), {bf['cpu_speedup']:.2f}x in CPU time; target >= 1.6"
    )
    drift = bf16_drift(model, bf16, fast, args.cosine_streams, args.cosine_segments)
    print(
        f"bf16 drift vs fp32, Ti random weights, {drift['clips']} random clips ({args.cosine_streams} streams x "
        f"{args.cosine_segments} segments, state carried): cosine of embeddings min {drift['cos_min']:.6f}, "
        f"mean {drift['cos_mean']:.7f}; top-1 agreement {drift['top1']:.3f}"
    )

    sweep = stream_sweep(model, bf16, fast, args.stream_counts, args.stream_steps)
    for (prec, n), sps in sweep.items():
        print(
            f"streams {n:2d} [{prec}] through InferenceStage.process, batched: {sps:.2f} segments/s "
            f"({sps / sweep[(prec, 1)]:.2f}x one stream)"
        )

    print(f"backend_used={fast}")
    print(f"segment_ms_t16={seg16 * 1e3:.1f}")
    print(f"scan_speedup_vs_reference={speedup:.1f}")
    print(f"matmul_efficiency={efficiency:.3f}")
    print(f"stream_overhead={overhead:.4f}")
    print("peak_mb_1_10_100=" + ",".join(f"{p:.0f}" for p in peaks))
    print(f"floor_efficiency_fp32={floor['efficiency']:.3f}")
    print(f"floor_ms_fp32={floor['floor'] * 1e3:.1f}")
    print(f"bf16_speedup={bf['speedup']:.2f}")
    print(f"bf16_embedding_cosine_min={drift['cos_min']:.6f}")
    n_max = max(args.stream_counts)
    print(f"streams{n_max}_segments_per_s={sweep[('fp32', n_max)]:.2f}")


if __name__ == "__main__":
    main()
