"""Training throughput of VideoMamba-Ti at 8x224 on this machine's CPU.

Prints, medians over repeats (timings on a shared machine are noisy):
  * clip fine-tuning: one optimizer step (forward, backward, AdamW with the recipe's
    param groups) on a batch of B clips of 8x224x224 -> clips/s;
  * streaming fine-tuning: B videos of S segments of 8 frames, state carried, full BPTT
    through all segments (`streaming_step`) -> segments/s, and the ratio to clip training
    (the price of carrying the state and backpropagating through it);
  * where a step's time goes: the scan kernel's forward and backward (timed inside the
    autograd function of the fast CPU scan) as shares of the step.
  * masked pretraining (the Ti student, 80 % attention masking, distilling a CLIP-B/16
    teacher at 8x224 with random weights: speed only): the whole step (teacher forward,
    masks, student forward/backward on the visible tokens, AdamW) -> clips/s; and what
    the masking saves: the student's masked forward, and its masked training step, as
    fractions of the full (unmasked) forward and of the clip fine-tuning step.
Optionally (--with-ref) the same clip step on the PyTorch reference scan, for the ratio.

Last lines, one figure each: train_clips_per_s=, stream_segments_per_s=,
scan_backward_share=, scan_forward_share=, pretrain_clips_per_s=,
masked_forward_ratio=, masked_step_ratio=.

    .venv/bin/python benchmarks/train_speed.py [--batch 2] [--segments 2] [--repeats 3] [--pretrain-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmstream.models import ClipTeacher, VideoMambaPretrain, create_model, set_scan_backend  # noqa: E402
from vmstream.models.ops import available_backends  # noqa: E402
from vmstream.training.engine import clip_step  # noqa: E402
from vmstream.training.optim import build_optimizer  # noqa: E402
from vmstream.training.pretrain import distill_step, draw_mask_and_targets  # noqa: E402
from vmstream.training.recipes import PretrainConfig  # noqa: E402
from vmstream.training.streaming import streaming_step  # noqa: E402


class ScanTimer:
    """Wall time spent inside the fast CPU scan's forward and backward kernels."""

    def __init__(self):
        self.fwd = self.bwd = 0.0
        self._orig = None

    def __enter__(self):
        from vmstream.models.ops import cpu

        fn = cpu._SelectiveScanFn
        self._orig = (fn.forward, fn.backward)
        of, ob = self._orig
        timer = self

        def fwd(ctx, *a):
            t = time.perf_counter()
            r = of(ctx, *a)
            timer.fwd += time.perf_counter() - t
            return r

        def bwd(ctx, *g):
            t = time.perf_counter()
            r = ob(ctx, *g)
            timer.bwd += time.perf_counter() - t
            return r

        fn.forward, fn.backward = staticmethod(fwd), staticmethod(bwd)
        return self

    def __exit__(self, *exc):
        from vmstream.models.ops import cpu

        cpu._SelectiveScanFn.forward, cpu._SelectiveScanFn.backward = map(staticmethod, self._orig)

    def reset(self):
        self.fwd = self.bwd = 0.0


def _model(frames: int, backend: str):
    torch.manual_seed(0)
    return create_model(
        "videomamba_tiny", num_frames=frames, img_size=224, num_classes=400, drop_path_rate=0.1, scan_backend=backend
    )


