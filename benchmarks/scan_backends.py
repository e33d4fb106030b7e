"""Each CPU scan backend earns its place (issue 21): one VideoMamba segment on each.

The same VideoMamba segment (`forward_segment`, state carried in) is timed on every scan
backend that runs on this machine's CPU, in one run:
  * "ref", the readable PyTorch reference: the baseline of every ratio;
  * "cpu", the fused C++ kernel (for inference the whole layer between in_proj and
    out_proj is one kernel call);
  * "numba", the fallback where no C++ compiler exists;
and a training step (the same segment's forward and backward, gradients through the
carried state) on each. Rounds interleave the backends (ref, cpu, numba, ref, ...), and
each ratio is the median over rounds of that round's pair, so a busy machine slows both
sides of a ratio alike.

"triton" is vmstream's CUDA backend; on a CPU it runs through Triton's interpreter, which
is a correctness tool and no speed figure. Its line, `scan_backend_triton_vs_ref=`, is
printed by benchmarks/gpu_check.py on a GPU (with mamba-ssm's own kernels as a second
yardstick where they are installed).

Output, one `key=value` figure a line (nan where a backend cannot run here, with the
reason on a `#` line); `X_vs_Y` is how many times faster X runs than Y (Y's time / X's):
    scan_backend_ref_forward_ms=…          the baseline's segment forward
    scan_backend_cpu_vs_ref=…              segment forward, cpu against ref
    scan_backend_numba_vs_ref=…
    scan_backend_numba_vs_cpu=…            below 1: what a machine without a compiler loses
    scan_backend_ref_train_ms=…            the baseline's training step
    scan_backend_cpu_vs_ref_train=…        training step (forward + backward)
    scan_backend_numba_vs_ref_train=…
    scan_backend_numba_vs_cpu_train=…

    .venv/bin/python benchmarks/scan_backends.py                     # small defaults: ~10 s quiet,
                                                                     # 1-2 minutes on 2 busy cores
    .venv/bin/python benchmarks/scan_backends.py --frames 16 --img-size 224 --rounds 5
                                                                     # VideoMamba-Ti's real segment
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmstream.models import create_model, set_scan_backend  # noqa: E402
from vmstream.models.ops import available_backends  # noqa: E402

BASELINE = "ref"
FAST = ("cpu", "numba")  # the CPU backends besides the baseline


def usable_backends() -> dict[str, str]:
    """Name -> "ok" or why it cannot run here, for the baseline and the fast CPU backends
    (builds the C++ kernel if it is not cached yet)."""
    status = available_backends(build=True)
    return {name: status[name] for name in (BASELINE, *FAST)}


def forward_step(model, clip, state) -> None:
    with torch.inference_mode():
        model.forward_segment(clip, state)


def train_step(model, clip, state) -> None:
    """Forward and backward of one segment with a loss on its features and on the carried
    state (truncated BPTT's gradient path), as a training step does (no optimizer: that
    part does not depend on the backend)."""
    model.zero_grad(set_to_none=True)
    out = model.forward_segment(clip, state)
    (out.features.square().mean() + out.state.ssm.square().mean()).backward()


def time_rounds(step, model, clip, state, backends: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds of `step` on each backend per round. Each backend first runs a one-frame
    clip off the clock (lazy initialisation, numba's compilation: it depends on dtypes,
    not on sizes), then the rounds interleave the backends."""
    for name in backends:
        step(set_scan_backend(model, name), clip[:, :, :1], state)
    times = {name: [] for name in backends}
    for _ in range(rounds):
        for name in backends:
            set_scan_backend(model, name)  # the same weights, each backend in turn
            t = time.perf_counter()
            step(model, clip, state)
            times[name].append(time.perf_counter() - t)
    return times


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow / fast (how many times faster `fast` ran)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def report(times: dict, usable: dict, suffix: str, what: str) -> None:
    ref = times[BASELINE]
    print(f"scan_backend_{BASELINE}_{what}_ms={1e3 * statistics.median(ref):.1f}")
    for name in FAST:
        ratio = paired_ratio(ref, times[name]) if name in times else float("nan")
        print(f"scan_backend_{name}_vs_{BASELINE}{suffix}={ratio:.2f}")
    both = all(n in times for n in FAST)
    ratio = paired_ratio(times["cpu"], times["numba"]) if both else float("nan")
    print(f"scan_backend_numba_vs_cpu{suffix}={ratio:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="videomamba_tiny", help="registry architecture (default videomamba_tiny)")
    ap.add_argument("--frames", type=int, default=4, help="frames per segment (default 4; the model's own: 16)")
    ap.add_argument("--img-size", type=int, default=64, help="frame size (default 64; the model's own: 224)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per step (median), after one warm-up")
    ap.add_argument("--no-train", action="store_true", help="time the segment forward only")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model, num_frames=args.frames, num_classes=400, img_size=args.img_size)
    clip = torch.randn(args.batch, 3, args.frames, args.img_size, args.img_size)
    state = model.init_state(args.batch)
    with torch.no_grad():  # a carried state that is not zero, as in a stream's later segments
        state.ssm.normal_(0, 0.1)
        state.conv.normal_(0, 0.1)
    usable = usable_backends()
    run_on = [name for name in (BASELINE, *FAST) if usable[name] == "ok"]
    tokens = args.frames * (args.img_size // model.card.patch_size) ** 2 + 1
    print(
        f"# {args.model} {args.img_size}x{args.img_size}, {args.frames} frames ({tokens} tokens), "
        f"batch {args.batch}, {args.rounds} rounds; torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} (ratios pair each round's runs)"
    )
    for name in (BASELINE, *FAST):
        if usable[name] != "ok":
            print(f"# {name}: cannot run here ({usable[name]}); its figures are nan")
    print(
        "# triton: on a CPU only through Triton's interpreter (no speed figure); "
        "scan_backend_triton_vs_ref= is printed by benchmarks/gpu_check.py on a GPU"
    )

    model.eval()
    fwd = time_rounds(forward_step, model, clip, state, run_on, args.rounds)
    for name, ts in fwd.items():
        print(f"# segment forward [{name}]: {1e3 * statistics.median(ts):.1f} ms")
    report(fwd, usable, "", "forward")
    if not args.no_train:
        model.train()
        train = time_rounds(train_step, model, clip, state, run_on, args.rounds)
        for name, ts in train.items():
            print(f"# training step [{name}]: {1e3 * statistics.median(ts):.1f} ms")
        report(train, usable, "_train", "train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
