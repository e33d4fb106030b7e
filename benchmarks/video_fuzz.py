"""Seeded fuzz of the decode path: byte-flipped and truncated mp4 and webm files through
`vmstream run`, each counted as a clear error, a clean run, a traceback or a hang.

Makes small base videos with the ffmpeg CLI (H.264 mp4, one with AAC audio and the
index at the end, and VP9/VP8 webm) and a tiny random checkpoint, then `--count`
damaged copies (seeded): bytes flipped anywhere, in the first or last 4 KiB (where the
containers keep their indexes), or in one burst, in varying numbers; about one in ten
truncated instead. They run in batches (one
directory per `vmstream run`, the way an archive is analysed) under a timeout, and
each file is judged from the run's events Parquet:

    clean        its stream ended "ok" or "truncated" (its results cover what decodes)
    clear_error  it failed with a one-line reason (an "error" event, exit code 1)
    traceback    a Python traceback on stderr for it, or no record of it at all
    hang         its run did not finish within the timeout

A batch with a traceback or a hang is rerun file by file to find which file it was.
The damaged files of every traceback and hang are kept and listed.

    .venv/bin/python benchmarks/video_fuzz.py [--count 200] [--seed 11] [--batch 25] [--timeout 180] [--audio]

Last lines, one figure each: video_fuzz_clear_error=, video_fuzz_clean=,
video_fuzz_traceback=, video_fuzz_hang= (the last two must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"

# name -> ffmpeg arguments after the lavfi inputs; 2 s of a moving pattern at 25 fps.
BASES = {
    "h264.mp4": ["-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-movflags", "+faststart"],
    "h264_aac.mp4": ["-c:v", "libx264", "-g", "12", "-bf", "2", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    "vp9.webm": ["-c:v", "libvpx-vp9", "-g", "25", "-b:v", "200k", "-deadline", "realtime", "-cpu-used", "8"],
    "vp8.webm": ["-c:v", "libvpx", "-g", "12", "-b:v", "200k", "-c:a", "libopus"],
}


def make_bases(root: Path) -> dict[str, bytes]:
    out = {}
    for name, args in BASES.items():
        path = root / name
        audio = "-c:a" in args
        cmd = [
            FFMPEG,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=96x64:rate=25:duration=2",
        ]
        if audio:
            cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2"]
        subprocess.run(cmd + args + ["-t", "2", str(path)], check=True)
        out[name] = path.read_bytes()
    return out


def make_checkpoint(path: Path) -> None:
    import torch

    from vmstream.models import VideoMamba

    torch.manual_seed(0)
    model = VideoMamba(
        img_size=32, patch_size=16, depth=2, embed_dim=32, num_classes=5, num_frames=4, ssm_cfg={"d_state": 8}
    )
    torch.save({"model": model.state_dict()}, path)


def damage(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A damaged copy and a description of what was done."""
    n = len(data)
    kind = rng.choices(["flip", "header", "tail", "burst", "truncate"], weights=[3, 3, 1, 2, 1])[0]
    buf = bytearray(data)
    if kind == "truncate":
        cut = rng.randint(1, n - 1)
        return bytes(buf[:cut]), f"truncated at {cut} of {n}"
    if kind == "burst":
        length = rng.choice([16, 64, 256, 1024, 2048])
        at = rng.randrange(0, max(1, n - length))
        for i in range(at, min(n, at + length)):
            buf[i] = rng.randrange(256)
        return bytes(buf), f"burst of {length} random bytes at {at}"
    count = rng.choice([1, 2, 5, 10, 50, 200]) if kind == "flip" else rng.choice([1, 2, 4, 8, 16])
    # "header": the first 4 KiB (ftyp/moov of a faststart mp4, the EBML header and tracks
    # of a webm); "tail": the last 4 KiB (an mp4's moov written at the end, webm cues).
    lo, hi = (max(0, n - 4096), n) if kind == "tail" else (0, n if kind == "flip" else min(n, 4096))
    spots = sorted(rng.randrange(lo, hi) for _ in range(count))
    for i in spots:
        buf[i] ^= rng.randrange(1, 256)
    return bytes(buf), f"{count} byte(s) flipped in bytes {lo}-{hi} (first at {spots[0]})"


def run_batch(
    files: list[Path], ckpt: Path, out: Path, timeout: float, extra: tuple = ()
) -> tuple[str, dict[str, str], str]:
    """('done' | 'hang', {file: verdict}, stderr) for one `vmstream run` over `files`."""
    d = out.with_suffix(".in")
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.link(f, d / f.name)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "vmstream.cli",
        "run",
        str(d),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--no-progress",
        "--fps",
        "4",
        "--max-streams",
        "2",
        *extra,
    ]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(out.parent))
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return "hang", {}, err
    verdicts = judge(files, d, out, r.returncode, r.stderr)
    return "done", verdicts, r.stderr


