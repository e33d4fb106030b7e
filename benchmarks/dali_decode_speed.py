"""DALI's CPU decoder against PyAV on the same VP9 file (the only codec family DALI's
CPU variant decodes besides VP8 / MJPEG).

Makes a 720p30 VP9 webm with noise (so it compresses like footage), then times, each
as the median of `--repeats` runs and as a ratio to `ffmpeg -threads 2 -f null`
measured in the same run:
  - PyAV, plain: decode every frame (thread_type AUTO), swscale to 224 short side, crop
  - the PyAV backend (vmstream.stages.decode.pyav), every frame and 1 fps, if present
  - the DALI backend on the CPU, every frame and 1 fps

    .venv/bin/python benchmarks/dali_decode_speed.py [--seconds 10] [--repeats 3]

Last lines, one figure each: dali_cpu_fps=N, pyav_fps=N, dali_vs_pyav=X.XX.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import av  # noqa: E402

from vmstream.stages.media import FrameSize  # noqa: E402
from vmstream.stages.sampling import AllFrames, FpsSampling  # noqa: E402
from vmstream.stages.sources import source_from_uri  # noqa: E402


def make_vp9(path: str, seconds: int, w: int, h: int, fps: int) -> None:
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds}",
            "-vf",
            "noise=alls=12:allf=t",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-row-mt",
            "1",
            "-b:v",
            "3M",
            "-g",
            str(2 * fps),
            "-pix_fmt",
            "yuv420p",
            path,
        ],
        check=True,
    )


def timed(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def ffmpeg_null(path: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "2", "-i", path, "-f", "null", "-"],
        check=True,
    )


def pyav_plain(path: str, size: FrameSize) -> int:
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        sw, sh = size.scaled_size(s.codec_context.width, s.codec_context.height)
        x0, y0 = size.crop_box(sw, sh)
        for f in c.decode(s):
            img = f.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="BILINEAR")
            img = img[y0 : y0 + size.height, x0 : x0 + size.width]
            n += 1
    return n


def run_backend(dec, path: str, policy, size: FrameSize) -> int:
    return sum(1 for it in dec.frames(source_from_uri(path), policy, size) if getattr(it, "kind", None) != "end")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="1280x720")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    fps = 30
    size = FrameSize(224, 224)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.webm")
        make_vp9(path, args.seconds, w, h, fps)
        n = args.seconds * fps
        print(
            f"VP9 {w}x{h} {fps} fps, {args.seconds} s ({n} frames), {os.path.getsize(path) / 1e6:.1f} MB; "
            f"median of {args.repeats}; 2-core machine, numbers are noisy"
        )
        rows = []
        t_ff = timed(lambda: ffmpeg_null(path), args.repeats)
        rows.append(("ffmpeg -threads 2 -f null (decode only)", t_ff, n))
        t_pv = timed(lambda: pyav_plain(path, size), args.repeats)
        rows.append(("PyAV plain: all frames -> 224 crop", t_pv, n))
        try:
            from vmstream.stages.decode.pyav import PyAVDecoder
        except ImportError:
            PyAVDecoder = None
        if PyAVDecoder is not None:
            pv = PyAVDecoder()
            rows.append(
                ("PyAV backend: all frames", timed(lambda: run_backend(pv, path, AllFrames(), size), args.repeats), n)
            )
            rows.append(
                ("PyAV backend: 1 fps", timed(lambda: run_backend(pv, path, FpsSampling(1.0), size), args.repeats), n)
            )
        from vmstream.stages.decode.dali import DALIDecoder

        dd = DALIDecoder(device="cpu", num_threads=2)
        t_dali = timed(lambda: run_backend(dd, path, AllFrames(), size), args.repeats)
        rows.append(("DALI CPU backend: all frames", t_dali, n))
        rows.append(
            ("DALI CPU backend: 1 fps", timed(lambda: run_backend(dd, path, FpsSampling(1.0), size), args.repeats), n)
        )
        for name, t, frames in rows:
            print(f"  {name:42s} {t:7.3f} s  {frames / t:7.1f} source-fps  {t_ff / t:5.2f}x ffmpeg")
        print(f"dali_cpu_fps={n / t_dali:.1f}")
        print(f"pyav_fps={n / t_pv:.1f}")
        print(f"dali_vs_pyav={t_pv / t_dali:.2f}")


if __name__ == "__main__":
    main()
