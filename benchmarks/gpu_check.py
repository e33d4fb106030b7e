"""One prepared check of vmstream's GPU path (issue 14): run it once on a machine with one
NVIDIA GPU and torch installed; it downloads nothing.

    python benchmarks/gpu_check.py              # on the GPU machine, < 6 minutes on an H100
    python benchmarks/gpu_check.py --dry-run    # the same steps on CPU tensors, tiny sizes

Sections:
  1. parity: the Triton scan and conv against the reference on the GPU (fp32, bf16,
     forward and backward); a Ti and an M `forward_segment` on the GPU against the CPU
     model, three segments with carried state; bf16 autocast drift against fp32; the
     Triton scan and conv against mamba-ssm's and causal-conv1d's own kernels (zero
     initial state: they take none), where those import;
  2. decoding: DALI on NVDEC against PyAV on the same H.264 and HEVC files (timestamps
     equal, pixel error) for each sampling policy; 1080p decode fps, NVDEC vs PyAV on
     the host's CPUs;
  3. throughput: one scan, Triton against the reference (`scan_backend_triton_vs_ref`,
     forward and forward + backward: the Triton backend's line; the CPU backends' are in
     benchmarks/scan_backends.py) and against mamba-ssm's kernel where it imports; Ti
     16x224 and M 8x224 segments per second at batch 1, 8, 32 in fp32 and bf16
     (autocast), achieved matmul TFLOP/s against torch.matmul's rate measured in the same
     run; one scan alone at each fp32 shape in both Triton forms, and the share of the
     segment its 2 x depth scans take;
  4. faiss-gpu against faiss-cpu (vmstream's store, exact inner product) on 1M vectors:
     same top-10, query latency.
A step whose package is missing (DALI, faiss-gpu, mamba-ssm, PyAV) prints a SKIP line
with the reason and the rest still runs; a step that fails prints FAIL and the error. The
wheels these optional steps need, and the command that fetches them beforehand, are in
benchmarks/gpu_check_wheels.txt. The last lines are machine-readable, one `name=value`
figure each (nan where a step did not run), ending with `failures=N` and `gpu_check_ok=0|1`.

--dry-run runs every step on CPU tensors at tiny sizes: the Triton kernels through
Triton's interpreter (TRITON_INTERPRET=1, numpy<2.4), tiny models standing in for Ti and
M, PyAV for decoding (DALI's CPU variant on VP9 where installed, since it has no H.264),
and the store's CPU search against exact numpy search where faiss-gpu is missing. It
tests this script's plumbing (tests/benchmarks/test_gpu_check.py); its figures mean
nothing for speed.

Section 2 lives in gpu_check_decode.py. Section 3 ends with the pipeline on 16 parallel
1080p streams end to end (decode, model, sinks) against its slowest stage alone
(gpu_check_pipeline.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every step on CPU tensors at tiny sizes")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="skip the remaining timed steps past this many seconds (default 330)",
    )
    return ap.parse_args()


ARGS = _args()
if ARGS.dry_run:  # before anything imports the Triton kernels: they are built at import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_decode import decoding  # noqa: E402
from gpu_check_pipeline import PipelinePlan, pipeline_step  # noqa: E402

from vmstream.models import VideoMamba, create_model, set_scan_backend  # noqa: E402
from vmstream.models.ops import (  # noqa: E402
    available_backends,
    causal_conv1d,
    causal_conv1d_ref,
    selective_scan,
    selective_scan_ref,
)


@dataclass
class Plan:
    """Sizes and devices of one run: the real check, or its tiny CPU dry run."""

    device: str
    scan_shape: tuple  # B, L, D, N
    conv_shape: tuple  # B, L, D, K
    models: dict  # name -> (create_model name or None, constructor overrides)
    parity_frames: int
    throughput: list  # (model name, frames, batches)
    img: int
    codecs: list  # (label, encoder, container suffix)
    dali_device: str
    video: tuple  # parity clip: width, height, fps, seconds
    video_fps_test: tuple  # decode speed clip: width, height, fps, seconds
    policies: list
    faiss_n: int
    faiss_d: int
    matmul_n: int
    gpu_backend: str | None  # the "GPU" side models' scan_backend; None = automatic
    pipeline: PipelinePlan | None = None
    repeats: int = 3  # timed runs per figure (median), after one warm-up


def make_plan(dry: bool) -> Plan:
    if dry:
        tiny = dict(img_size=32, patch_size=16, depth=1, num_classes=5, drop_path_rate=0.0, ssm_cfg={"d_state": 8})
        return Plan(
            device="cpu",
            scan_shape=(1, 40, 20, 5),
            conv_shape=(2, 33, 33, 4),
            models={"Ti": (None, dict(tiny, embed_dim=32)), "M": (None, dict(tiny, embed_dim=48))},
            parity_frames=2,
            throughput=[("Ti", 2, (2,)), ("M", 2, (2,))],
            img=32,
            codecs=[("vp9", "libvpx-vp9", ".webm")],
            dali_device="cpu",
            video=(96, 64, 10, 1),
            video_fps_test=(192, 108, 10, 1),
            policies=["all", "fps:4", "uniform:4", "keyframes"],
            faiss_n=5000,
            faiss_d=32,
            matmul_n=128,
            gpu_backend="triton",
            repeats=1,
            pipeline=PipelinePlan(streams=2, video=(192, 108, 10, 2), sample_fps=4, frames=2, model="Ti"),
        )
    return Plan(
        device="cuda",
        scan_shape=(2, 1569, 384, 16),
        conv_shape=(2, 1569, 384, 4),
        models={"Ti": ("videomamba_tiny", {}), "M": ("videomamba_middle", {})},
        parity_frames=8,
        throughput=[("Ti", 16, (1, 8, 32)), ("M", 8, (1, 8, 32))],
        img=224,
        codecs=[("h264", "libx264", ".mp4"), ("hevc", "libx265", ".mp4")],
        dali_device="gpu",
        video=(640, 360, 30, 2),
        video_fps_test=(1920, 1080, 30, 10),
        policies=["all", "fps:1", "fps:2:keyframes", "uniform:16", "tsn:8", "keyframes"],
        faiss_n=1_000_000,
        faiss_d=576,
        matmul_n=8192,
        gpu_backend=None,
        pipeline=PipelinePlan(streams=16, video=(1920, 1080, 30, 8), sample_fps=8, frames=8, model="Ti"),
    )


@dataclass
class Report:
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    figures: dict = field(default_factory=dict)
    failures: int = 0

    def section(self, title: str) -> None:
        print(f"\n== {title} ({time.perf_counter() - self.t0:.0f} s)", flush=True)

    def line(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def skip(self, what: str, why: str, *keys: str) -> None:
        self.line(f"SKIP {what}: {why}")
        for k in keys:
            self.figures.setdefault(k, float("nan"))

    def figure(self, key: str, value: float) -> None:
        self.figures[key] = value

    def out_of_time(self, what: str) -> bool:
        if time.perf_counter() - self.t0 > self.budget_s:
            self.skip(what, f"time budget of {self.budget_s:.0f} s spent")
            return True
        return False

    def run(self, what: str, fn, *args) -> None:
        """Run one step; an exception is a FAIL line (traceback on stderr), never the end."""
        try:
            fn(self, *args)
        except Exception as e:  # a failed step must not hide the steps after it
            self.failures += 1
            self.line(f"FAIL {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            traceback.print_exc(file=sys.stderr)

    def check(self, key: str, err: float, tol: float) -> None:
        ok = err <= tol
        self.figure(key, err)
        if not ok:
            self.failures += 1
        self.line(f"{'ok  ' if ok else 'FAIL'} {key} = {err:.2e} (tolerance {tol:.0e})")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rel_err(a, e) -> float:
    """max |a - e| / max |e| (a relative error of the whole tensor)."""
    a, e = a.detach().double().cpu(), e.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def median_time(fn, device: str, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------------ 1. parity


def scan_inputs(shape, device, dtype, seed=0):
    Bsz, L, D, N = shape
    g = torch.Generator().manual_seed(seed)
    xz = torch.randn(Bsz, L, 2 * D, generator=g)
    x_dbl = torch.randn(Bsz, L, 2 * N, generator=g)
    inp = dict(
        u=xz[..., :D],
        z=xz[..., D:],
        delta=torch.randn(Bsz, L, D, generator=g) - 1,
        A=-torch.exp(torch.rand(D, N, generator=g) * 2.5),
        B=x_dbl[..., :N],
        C=x_dbl[..., N:],
        D=torch.randn(D, generator=g),
        delta_bias=torch.randn(D, generator=g) * 0.5,
        initial_state=torch.randn(Bsz, D, N, generator=g),
    )
    low = ("u", "z", "delta", "B", "C")
    return {k: (v.to(dtype) if k in low else v).to(device) for k, v in inp.items()}


def _grads(fn, inp, g_out, g_last, reverse):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    y, last = fn(**leaves, delta_softplus=True, return_last_state=True, reverse=reverse)
    ((y.float() * g_out).sum() + (last * g_last).sum()).backward()
    return y, last, {k: v.grad for k, v in leaves.items()}


def parity_scan(rep: Report, plan: Plan) -> None:
    """Both forward forms (the backward kernel is shared) in fp32, the default in bf16."""
    from vmstream.models.ops import triton_scan

    tol = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 5e-2)}
    default = triton_scan.FORWARD_FORM
    cases = [
        (torch.float32, "fp32", default),
        (torch.bfloat16, "bf16", default),
        (torch.float32, "fp32_" + ({"sequential", "chunked"} - {default}).pop(), None),
    ]
    for dtype, tag, form in cases:
        triton_scan.FORWARD_FORM = form or tag.split("_")[1]
        try:
            fwd, bwd = _scan_errors(plan, dtype)
        finally:
            triton_scan.FORWARD_FORM = default
        rep.check(f"parity_scan_{tag}_fwd", fwd, tol[dtype][0])
        rep.check(f"parity_scan_{tag}_bwd", bwd, tol[dtype][1])


def _scan_errors(plan: Plan, dtype) -> tuple[float, float]:
    inp = scan_inputs(plan.scan_shape, plan.device, dtype)
    ref_inp = {k: v.float() for k, v in inp.items()}  # the same rounded values, in fp32
    Bsz, L, D, N = plan.scan_shape
    g = torch.Generator().manual_seed(1)
    g_out = torch.randn(Bsz, L, D, generator=g).to(plan.device)
    g_last = torch.randn(Bsz, D, N, generator=g).to(plan.device)
    fwd = bwd = 0.0
    for reverse in (False, True):
        y, last, grads = _grads(lambda **a: selective_scan(**a, backend="triton"), inp, g_out, g_last, reverse)
        y_r, last_r, grads_r = _grads(selective_scan_ref, ref_inp, g_out, g_last, reverse)
        fwd = max(fwd, rel_err(y, y_r), rel_err(last, last_r))
        bwd = max(bwd, *(rel_err(grads[k], grads_r[k]) for k in grads_r))
    return fwd, bwd


def parity_conv(rep: Report, plan: Plan) -> None:
    Bsz, L, D, K = plan.conv_shape
    g = torch.Generator().manual_seed(2)
    base = dict(
        x=torch.randn(Bsz, L, D, generator=g),
        weight=torch.randn(D, K, generator=g) * 0.5,
        bias=torch.randn(D, generator=g),
        initial_tail=torch.randn(Bsz, D, K - 1, generator=g),
    )
    g_out = torch.randn(Bsz, L, D, generator=g).to(plan.device)
    for dtype, tag, tol in ((torch.float32, "fp32", 1e-5), (torch.bfloat16, "bf16", 2e-2)):
        inp = {k: (v.to(dtype) if k == "x" else v).to(plan.device) for k, v in base.items()}
        fwd = bwd = 0.0
        for reverse in (False, True):
            outs = []
            for fn, cast in ((lambda **a: causal_conv1d(**a, backend="triton"), False), (causal_conv1d_ref, True)):
                leaves = {k: (v.float() if cast else v).detach().clone().requires_grad_(True) for k, v in inp.items()}
                y, tail = fn(**leaves, activation="silu", return_final_tail=True, reverse=reverse)
                ((y.float() * g_out).sum() + tail.float().sum()).backward()
                outs.append((y, tail, {k: v.grad for k, v in leaves.items()}))
            (y, t, gr), (y_r, t_r, gr_r) = outs
            fwd = max(fwd, rel_err(y, y_r), rel_err(t, t_r))
            bwd = max(bwd, *(rel_err(gr[k], gr_r[k]) for k in gr_r))
        rep.check(f"parity_conv_{tag}_fwd", fwd, tol)
        rep.check(f"parity_conv_{tag}_bwd", bwd, max(tol, 1e-4))


MAMBA_SSM_KEYS = ("parity_mamba_ssm_scan_fwd", "parity_mamba_ssm_conv_fwd", "scan_triton_vs_mamba_ssm")


def mamba_ssm_missing() -> str | None:
    """None where mamba-ssm's and causal-conv1d's kernels can run here, else why not.
    They are no vmstream backend, only a yardstick (benchmarks/gpu_check_wheels.txt)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as e:  # ImportError, or a broken build raising at import
        return f"mamba-ssm / causal-conv1d not importable ({type(e).__name__}: {e}); pip install 'vmstream[mamba]'"
    return None