def time_steps(step, model, batch, optimizer, repeats: int, timer=None):
    times, fwd, bwd = [], [], []
    for i in range(repeats + 1):  # the first is warm-up (allocations, kernel build)
        if timer:
            timer.reset()
        t = time.perf_counter()
        step(model, batch, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        if i:
            times.append(dt)
            if timer:
                fwd.append(timer.fwd / dt)
                bwd.append(timer.bwd / dt)
    med = statistics.median(times)
    return med, (statistics.median(fwd) if fwd else float("nan")), (statistics.median(bwd) if bwd else float("nan"))


def time_pretraining(a, clip_step_s: float, backend: str) -> dict:
    """Masked pretraining of the Ti student (see the module docstring)."""
    torch.manual_seed(0)
    student = VideoMambaPretrain(
        img_size=224,
        patch_size=16,
        depth=24,
        embed_dim=192,
        num_frames=a.frames,
        drop_path_rate=0.1,
        clip_decoder_embed_dim=192,
        clip_output_dim=512,
        scan_backend=backend,
    )
    teacher = (
        ClipTeacher(
            input_resolution=224,
            patch_size=16,
            width=768,
            layers=12,
            heads=12,
            output_dim=512,
            return_attn=True,
            clip_return_cls=True,
        )
        .eval()
        .requires_grad_(False)
    )
    cfg = PretrainConfig(mask_type="attention", mask_ratio=a.mask_ratio, clip_output_dim=512)
    opt, _ = build_optimizer(student, 1e-4, 0.05)
    x = torch.randn(a.batch, 3, a.frames, 224, 224)
    step_s, _, _ = time_steps(distill_step(teacher, cfg, torch.device("cpu")), student, {"x": x}, opt, a.repeats)
    mask, targets = draw_mask_and_targets(student, teacher, x, cfg)
    full = torch.zeros_like(mask)

    def student_only(model, batch, scale):  # the step without the teacher: what masking changes
        loss = (2 - 2 * (model(batch["x"], mask) * targets).sum(-1)).mean()
        (loss * scale).backward()
        return float(loss.detach()), batch["x"].shape[0]

    masked_step_s, _, _ = time_steps(student_only, student, {"x": x}, opt, a.repeats)
    fwd = {}
    with torch.no_grad():
        for name, m in (("masked", mask), ("full", full)):
            times = []
            for i in range(a.repeats + 1):
                t = time.perf_counter()
                student(x, m)
                if i:
                    times.append(time.perf_counter() - t)
            fwd[name] = statistics.median(times)
    print(
        f"masked pretraining ({a.mask_ratio:.0%} attention masking, CLIP-B/16 teacher): "
        f"{step_s * 1e3:.0f} ms for {a.batch} clips -> {a.batch / step_s:.2f} clips/s; student alone "
        f"{masked_step_s * 1e3:.0f} ms ({masked_step_s / clip_step_s:.2f}x the clip fine-tuning step); masked "
        f"forward {fwd['masked'] * 1e3:.0f} ms vs full forward {fwd['full'] * 1e3:.0f} ms"
    )
    return {
        "clips_per_s": a.batch / step_s,
        "forward_ratio": fwd["masked"] / fwd["full"],
        "step_ratio": masked_step_s / clip_step_s,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--with-ref", action="store_true", help="also time the reference scan (slow: minutes)")
    p.add_argument("--pretrain-only", action="store_true", help="time only masked pretraining (and the clip step)")
    p.add_argument("--mask-ratio", type=float, default=0.8)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    backends = available_backends()
    if backends.get("cpu") != "ok":
        print(f"fast CPU scan unavailable ({backends.get('cpu')}); timing the reference only")
    backend = "cpu" if backends.get("cpu") == "ok" else "ref"
    print(f"VideoMamba-Ti {a.frames}x224, batch {a.batch}, threads {torch.get_num_threads()}, scan backend {backend}")

    model = _model(a.frames, backend)
    opt, _ = build_optimizer(model, 1e-4, 0.1, layer_decay=0.75)
    x = torch.randn(a.batch, 3, a.frames, 224, 224)
    y = torch.randint(0, 400, (a.batch,))
    step = clip_step(torch.nn.CrossEntropyLoss())
    with ScanTimer() as timer:
        clip_s, fwd_share, bwd_share = time_steps(
            step, model, {"x": x, "y": y}, opt, a.repeats, timer if backend == "cpu" else None
        )
    clips = a.batch / clip_s
    print(
        f"clip step: {clip_s * 1e3:.0f} ms for {a.batch} clips -> {clips:.2f} clips/s "
        f"(scan forward {fwd_share:.0%}, scan backward {bwd_share:.0%} of the step)"
    )

    segs = float("nan")
    if not a.pretrain_only:
        xs = torch.randn(a.batch, a.segments, 3, a.frames, 224, 224)
        sstep = streaming_step(torch.nn.CrossEntropyLoss(), tbptt_k=0, loss="last")
        with ScanTimer() as timer:
            stream_s, sfwd, sbwd = time_steps(
                sstep, model, {"x": xs, "y": y}, opt, a.repeats, timer if backend == "cpu" else None
            )
        segs = a.batch * a.segments / stream_s
        print(
            f"streaming step: {stream_s * 1e3:.0f} ms for {a.batch} videos x {a.segments} segments -> "
            f"{segs:.2f} segments/s ({segs / clips:.2f}x clip throughput; scan forward {sfwd:.0%}, "
            f"backward {sbwd:.0%})"
        )

        if a.with_ref and backend != "ref":
            ref_s, _, _ = time_steps(step, set_scan_backend(model, "ref"), {"x": x, "y": y}, opt, 1)
            print(f"reference scan clip step: {ref_s * 1e3:.0f} ms -> fast scan is {ref_s / clip_s:.1f}x faster")
            set_scan_backend(model, backend)

    pre = time_pretraining(a, clip_s, backend)

    print(f"train_clips_per_s={clips:.3f}")
    print(f"stream_segments_per_s={segs:.3f}")
    print(f"scan_backward_share={bwd_share:.3f}")
    print(f"scan_forward_share={fwd_share:.3f}")
    print(f"pretrain_clips_per_s={pre['clips_per_s']:.3f}")
    print(f"masked_forward_ratio={pre['forward_ratio']:.3f}")
    print(f"masked_step_ratio={pre['step_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
