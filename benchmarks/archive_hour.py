"""What an hour of archive costs on this machine: `vmstream run` at 1 fps on 1080p footage
as cameras and archives record it, end to end, fp32 and bf16 (issue 15, "the user's figure").

    .venv/bin/python benchmarks/archive_hour.py              # the 10-minute file of record
    .venv/bin/python benchmarks/archive_hour.py --minutes 2  # shorter, when time is short

Makes once (cached under ~/.cache/vmstream/bench or $VMSTREAM_BENCH_CACHE) a 1080p30
H.264 file the way cameras and archive encoders write it: High profile, B-frames (3),
about 8 Mbps (capped, 1 s buffer), a 2 s GOP with no scene-cut keyframes, noise so it
compresses like real footage. And a Ti-16 checkpoint with random weights (K400's 400
classes). Then, for each precision:

  run          `python -m vmstream run FILE --fps 1 --checkpoint TI16 --precision P
               --max-streams 1 --no-progress --out DIR` in a child process: the user's
               command, sinks included (Parquet, FAISS, the console timeline), start-up
               (imports, model load) included;
  decode alone the run's decoder and segmenter with no model;
  model alone  InferenceStage over those segments, one at a time, state carried;
  sinks alone  Parquet + FAISS writing those results.

  start-up     the same command on the file's first 2 seconds (cut without re-encoding):
               imports, kernel and model load, probe, one segment, sinks opened and closed.

It prints each, the projection of the run to one hour of video, and the stages' sum beside
it. The runner overlaps the stages, but on a CPU-only machine decoding and the model share
the cores, so the sum is the yardstick. The hour is projected as a linear cost: the
start-up once, plus the run's cost per second of video beyond it,
    hour = short + (run - short) / (length - 2 s) x (3600 s - 2 s),
because an hour of archive (one long file, or a folder in one `vmstream run`) starts the
process once. The plain scaling (run x 60 / minutes, which counts the start-up six times
for a 10-minute file) is printed beside it.
Last lines are machine-readable: `hour_1080p_1fps_seconds_fp32=`, `..._bf16=`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmstream.models import create_model  # noqa: E402
from vmstream.models.precision import bf16_is_native, set_precision  # noqa: E402
from vmstream.pipeline.assembly import build_plan, build_sinks  # noqa: E402
from vmstream.pipeline.config import load_config  # noqa: E402
from vmstream.records import Segment, SegmentResult  # noqa: E402
from vmstream.stages.inference import InferenceStage  # noqa: E402
from vmstream.stages.sources import resolve_sources  # noqa: E402

CACHE = Path(os.environ.get("VMSTREAM_BENCH_CACHE", Path.home() / ".cache" / "vmstream" / "bench"))
FPS_IN, GOP_S, RATE = 30, 2, "8M"


def make_video(minutes: float) -> Path:
    path = CACHE / f"archive_{minutes:g}min_1080p30_high_bframes_8M_gop2s.mp4"
    if path.exists():
        return path
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        sys.exit("archive_hour needs the ffmpeg CLI (with libx264) to make its test video")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    keyint = GOP_S * FPS_IN
    print(f"making {path} (once; minutes of encoding) ...", flush=True)
    subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size=1920x1080:rate={FPS_IN}:duration={minutes * 60:g}",
            "-vf",
            "noise=alls=12:allf=t",
            "-c:v",
            "libx264",
            "-profile:v",
            "high",
            "-preset",
            "veryfast",
            "-b:v",
            RATE,
            "-maxrate",
            RATE,
            "-bufsize",
            RATE,
            "-x264-params",
            f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=3",
            "-pix_fmt",
            "yuv420p",
            str(tmp),
        ],
        check=True,
    )
    os.replace(tmp, path)
    return path


SHORT_S = 2.0


def make_short(video: Path) -> Path:
    """The first SHORT_S seconds of `video`, stream-copied (the same bitstream)."""
    path = video.with_name(video.stem + f"_first{SHORT_S:g}s.mp4")
    if not path.exists():
        tmp = path.with_suffix(".part.mp4")
        subprocess.run(
            [
                shutil.which("ffmpeg") or "ffmpeg",
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(video),
                "-t",
                f"{SHORT_S:g}",
                "-c",
                "copy",
                str(tmp),
            ],
            check=True,
        )
        os.replace(tmp, path)
    return path


def make_checkpoint() -> Path:
    path = CACHE / "videomamba_ti16_k400_random_seed0.pth"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = create_model("videomamba_tiny", num_frames=16, num_classes=400)
        torch.save({"model": model.state_dict()}, path.with_suffix(".part"))
        os.replace(path.with_suffix(".part"), path)
    return path


def run_cli(video: Path, ckpt: Path, precision: str, fps: float, gop_workers: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "vmstream.cli",
            "run",
            str(video),
            "--fps",
            f"{fps:g}",
            "--checkpoint",
            str(ckpt),
            "--precision",
            precision,
            "--max-streams",
            "1",
            "--no-progress",
            "--out",
            out,
            "--set",
            f"decode.gop_workers={gop_workers}",
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"vmstream run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return wall, res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""


def stages_alone(video: Path, precision: str, fps: float, gop_workers: int) -> dict:
    """decode, model and sinks each alone, built from the same config as the run."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            overrides={
                "model": {"name": None, "precision": precision},
                "decode": {"fps": fps, "gop_workers": gop_workers},
                "output": {"dir": out, "console": False},
                "runner": {"progress": False, "max_streams": 1},
            }
        )
        torch.manual_seed(0)
        model = create_model("videomamba_tiny", num_frames=16, num_classes=400).eval()
        if precision != "fp32":
            set_precision(model, precision)
        (src,) = resolve_sources([str(video)])
        plan = build_plan(cfg, model)
        t0 = time.perf_counter()
        segs = [
            s
            for s in plan.segmenter_factory(src).segments(plan.decoder.frames(src, plan.policy, plan.size), uri=src.uri)
            if isinstance(s, Segment)
        ]
        t_decode = time.perf_counter() - t0
        stage = InferenceStage(model)
        stage.process([Segment("warm", 0, 0.0, 0.0, segs[0].pixels)])  # kernels loaded off the clock
        stage.drop("warm")
        t0 = time.perf_counter()
        results = [r for s in segs for r in stage.process([s]) if isinstance(r, SegmentResult)]
        t_model = time.perf_counter() - t0
        sinks = build_sinks(cfg, model)
        t0 = time.perf_counter()
        for s in sinks:
            begin = getattr(s, "begin_stream", None)
            if begin is not None:
                begin(src.stream_id, "bench", replace=True)
        for r in results:
            for s in sinks:
                s.write(r)
        for s in sinks:
            s.flush()
            s.close()
        t_sinks = time.perf_counter() - t0
    return {"decode": t_decode, "model": t_model, "sinks": t_sinks, "segments": len(segs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10, help="length of the test file (10 is the figure of record)")
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument(
        "--gop-workers",
        default="2",
        help="decode.gop_workers values to run, e.g. 2,1 (the GOP pool against one decoder); "
        "the machine-readable lines are the first value's",
    )
    args = ap.parse_args()
    pools = [int(w) for w in args.gop_workers.split(",")]
    video, ckpt = make_video(args.minutes), make_checkpoint()
    short = make_short(video)
    print(
        f"# {video.name}: {args.minutes:g} min 1080p30 H.264 High, B-frames, {RATE}bps, {GOP_S} s GOP; "
        f"Ti-16 random weights; {args.fps:g} fps; torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"native bf16 {bf16_is_native()}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if args.minutes != 10:
        print(f"# a {args.minutes:g}-minute run, not the 10-minute file of record: the hour is projected from it")
    hours = {}
    for prec, workers in itertools.product(args.precisions.split(","), pools):
        tag = prec if len(pools) == 1 else f"{prec}, gop_workers={workers}"
        wall, last = run_cli(video, ckpt, prec, args.fps, workers)
        start, _ = run_cli(short, ckpt, prec, args.fps, workers)
        alone = stages_alone(video, prec, args.fps, workers)
        total = alone["decode"] + alone["model"] + alone["sinks"]
        length = args.minutes * 60
        hour = start + (wall - start) / (length - SHORT_S) * (3600 - SHORT_S)
        hours.setdefault(prec, hour)
        print(
            f"[{tag}] vmstream run: {wall:.1f} s for {args.minutes:g} min ({alone['segments']} segments); "
            f"{start:.1f} s for its first {SHORT_S:g} s (start-up) -> {hour:.0f} s = {hour / 60:.2f} min per hour "
            f"of video (plain x{60 / args.minutes:g} scaling: {wall * 60 / args.minutes:.0f} s); report: {last}"
        )
        print(
            f"[{tag}] stages alone: decode {alone['decode']:.1f} s + model {alone['model']:.1f} s "
            f"({alone['model'] / max(1, alone['segments']) * 1e3:.0f} ms/segment) + sinks {alone['sinks']:.2f} s "
            f"= {total:.1f} s; run / sum {wall / total:.2f} (load average {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    for prec, secs in hours.items():
        print(f"hour_1080p_1fps_seconds_{prec}={secs:.0f}")


if __name__ == "__main__":
    main()