def _channel_major(t):
    """[B, L, X] -> [B, X, L] with the token axis contiguous, as mamba-ssm's kernels want."""
    return t.transpose(1, 2).contiguous()


def mamba_ssm_scan(inp: dict):
    """mamba-ssm's own `selective_scan_fn` on vmstream's token-major inputs, from a zero
    state (it takes none): (out [B, L, D], last state [B, D, N])."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    c = _channel_major
    y, last = selective_scan_fn(
        c(inp["u"]),
        c(inp["delta"]),
        inp["A"].contiguous(),
        c(inp["B"]),
        c(inp["C"]),
        inp["D"].contiguous(),
        c(inp["z"]),
        inp["delta_bias"].contiguous(),
        True,
        return_last_state=True,
    )
    return y.transpose(1, 2), last


def parity_mamba_ssm(rep: Report, plan: Plan) -> None:
    """vmstream's Triton scan and conv against mamba-ssm's and causal-conv1d's own kernels,
    called directly, on a zero initial state (theirs take none), fp32 forward."""
    why = mamba_ssm_missing()
    if why:
        rep.skip("mamba-ssm yardstick (Triton against mamba-ssm's own kernels)", why, *MAMBA_SSM_KEYS)
        return
    from causal_conv1d import causal_conv1d_fn

    inp = scan_inputs(plan.scan_shape, plan.device, torch.float32)
    inp["initial_state"] = None
    with torch.no_grad():
        y, last = selective_scan(**inp, delta_softplus=True, return_last_state=True, backend="triton")
        y_m, last_m = mamba_ssm_scan(inp)
        rep.check("parity_mamba_ssm_scan_fwd", max(rel_err(y, y_m), rel_err(last, last_m)), 1e-4)
        x = inp["u"]
        w = torch.randn(x.shape[-1], 4, device=plan.device)
        bias = torch.randn(x.shape[-1], device=plan.device)
        y = causal_conv1d(x, w, bias, None, "silu", backend="triton")
        y_m = causal_conv1d_fn(_channel_major(x), w, bias, activation="silu").transpose(1, 2)
        rep.check("parity_mamba_ssm_conv_fwd", rel_err(y, y_m), 1e-5)


def build_model(plan: Plan, name: str, frames: int, backend: str | None = None) -> VideoMamba:
    """Model `name` of the plan on scan backend `backend` (None: automatic)."""
    registry_name, overrides = plan.models[name]
    torch.manual_seed(0)
    if registry_name is None:
        model = VideoMamba(num_frames=frames, scan_backend=backend, **overrides)
    else:
        model = create_model(registry_name, num_frames=frames, scan_backend=backend, **overrides)
    return model.eval()


def _stream(model, clips, dtype=None):
    state, feats = None, []
    device = clips[0].device.type
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for clip in clips:
            out = model.forward_segment(clip, state)
            state, feats = out.state, feats + [out.features.float()]
    return torch.stack(feats), state


def parity_models(rep: Report, plan: Plan) -> None:
    """Each model on the device (its default backend) against the CPU model, 3 segments."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the patch embedding conv in true fp32
    try:
        for name in plan.models:
            if rep.out_of_time(f"model parity {name}"):
                return
            cpu_model = build_model(plan, name, plan.parity_frames)
            dev_model = set_scan_backend(copy.deepcopy(cpu_model).to(plan.device), plan.gpu_backend)
            g = torch.Generator().manual_seed(3)
            clips = [torch.randn(1, 3, plan.parity_frames, plan.img, plan.img, generator=g) for _ in range(3)]
            feats_cpu, state_cpu = _stream(cpu_model, clips)
            dev_clips = [c.to(plan.device) for c in clips]
            feats, state = _stream(dev_model, dev_clips)
            rep.check(
                f"parity_model_{name.lower()}_fp32",
                max(rel_err(feats, feats_cpu), rel_err(state.ssm, state_cpu.ssm)),
                1e-3,
            )
            feats_bf16, _ = _stream(dev_model, dev_clips, dtype=torch.bfloat16)
            drift = rel_err(feats_bf16, feats)
            rep.figure(f"bf16_drift_{name.lower()}", drift)
            rep.line(f"     bf16_drift_{name.lower()} = {drift:.2e} (autocast bf16 against fp32, features)")
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