def judge(files: list[Path], d: Path, out: Path, code: int, stderr: str) -> dict[str, str]:
    from vmstream.store.results import read_table

    if code not in (0, 1):
        return {f.name: "traceback" for f in files}  # the whole run failed: nothing is judged clean
    try:
        events = read_table(out, "events").to_pylist()
    except Exception:  # noqa: BLE001 - an unreadable result is itself a finding
        return {f.name: "traceback" for f in files}
    by_stream: dict[str, list[dict]] = {}
    for e in events:
        by_stream.setdefault(os.path.basename(e["stream_id"]), []).append(e)
    verdicts = {}
    for f in files:
        evs = by_stream.get(f.name, [])
        ends = [e for e in evs if e["kind"] == "end"]
        errors = [e for e in evs if e["kind"] == "error"]
        reason = json.loads(ends[-1]["details"] or "{}").get("reason", "eof") if ends else None
        if reason in ("eof", "truncated") and not any(
            json.loads(e["details"] or "{}").get("reason") == "non_finite" for e in errors
        ):
            verdicts[f.name] = "clean"
        elif errors or reason == "error":
            messages = [e["message"] for e in errors] + ([ends[-1]["message"]] if ends else [])
            one_line = all(m and "\n" not in m and "Traceback" not in m for m in messages)
            verdicts[f.name] = "clear_error" if one_line else "traceback"
        else:
            verdicts[f.name] = "traceback"  # no record of it: something swallowed it
    if "Traceback" in stderr:
        # Attributed later, file by file; mark the batch's files as suspects.
        verdicts = {name: ("suspect" if v != "traceback" else v) for name, v in verdicts.items()}
    return verdicts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per batch run")
    ap.add_argument("--keep", default=None, help="directory to keep the damaged files of findings in")
    ap.add_argument("--audio", action="store_true", help="also decode the audio tracks (vmstream run --audio)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="video-fuzz-"))
    keep = Path(args.keep) if args.keep else work / "findings"
    t0 = time.time()
    bases = make_bases(work)
    ckpt = work / "tiny.pth"
    make_checkpoint(ckpt)
    rng = random.Random(args.seed)
    names = sorted(bases)
    files, how = [], {}
    cases = work / "cases"
    cases.mkdir()
    for i in range(args.count):
        base = names[i % len(names)]
        data, what = damage(bases[base], rng)
        stem, ext = base.rsplit(".", 1)
        path = cases / f"{i:03d}-{stem}.{ext}"
        path.write_bytes(data)
        files.append(path)
        how[path.name] = f"{base}: {what}"

    extra = ("--audio",) if args.audio else ()
    verdicts: dict[str, str] = {}
    for b in range(0, len(files), args.batch):
        batch = files[b : b + args.batch]
        state, got, err = run_batch(batch, ckpt, work / f"run-{b:03d}", args.timeout, extra)
        if state == "done" and "suspect" not in got.values() and "traceback" not in got.values():
            verdicts.update(got)
            continue
        # Find the file: one run each.
        for f in batch:
            state, one, err = run_batch([f], ckpt, work / f"one-{f.stem}", args.timeout, extra)
            v = "hang" if state == "hang" else one[f.name]
            if v == "suspect":
                v = "traceback"
            verdicts[f.name] = v
            if v in ("traceback", "hang"):
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, keep / f.name)
                tail = "\n".join(err.strip().splitlines()[-6:])
                print(f"{v.upper()}: {f.name} ({how[f.name]})\n{tail}\n", file=sys.stderr)

    counts = Counter(verdicts.values())
    by_kind = Counter((name.rsplit(".", 1)[1], v) for name, v in verdicts.items())
    print(
        f"{len(files)} damaged videos (seed {args.seed}) in {time.time() - t0:.0f} s; "
        f"findings kept in {keep if keep.exists() else '(none)'}"
    )
    for ext in ("mp4", "webm"):
        print(
            f"  {ext}: " + ", ".join(f"{v} {by_kind[(ext, v)]}" for v in ("clear_error", "clean", "traceback", "hang"))
        )
    if not keep.exists():
        shutil.rmtree(work, ignore_errors=True)
    for v in ("clear_error", "clean", "traceback", "hang"):
        print(f"video_fuzz_{v}={counts[v]}")
    return 0 if counts["traceback"] == counts["hang"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
