"""Decoding speed of the PyAV decoder, as ratios to FFmpeg's own plain decode.

Makes a 1080p and a 720p H.264 video (a moving test pattern with temporal noise so it
compresses like real footage, a realistic bitrate, 2 s GOP, B-frames; cached under
~/.cache/vmstream/bench or $VMSTREAM_BENCH_CACHE) and times, in the same run:

  baseline   `ffmpeg -threads 2 -i X -f null -`           (decode only, no conversion)
  full       every frame to 224x224 RGB (our decoder, AllFrames)
  fps1       exact 1 fps sampling: "full" (decode all, pick), "seek", "filter" (default)
  keyframes  1 fps, keyframes only (approximate in time)
  "one decoder" lines: the same with gop_workers=1 (no GOP pool), for comparison

and, for exact 1 fps, two yardsticks of the same job (the baseline above decodes every
picture and converts none, so it is not the same job):

  ffmpeg fps=1   `ffmpeg -threads 2 -i X -vf fps=1,scale=224:224 -pix_fmt rgb24 -f null -`:
                 FFmpeg itself sampling 1 fps to the same output size (it decodes every
                 picture and drops the rest)
  needed-only    the limit of decoding only the pictures the samples need: per GOP, the
                 packets in decode order up to the last sampled picture (a B-frame's
                 references come before it in decode order), counted from the container,
                 priced at FFmpeg's own decode time per picture from the baseline runs

`--file PATH` times another file too (e.g. archive_hour.py's cached 1080p file); its
lines are printed, the machine-readable ones stay the generated 1080p video's.

Speeds are source frames covered per second of wall time (medians of --repeats runs).
Each of our runs is compared with the ffmpeg runs on either side of it and a ratio is
the median over runs, so load that comes and goes hits both sides; a CPU-time ratio
(insensitive to other processes) is printed beside it as a cross-check.
The last lines are machine-readable (1080p figures):

  full_decode_ratio=X.XX  fps1_ratio=X.XX  keyframes_ratio=X.XX  hour_1080p_1fps_seconds=N
  fps1_vs_ffmpeg_fps1=X.XX  fps1_needed_fraction=X.XX  fps1_vs_needed_limit=X.XX
  (ratios > 1: ours is faster; fps1_vs_needed_limit <= 1 by construction, up to noise)

    .venv/bin/python benchmarks/decode_speed.py [--seconds 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmstream.records import Frame  # noqa: E402
from vmstream.stages.decode.pyav import PyAVDecoder  # noqa: E402
from vmstream.stages.media import FrameSize  # noqa: E402
from vmstream.stages.sampling import AllFrames, FpsSampling  # noqa: E402
from vmstream.stages.sources import source_from_uri  # noqa: E402

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FPS = 30
VIDEOS = {  # name: (width, height, bitrate)
    "1080p": (1920, 1080, "8M"),
    "720p": (1280, 720, "4M"),
}


def cache_dir() -> str:
    d = os.environ.get("VMSTREAM_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vmstream", "bench")
    os.makedirs(d, exist_ok=True)
    return d


def make_video(name: str, seconds: int) -> str:
    w, h, rate = VIDEOS[name]
    path = os.path.join(cache_dir(), f"decode_{name}_{seconds}s_gop2s.mp4")
    if os.path.exists(path):
        return path
    tmp = path + ".part.mp4"
    print(f"making {path} (once) ...", flush=True)
    subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={w}x{h}:rate={FPS}:duration={seconds}",
            "-vf",
            "noise=alls=12:allf=t",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-b:v",
            rate,
            "-maxrate",
            rate,
            "-bufsize",
            rate,
            "-x264-params",
            f"keyint={2 * FPS}:min-keyint={2 * FPS}:scenecut=0:bframes=3",
            "-pix_fmt",
            "yuv420p",
            tmp,
        ],
        check=True,
    )
    os.replace(tmp, path)
    return path


def _cpu(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def time_ffmpeg(path: str) -> tuple[float, float]:
    """(wall, CPU) seconds of FFmpeg's plain decode."""
    c, t = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(
        [FFMPEG, "-nostdin", "-loglevel", "error", "-threads", "2", "-i", path, "-f", "null", "-"], check=True
    )
    return time.perf_counter() - t, _cpu(resource.RUSAGE_CHILDREN) - c


def time_ffmpeg_fps1(path: str, size: int = 224) -> tuple[float, float]:
    """(wall, CPU) seconds of FFmpeg doing exact 1 fps sampling to size x size RGB."""
    c, t = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-loglevel",
            "error",
            "-threads",
            "2",
            "-i",
            path,
            "-vf",
            f"fps=1,scale={size}:{size}",
            "-pix_fmt",
            "rgb24",
            "-f",
            "null",
            "-",
        ],
        check=True,
    )
    return time.perf_counter() - t, _cpu(resource.RUSAGE_CHILDREN) - c