# ------------------------------------------------------------------------ 3. throughput


def segment_macs(model: VideoMamba, frames: int, img: int, device: str) -> float:
    """Multiply-adds of one segment's matmuls (linear layers and the patch embedding),
    counted by hooks on one batch-1 forward."""
    total = [0.0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Linear):
            total[0] += out.numel() * mod.in_features
        else:  # Conv2d / Conv3d: each output element is a dot product of the kernel volume
            total[0] += out.numel() * mod.weight[0].numel()

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))
    ]
    try:
        with torch.inference_mode():
            model.forward_segment(torch.zeros(1, 3, frames, img, img, device=device))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def matmul_rate(plan: Plan, dtype) -> float:
    n = plan.matmul_n
    a = torch.randn(n, n, device=plan.device, dtype=dtype)
    b = torch.randn(n, n, device=plan.device, dtype=dtype)
    t = median_time(lambda: torch.matmul(a, b), plan.device, repeats=5, warmup=2)
    return 2 * n**3 / t / 1e12


def throughput(rep: Report, plan: Plan) -> None:
    rates = {}
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        rates[tag] = matmul_rate(plan, dtype)
        rep.figure(f"matmul_tflops_{tag}", rates[tag])
        rep.line(f"torch.matmul {plan.matmul_n}^2 {tag}: {rates[tag]:.1f} TFLOP/s")
    for name, frames, batches in plan.throughput:
        model = build_model(plan, name, frames, plan.gpu_backend).to(plan.device)
        flops = 2 * segment_macs(model, frames, plan.img, plan.device)
        for batch in batches:
            for dtype, tag in ((None, "fp32"), (torch.bfloat16, "bf16")):
                key = f"{name.lower()}{frames}_b{batch}_{tag}"
                if rep.out_of_time(key):
                    rep.figures.setdefault(f"{key}_seg_per_s", float("nan"))
                    continue
                clip = torch.randn(batch, 3, frames, plan.img, plan.img, device=plan.device)
                state = model.init_state(batch, device=plan.device)

                def step(model=model, clip=clip, state=state, dtype=dtype):
                    with (
                        torch.inference_mode(),
                        torch.autocast(plan.device, dtype=torch.bfloat16, enabled=dtype is not None),
                    ):
                        model.forward_segment(clip, state)

                t = median_time(step, plan.device, repeats=plan.repeats, warmup=1)
                achieved = batch * flops / t / 1e12
                rep.figure(f"{key}_seg_per_s", batch / t)
                rep.figure(f"{key}_tflops", achieved)
                rep.line(
                    f"{name} {frames}x{plan.img} batch {batch:2d} {tag}: {batch / t:8.2f} segments/s, "
                    f"{achieved:.2f} TFLOP/s = {achieved / rates[tag]:.0%} of matmul"
                )
                if tag == "fp32" and not rep.out_of_time("isolated scan"):
                    scan_share(rep, plan, model, frames, batch, t, key)
        del model


