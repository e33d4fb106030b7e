"""Per-segment log-mel audio features: how fast, against decoding the audio alone.

Makes a 5-minute 48 kHz stereo AAC track (tone plus noise) and times, median of
`--repeats`: PyAV decode + resample to 16 kHz mono alone (the floor), and the whole
`AudioFeatures` stage over 16 s segments (decode, resample, torchaudio mel, summaries).

    .venv/bin/python benchmarks/audio_features_speed.py [--seconds 300] [--repeats 3]

Last lines, one figure each: audio_x_realtime=N, audio_vs_decode=X.XX (stage time /
decode-only time).
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

from vmstream.records import Segment  # noqa: E402
from vmstream.stages.audio import AudioFeatures, PyAVAudioReader  # noqa: E402


def timed(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "audio.m4a")
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
                f"aevalsrc='0.3*sin(2*PI*440*t)+0.05*(random(0)-0.5)|0.3*sin(2*PI*660*t)':s=48000:d={args.seconds}",
                "-c:a",
                "aac",
                "-b:a",
                "128k",
                path,
            ],
            check=True,
        )

        def decode_only():
            r = PyAVAudioReader(path, 16000)
            try:
                for _ in r.chunks():
                    pass
            finally:
                r.close()

        segs = [(16.0 * i, 16.0 * i + 16.0) for i in range(args.seconds // 16)]

        def stage():
            items = [Segment("s", i, a, b, None, uri=path) for i, (a, b) in enumerate(segs)]
            for _ in AudioFeatures().run(items):
                pass

        t_dec = timed(decode_only, args.repeats)
        t_all = timed(stage, args.repeats)
        print(f"{args.seconds} s of 48 kHz stereo AAC, {len(segs)} segments of 16 s, median of {args.repeats}")
        print(f"  decode + resample only   {t_dec:6.2f} s  {args.seconds / t_dec:7.0f}x realtime")
        print(f"  AudioFeatures stage      {t_all:6.2f} s  {args.seconds / t_all:7.0f}x realtime")
        print(f"audio_x_realtime={args.seconds / t_all:.0f}")
        print(f"audio_vs_decode={t_all / t_dec:.2f}")


if __name__ == "__main__":
    main()