def _is_reference(data: bytes, length_size: int) -> bool:
    """H.264 in MP4 (AVCC: length-prefixed NAL units): does any slice of this picture have
    nal_ref_idc != 0 (other pictures may be predicted from it)? Unknown counts as yes."""
    i, seen = 0, False
    while i + length_size < len(data):
        size = int.from_bytes(data[i : i + length_size], "big")
        if size <= 0:
            break
        h = data[i + length_size]
        if h & 0x1F in (1, 2, 5):  # coded slice, slice partition A, IDR slice
            if h & 0x60:
                return True
            seen = True
        i += length_size + size
    return not seen


def needed_pictures(path: str, fps: float = 1.0) -> tuple[int, int]:
    """(pictures that must be decoded to produce the 1 fps samples, pictures in the file).

    The sample for target time t is the first picture shown at or after t (what exact
    sampling picks). Decoding restarts at each keyframe; within a GOP, the reference
    pictures in decode order up to the last sampled picture's packet must be decoded (any
    of them may be a link in a sample's chain), and the samples themselves; non-reference
    pictures that are not samples, and everything after the last sample, need not be."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        ed = bytes(s.codec_context.extradata or b"")
        if s.codec_context.name != "h264" or len(ed) < 7 or ed[0] != 1:
            raise SystemExit(f"{path}: the needed-pictures count reads H.264 in MP4 (avcC) only")
        ls = (ed[4] & 0x03) + 1
        pkts = [(p.pts, p.is_keyframe, _is_reference(bytes(p), ls)) for p in c.demux(s) if p.pts is not None and p.size]
        tb = float(s.time_base)
    shown = sorted(pts for pts, _, _ in pkts)
    first, last = shown[0] * tb, shown[-1] * tb
    chosen, k, i = set(), 0, 0
    while first + k / fps <= last:
        t = first + k / fps
        while i < len(shown) and shown[i] * tb < t - 1e-9:
            i += 1
        if i < len(shown):
            chosen.add(shown[i])
        k += 1
    needed, gop = 0, []
    for pts, key, ref in pkts + [(None, True, True)]:
        if key and gop:
            hits = [j for j, (p, _) in enumerate(gop) if p in chosen]
            if hits:
                needed += sum(1 for p, r in gop[: hits[-1] + 1] if r or p in chosen)
            gop = []
        if pts is not None:
            gop.append((pts, ref))
    return needed, len(pkts)


def time_ours(path: str, policy, mode: str = "auto", workers: int = 2) -> tuple[float, float, int]:
    """(wall, CPU, frames out) of our decoder (this process, all its threads)."""
    dec = PyAVDecoder(exact_mode=mode, gop_workers=workers)
    src = source_from_uri(path)
    size = FrameSize(224, 224)
    c, t = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    n = 0
    for item in dec.frames(src, policy, size):
        if isinstance(item, Frame):
            n += 1
    return time.perf_counter() - t, _cpu(resource.RUSAGE_SELF) - c, n


def bench(path: str, n_frames: int, repeats: int):
    """Per case: source fps (median), wall ratio to ffmpeg, CPU ratio, frames out.

    Runs go ffmpeg, ours, ffmpeg, ours, ... ending with ffmpeg; each of our runs is
    compared with the mean of the ffmpeg runs on either side of it, and a case's ratio is
    the median over its runs, so load that comes and goes hits both sides. The CPU
    ratio (FFmpeg's CPU seconds over ours) does not depend on other load at all."""
    cases = {
        "full": (AllFrames(), "auto", 2),
        "full_one": (AllFrames(), "auto", 1),
        "fps1_decode_all": (FpsSampling(1), "full", 2),
        "fps1_seek": (FpsSampling(1), "seek", 2),
        "fps1_filter": (FpsSampling(1), "filter", 2),
        "fps1_filter_one": (FpsSampling(1), "filter", 1),
        "keyframes": (FpsSampling(1, keyframes_only=True), "auto", 2),
    }
    order = [k for _ in range(repeats) for k in cases]
    base = [time_ffmpeg(path)]
    ours = []
    for k in order:
        pol, mode, workers = cases[k]
        ours.append((k, *time_ours(path, pol, mode, workers)))
        base.append(time_ffmpeg(path))
    fps, ratio, cpu_ratio, outs = {}, {}, {}, {}
    for k in cases:
        runs = [(i, w, c, n) for i, (kk, w, c, n) in enumerate(ours) if kk == k]
        fps[k] = n_frames / statistics.median(w for _, w, _, _ in runs)
        ratio[k] = statistics.median((base[i][0] + base[i + 1][0]) / 2 / w for i, w, _, _ in runs)
        cpu_ratio[k] = statistics.median((base[i][1] + base[i + 1][1]) / 2 / c for i, _, c, _ in runs)
        outs[k] = runs[-1][3]
    fps["ffmpeg"] = n_frames / statistics.median(w for w, _ in base)
    # FFmpeg doing the same job as fps1_filter, interleaved with more of ours.
    same, ours_again = [], []
    for _ in range(repeats):
        same.append(time_ffmpeg_fps1(path))
        ours_again.append(time_ours(path, *cases["fps1_filter"])[0])
    fps["ffmpeg_fps1"] = n_frames / statistics.median(w for w, _ in same)
    # Paired, as above: each of FFmpeg's 1 fps runs over the run of ours right after it.
    ratio["ffmpeg_fps1"] = statistics.median(s[0] / o for s, o in zip(same, ours_again))
    cpu_ratio["ffmpeg_fps1"] = float("nan")
    # The limit: only the needed pictures, at FFmpeg's decode time per picture, so its
    # time over ours is the needed fraction times the paired plain-decode ratio above.
    needed, total = needed_pictures(path)
    ratio["needed_fraction"] = needed / total
    ratio["needed_limit"] = ratio["needed_fraction"] * ratio["fps1_filter"]
    fps["needed_limit"] = fps["ffmpeg"] / ratio["needed_fraction"]
    return fps, ratio, cpu_ratio, outs


def describe_video(path: str) -> tuple[int, str]:
    """(frame count, 'High profile, B-frames, 8.0 Mbit/s')."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        secs = float(s.duration * s.time_base) if s.duration else 0.0
        mbit = os.path.getsize(path) * 8 / 1e6 / secs if secs else 0.0
        bf = "B-frames" if cc.has_b_frames else "no B-frames"
        return int(s.frames), f"{cc.profile} profile, {bf}, {mbit:.1f} Mbit/s, {secs:.0f} s"


def report(name: str, path: str, repeats: int):
    n, what = describe_video(path)
    load = os.getloadavg()[0]
    fps, ratio, cpu_ratio, outs = bench(path, n, repeats)
    print(
        f"\n{name} ({what}; load {load:.2f} -> {os.getloadavg()[0]:.2f}): source frames per second, "
        f"wall-time ratio to ffmpeg, CPU-time ratio"
    )
    print(f"  {'ffmpeg -f null (baseline)':34s} {fps['ffmpeg']:8.0f}   1.00x   1.00x")
    labels = {
        "full": "full decode -> 224x224 RGB",
        "full_one": "  the same, one decoder",
        "fps1_decode_all": "1 fps exact, decode all",
        "fps1_seek": "1 fps exact, seek/skip GOPs",
        "fps1_filter": "1 fps exact, packet filter",
        "fps1_filter_one": "  the same, one decoder",
        "keyframes": "1 fps keyframes only (approx.)",
    }
    for k, label in labels.items():
        print(f"  {label:34s} {fps[k]:8.0f}   {ratio[k]:4.2f}x   {cpu_ratio[k]:4.2f}x   ({outs[k]} frames out)")
    print("  1 fps exact against the same job: source frames per second, our packet-filter 1 fps time over it")
    print(
        f"  {'ffmpeg -vf fps=1,scale=224:224':34s} {fps['ffmpeg_fps1']:8.0f}   ours {ratio['ffmpeg_fps1']:4.2f}x faster"
    )
    print(
        f"  {'needed pictures only (the limit)':34s} {fps['needed_limit']:8.0f}   ours at "
        f"{ratio['needed_limit']:4.2f}x of it ({ratio['needed_fraction']:.0%} of the pictures decoded)"
    )
    return fps, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="length of the test videos")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--only", choices=sorted(VIDEOS), help="one resolution only")
    ap.add_argument("--file", help="also time this video (its lines only; not the machine-readable ones)")
    args = ap.parse_args()
    if args.seconds < 4 or args.repeats < 1:
        ap.error("--seconds >= 4 and --repeats >= 1")
    if args.file and not os.path.isfile(args.file):
        ap.error(f"--file {args.file}: no such file")
    import av

    print(
        f"PyAV {av.__version__} (FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}); "
        f"baseline: {FFMPEG} -threads 2 -f null; {os.cpu_count()} CPUs; "
        f"{args.seconds}s videos at {FPS} fps, 2 s GOP, median of {args.repeats}"
    )
    results = {}
    for name in [args.only] if args.only else list(VIDEOS):
        results[name] = report(name, make_video(name, args.seconds), args.repeats)
    if args.file:
        report(os.path.basename(args.file), args.file, args.repeats)
    fps, ratio = results.get("1080p") or next(iter(results.values()))
    # An hour of 1080p30 at the measured 1 fps speed (median source fps).
    hour = 3600 * FPS / fps["fps1_filter"]
    print(
        f"\nestimate: a 1-hour 1080p30 video at exact 1 fps takes {hour:.0f} s "
        f"({3600 / hour:.1f}x real time) on this machine"
    )
    print(f"full_decode_ratio={ratio['full']:.2f}")
    print(f"fps1_ratio={ratio['fps1_filter']:.2f}")
    print(f"keyframes_ratio={ratio['keyframes']:.2f}")
    print(f"hour_1080p_1fps_seconds={hour:.0f}")
    print(f"fps1_vs_ffmpeg_fps1={ratio['ffmpeg_fps1']:.2f}")
    print(f"fps1_needed_fraction={ratio['needed_fraction']:.2f}")
    print(f"fps1_vs_needed_limit={ratio['needed_limit']:.2f}")


if __name__ == "__main__":
    main()