def scan_share(rep: Report, plan: Plan, model, frames: int, batch: int, t_segment: float, key: str) -> None:
    """One scan at the segment's shape, alone, per backend that runs here: how much of
    the segment time the 2 x depth scans take (which parallel form the scan needs)."""
    L = frames * (plan.img // model.card.patch_size) ** 2 + 1
    inp = scan_inputs((batch, L, model.d_inner, model.d_state), plan.device, torch.float32)
    if available_backends(build=False)["triton"] != "ok":
        return
    from vmstream.models.ops import triton_scan

    form = triton_scan.FORWARD_FORM
    for form_run in ("sequential", "chunked"):
        triton_scan.FORWARD_FORM = form_run
        try:
            with torch.inference_mode():
                t = median_time(
                    lambda: selective_scan(**inp, delta_softplus=True, return_last_state=True, backend="triton"),
                    plan.device,
                    repeats=plan.repeats,
                )
        finally:
            triton_scan.FORWARD_FORM = form
        name = f"triton_{form_run}"
        share = 2 * len(model.layers) * t / t_segment
        rep.figure(f"{key}_scan_{name}_ms", 1e3 * t)
        rep.line(
            f"     one scan [{batch}, {L}, {model.d_inner}, {model.d_state}] on {name}: {1e3 * t:.2f} ms; "
            f"x{2 * len(model.layers)} = {share:.0%} of the segment"
        )


def scan_speed(rep: Report, plan: Plan) -> None:
    """The Triton backend's line (benchmarks/scan_backends.py has the CPU backends'): one
    fp32 scan at the parity shape with a carried state, forward and forward + backward,
    against the reference on the same device in the same run; and, forward from a zero
    state, against mamba-ssm's own kernel where it is installed. `X_vs_Y` is how many
    times faster X runs than Y."""
    inp = scan_inputs(plan.scan_shape, plan.device, torch.float32)
    Bsz, L, D, N = plan.scan_shape

    def forward(backend, inp=inp):
        with torch.inference_mode():
            selective_scan(**inp, delta_softplus=True, return_last_state=True, backend=backend)

    def train(backend):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
        y, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
        (y.square().mean() + last.square().mean()).backward()

    for step, suffix, what in ((forward, "", "forward"), (train, "_train", "forward + backward")):
        t = {
            b: median_time(lambda b=b, step=step: step(b), plan.device, repeats=plan.repeats) for b in ("triton", "ref")
        }
        ratio = t["ref"] / t["triton"]
        rep.figure(f"scan_backend_triton_vs_ref{suffix}", ratio)
        rep.line(
            f"one scan [{Bsz}, {L}, {D}, {N}] fp32 {what}: triton {1e3 * t['triton']:.2f} ms, "
            f"ref {1e3 * t['ref']:.2f} ms -> scan_backend_triton_vs_ref{suffix} = {ratio:.1f}"
        )
    if mamba_ssm_missing():
        return  # parity_mamba_ssm printed the SKIP line
    zero = dict(inp, initial_state=None)
    t_triton = median_time(lambda: forward("triton", zero), plan.device, repeats=plan.repeats)
    with torch.inference_mode():
        t_mamba = median_time(lambda: mamba_ssm_scan(zero), plan.device, repeats=plan.repeats)
    rep.figure("scan_triton_vs_mamba_ssm", t_mamba / t_triton)
    rep.line(
        f"one scan [{Bsz}, {L}, {D}, {N}] fp32 forward from a zero state: triton {1e3 * t_triton:.2f} ms, "
        f"mamba-ssm selective_scan_fn {1e3 * t_mamba:.2f} ms -> scan_triton_vs_mamba_ssm = {t_mamba / t_triton:.2f}"
    )


def pipeline(rep: Report, plan: Plan) -> None:
    if not rep.out_of_time("pipeline"):
        pipeline_step(
            rep, plan, plan.pipeline, lambda plan, name, frames: build_model(plan, name, frames, plan.gpu_backend), sync
        )


# ------------------------------------------------------------------------ 4. faiss


def faiss_check(rep: Report, plan: Plan) -> None:
    try:
        import faiss
        import numpy as np

        from vmstream.store.index import VectorIndex, gpu_available
    except ImportError as e:
        rep.skip("faiss", f"faiss or the store's dependencies not installed ({e})", "faiss_gpu_same_top10")
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((plan.faiss_n, plan.faiss_d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, plan.faiss_n, 100)] + 0.1 * rng.standard_normal((100, plan.faiss_d), dtype=np.float32)
    index = VectorIndex.empty("flat", plan.faiss_d)
    index.add(np.arange(plan.faiss_n, dtype=np.int64) * 7 + 3, x)  # ids that are not row numbers
    t_cpu = median_time(lambda: index.search(q, 10), "cpu", repeats=3, warmup=1)
    _, ids_cpu = index.search(q, 10)
    rep.figure("faiss_cpu_ms_per_query", 1e3 * t_cpu / len(q))
    rep.line(f"faiss-cpu flat {plan.faiss_n} x {plan.faiss_d}: {1e3 * t_cpu / len(q):.3f} ms/query (batch of 100)")
    if gpu_available():
        gpu = index.to_gpu(faiss.StandardGpuResources())
        t_gpu = median_time(lambda: index.search(q, 10, gpu_index=gpu), "cpu", repeats=3, warmup=1)
        _, other = index.search(q, 10, gpu_index=gpu)
        rep.figure("faiss_gpu_ms_per_query", 1e3 * t_gpu / len(q))
        rep.line(f"faiss-gpu: {1e3 * t_gpu / len(q):.3f} ms/query ({t_cpu / t_gpu:.1f}x CPU)")
    elif plan.device == "cpu":
        rep.line("faiss-gpu not installed: the dry run holds the CPU store to exact numpy search")
        other = (np.argsort(-(q @ x.T), axis=1)[:, :10]) * 7 + 3
    else:
        rep.skip(
            "faiss-gpu",
            "faiss-gpu not installed or sees no GPU (benchmarks/gpu_check_wheels.txt)",
            "faiss_gpu_same_top10",
            "faiss_gpu_ms_per_query",
        )
        return
    same = float(np.mean([set(a) == set(b) for a, b in zip(ids_cpu, other)]))
    rep.check("faiss_top10_mismatch", 1.0 - same, 0.0)
    rep.figure("faiss_gpu_same_top10", same)


def main() -> int:
    plan = make_plan(ARGS.dry_run)
    rep = Report(budget_s=ARGS.budget_s)
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s", stream=sys.stdout)
    for name in ("vmstream.stages", "vmstream.models.hub", "faiss", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)
    print(
        f"gpu_check{' --dry-run' if ARGS.dry_run else ''}: torch {torch.__version__}, "
        f"device {torch.cuda.get_device_name(0) if plan.device == 'cuda' else 'cpu (Triton interpreter)'}"
    )
    if plan.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a machine without a GPU")
        return 2
    backends = available_backends(build=False)
    print(f"scan backends: {backends}")
    # Triton is an extra (vmstream[gpu]); a dry run where it is missing skips its checks
    # with the reason, one line each, and runs the rest on the CPU backends.
    no_triton = backends["triton"] if ARGS.dry_run and backends["triton"] != "ok" else None
    if no_triton and plan.gpu_backend == "triton":
        plan = dataclasses.replace(plan, gpu_backend=None)
    rep.section("1. parity")
    for what, step in (
        ("Triton scan against the reference", parity_scan),
        ("Triton conv against the reference", parity_conv),
    ):
        if no_triton:
            rep.skip(what, no_triton)
        else:
            rep.run(what, step, plan)
    rep.run("Triton against mamba-ssm's own kernels", parity_mamba_ssm, plan)
    rep.run("models on the device against the CPU", parity_models, plan)
    rep.section("2. decoding")
    rep.run("decoding", decoding, plan, median_time)
    rep.section("3. throughput")
    if no_triton:
        rep.skip("Triton scan speed against the reference", no_triton, "scan_backend_triton_vs_ref")
    else:
        rep.run("Triton scan speed against the reference", scan_speed, plan)
    rep.run("throughput", throughput, plan)
    rep.run("pipeline", pipeline, plan)
    rep.section("4. faiss")
    rep.run("faiss", faiss_check, plan)
    print(f"\n== figures ({time.perf_counter() - rep.t0:.0f} s)")
    for key, value in rep.figures.items():
        print(f"{key}={value:.6g}")
    print(f"failures={rep.failures}")
    print(f"gpu_check_ok={int(rep.failures == 0)}")
    return 0 if rep.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
