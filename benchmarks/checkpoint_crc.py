"""The cost of checking a checkpoint's zip CRC-32s on load (issue 25: flipped bits loaded
silently), against the load itself, measured in the same run on the same file.

The file is written by torch.save with the official VideoMamba-M video-text checkpoint's
size by default (~200 M float32 parameters in ~700 tensors, ~0.8 GB); `--mb` changes it.
Each figure is the median of `--repeats` rounds, the file warm in the page cache (as it is
for every load after the first):

  load_s       torch.load(weights_only=True)
  check_s      check_archive alone (every member's CRC on min(8, cpus) threads)
  check_ratio  check_s / load_s
  digest_s     the sha256 of the file that every load already computes (the card's
               checkpoint_digest), uncached
  check_vs_digest_ratio  check_s / digest_s

    .venv/bin/python benchmarks/checkpoint_crc.py [--mb 800] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmstream.models.archive_check import check_archive  # noqa: E402


def digest_once(path: str) -> None:
    """The sha256 pass of models.hub.file_digest, without its cache."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=800, help="checkpoint size in MB (default 800)")
    ap.add_argument("--tensors", type=int, default=700, help="number of tensors (default 700)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    per = max(1, int(a.mb * 2**20 / 4 / a.tensors))
    g = torch.Generator().manual_seed(0)
    sd = {f"layer{i}.weight": torch.randn(per, generator=g) for i in range(a.tensors)}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ckpt.pth")
        torch.save({"model": sd}, path)
        del sd
        size_mb = os.path.getsize(path) / 2**20
        loads, checks, both = [], [], []
        for _ in range(a.repeats):
            t = time.perf_counter()
            obj = torch.load(path, map_location="cpu", weights_only=True)
            loads.append(time.perf_counter() - t)
            del obj
            t = time.perf_counter()
            assert check_archive(path)
            checks.append(time.perf_counter() - t)
            t = time.perf_counter()
            digest_once(path)
            both.append(time.perf_counter() - t)
    load, check, digest = statistics.median(loads), statistics.median(checks), statistics.median(both)
    print(f"file_mb={size_mb:.0f}")
    print(f"tensors={a.tensors}")
    print(f"load_s={load:.3f}")
    print(f"check_s={check:.3f}")
    print(f"check_mb_per_s={size_mb / check:.0f}")
    print(f"check_ratio={check / load:.2f}")
    print(f"digest_s={digest:.3f}")
    print(f"check_vs_digest_ratio={check / digest:.2f}")
    print(f"cpus={os.cpu_count()}")


if __name__ == "__main__":
    main()
