"""End-to-end pipeline throughput against its slowest stage alone, measured in one run.

    .venv/bin/python benchmarks/pipeline_speed.py [--minutes 10] [--height 480] [--fps 1]

Makes (and caches) a noisy H.264 test video, then times on it:
  decode-only    decoder + segmenter, no model (segments kept for the next step)
  model-only     VideoMamba-Ti (random weights, the fast CPU scan) over those segments,
                 carrying the state, one segment at a time
  pipeline       the runner: decode, inference and sinks (Parquet + FAISS) in their threads

The runner overlaps the stages, so its time should approach the slowest stage's. On a
machine where decoding and the model use different resources (NVDEC/CPU decode, GPU
model) that is the right yardstick. On a small CPU-only machine both stages compete for
the same cores, so the pipeline cannot beat the sum of their CPU work; the script prints
the ratio to the sum, and to the overlap bound: max(slowest stage, CPU seconds of both
stages / cores), the best any scheduling can reach on this machine. Last lines are
machine-readable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmstream.models import create_model  # noqa: E402
from vmstream.pipeline.assembly import build_runner  # noqa: E402
from vmstream.pipeline.config import load_config  # noqa: E402
from vmstream.records import Segment  # noqa: E402
from vmstream.stages.decode import FrameSize, make_decoder  # noqa: E402
from vmstream.stages.inference import InferenceStage  # noqa: E402
from vmstream.stages.sampling import FpsSampling  # noqa: E402
from vmstream.stages.segmenter import Segmenter  # noqa: E402
from vmstream.stages.sinks.faiss_store import FaissSink  # noqa: E402
from vmstream.stages.sinks.parquet import ParquetSink  # noqa: E402
from vmstream.stages.sources import resolve_sources  # noqa: E402

CACHE = Path(os.environ.get("VMSTREAM_BENCH_CACHE", Path.home() / ".cache" / "vmstream" / "bench"))


def make_video(minutes: float, height: int) -> str:
    width = (height * 16 // 9) // 2 * 2
    path = CACHE / f"pipeline_{minutes:g}min_{height}p.mp4"
    if path.exists():
        return str(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        sys.exit("needs the ffmpeg CLI to make the test video")
    tmp = path.with_suffix(".tmp.mp4")
    # Noise so it compresses like camera footage; 2 s GOP.
    cmd = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate=30:duration={minutes * 60}",
        "-vf",
        "noise=alls=12:allf=t",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "60",
        "-b:v",
        f"{max(1, height // 240)}M",
        "-pix_fmt",
        "yuv420p",
        str(tmp),
    ]
    print(f"making {path.name} ...", flush=True)
    subprocess.run(cmd, check=True)
    tmp.rename(path)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--frames", type=int, default=16, help="segment length T")
    args = ap.parse_args()

    video = make_video(args.minutes, args.height)
    (src,) = resolve_sources([video])
    policy, size = FpsSampling(args.fps), FrameSize(224, 224)
    decoder = make_decoder("pyav")
    torch.manual_seed(0)
    model = create_model("videomamba_tiny", num_frames=args.frames, num_classes=400).eval()
    from vmstream.models.ops import available_backends

    print(
        f"video: {Path(video).name}, {args.minutes:g} min {args.height}p, sampling {args.fps:g} fps, "
        f"T={args.frames}, torch threads {torch.get_num_threads()}, scan backends {available_backends()}"
    )

    # -- decode only
    t0, c0 = time.perf_counter(), time.process_time()
    segs = [
        s
        for s in Segmenter(args.frames).segments(decoder.frames(src, policy, size), uri=src.uri)
        if isinstance(s, Segment)
    ]
    t_decode, c_decode = time.perf_counter() - t0, time.process_time() - c0
    print(f"decode-only   {t_decode:7.2f} s  ({len(segs)} segments; {c_decode:.1f} CPU-s)")

    # -- model only (warm up the kernels first: the first call builds/loads them)
    stage = InferenceStage(model, device="cpu")
    stage.process([Segment("warm", 0, 0, 0, segs[0].pixels)])
    stage.drop("warm")
    t0, c0 = time.perf_counter(), time.process_time()
    for s in segs:
        stage.process([s])
    t_model, c_model = time.perf_counter() - t0, time.process_time() - c0
    print(f"model-only    {t_model:7.2f} s  ({t_model / len(segs) * 1e3:.0f} ms/segment; {c_model:.1f} CPU-s)")
    del segs

    # -- the pipeline
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            overrides={
                "model": {"name": None, "checkpoint": None},
                "decode": {"backend": "pyav", "fps": args.fps},
                "segment": {"frames": args.frames},
                "output": {"dir": out, "console": False},
                "runner": {"progress": False, "snapshot_every": 0, "max_streams": 1},
            }
        )
        sinks = [ParquetSink(out), FaissSink(Path(out) / "index", dim=model.embed_dim)]
        runner = build_runner(cfg, model=model, sinks=sinks)
        t0 = time.perf_counter()
        report = runner.run([src])
        t_pipe = time.perf_counter() - t0
    print(f"pipeline      {t_pipe:7.2f} s  ({report.segments} segments)")
    print(report.format())

    slowest = max(t_decode, t_model)
    # The best any overlap can do here: the slowest stage, or all the CPU work of both
    # stages spread over every core, whichever is longer.
    cores = os.cpu_count() or 1
    bound = max(slowest, (c_decode + c_model) / cores)
    print(
        f"overlap bound {bound:7.2f} s  (max of the slowest stage and {c_decode + c_model:.1f} CPU-s over {cores} cores)"
    )
    print(f"pipeline_vs_overlap_bound={t_pipe / bound:.3f}")
    print(f"pipeline_vs_slowest_stage={t_pipe / slowest:.3f}")
    print(f"pipeline_vs_sum_of_stages={t_pipe / (t_decode + t_model):.3f}")
    print(f"video_seconds_per_second={args.minutes * 60 / t_pipe:.1f}")


if __name__ == "__main__":
    main()
