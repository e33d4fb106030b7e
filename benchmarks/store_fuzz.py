"""Seeded fuzz of the FAISS store's files: damaged copies of a small store, each opened
in a subprocess the way users and runs open it, and how each ended.

    .venv/bin/python benchmarks/store_fuzz.py                    # 50 damaged copies, seed 0
    .venv/bin/python benchmarks/store_fuzz.py --cases 200 --seed 7

The store is what a running (or killed) writer leaves: one generation and three
change-log files. Each case damages one of its files (round robin over CURRENT, the
generation's manifest, index, id map and metadata, and the log files) by flipping a run
of bytes, truncating it or deleting it. The subprocess then searches it with `vmstream
search --index DIR --id UID` and opens it for writing as the run's FAISS sink does.

Outcomes: "clear_error" (a one-line StoreCorruptError naming the damage), "clean_run"
(the damage went unnoticed and the results equal the undamaged store's: harmless),
"wrong_result" (unnoticed, and the results differ: silent damage), "traceback" (any
other exception), "hang" (past --timeout). The last three must be zero. The figures are
the last lines, one per line, as store_fuzz_<outcome>=N; exit 1 unless the last three
are zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import contextlib, io, json, sys
from vmstream.cli import main
from vmstream.stages.sinks.faiss_store import FaissSink
from vmstream.store import StoreCorruptError

d, uids = sys.argv[1], json.loads(sys.argv[2])
found = []
for uid in uids:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["search", "--index", d, "--id", str(uid), "-k", "5", "--json"])
    if rc != 0:
        message = err.getvalue().strip()
        lines = message.splitlines()
        if rc == 2 and len(lines) == 1 and "video store" in message:
            print("CLEAR", message)
            sys.exit(3)
        print("SEARCH FAILED", rc, message)
        sys.exit(1)
    found.append([json.loads(line)["uid"] for line in out.getvalue().splitlines()])
try:
    FaissSink(d, use_gpu=False).close()  # the run's writer: opens, compacts, closes
except StoreCorruptError as e:
    print("CLEAR", e)
    sys.exit(3)
print("CLEAN", json.dumps(found))
"""

OUTCOMES = ("clear_error", "clean_run", "wrong_result", "traceback", "hang")


def build_store(path: Path, n: int = 240, dim: int = 32, seed: int = 0) -> list[int]:
    """A store with a generation and three log files; the uids it holds."""
    from vmstream.store import VideoStore

    rng = np.random.default_rng(seed)
    live = path.parent / "live"
    store = VideoStore(live, use_gpu=False)
    uids = np.arange(n, dtype=np.int64) * 7919 + 13
    meta = {
        "stream_id": [f"cam{i % 4}" for i in range(n)],
        "segment_index": list(range(n)),
        "t_start": [2.0 * i for i in range(n)],
        "t_end": [2.0 * i + 2 for i in range(n)],
        "labels": [["walking", "cooking"]] * n,
        "scores": [[0.7, 0.2]] * n,
    }
    for part in np.array_split(np.arange(n), 4):  # a generation, then a log file each
        store.add(uids[part], rng.standard_normal((part.size, dim)), {k: [v[i] for i in part] for k, v in meta.items()})
        store.commit()
    shutil.copytree(live, path)  # as the writer left it mid-run
    store.close()
    return uids.tolist()


def damage(path: Path, rng: np.random.Generator, target: Path) -> str:
    size = target.stat().st_size
    how = rng.choice(["flip", "flip", "truncate", "delete"])
    rel = target.relative_to(path)
    if how == "delete":
        target.unlink()
        return f"delete {rel}"
    if how == "truncate" or size == 0:
        keep = int(rng.integers(0, max(size, 1)))
        target.write_bytes(target.read_bytes()[:keep])
        return f"truncate {rel} to {keep} of {size} bytes"
    data = bytearray(target.read_bytes())
    start = int(rng.integers(0, size))
    n = int(rng.integers(1, 201))
    for i in range(start, min(start + n, size)):
        data[i] ^= int(rng.integers(1, 256))
    target.write_bytes(bytes(data))
    return f"flip {min(n, size - start)} bytes at {start} of {rel} ({size} bytes)"


def store_files(path: Path) -> list[Path]:
    gen = path / (path / "CURRENT").read_text().split()[0]
    return [
        path / "CURRENT",
        *(gen / n for n in ("manifest.json", "index.faiss", "ids.parquet", "meta.json")),
        *sorted(path.glob("wal-*.arrow")),
    ]


def run_case(store: Path, uids: list[int], timeout: float) -> tuple[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run(
            [sys.executable, "-c", CHILD, str(store), json.dumps(uids)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return "hang", f"no answer in {timeout:.0f} s"
    text = (p.stdout + p.stderr).strip()
    if p.returncode == 3 and p.stdout.startswith("CLEAR "):
        return "clear_error", p.stdout[6:].strip()
    if p.returncode == 0 and p.stdout.startswith("CLEAN "):
        return "clean_run", p.stdout[6:].strip()
    return "traceback", text[-2000:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a case may take")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    counts = dict.fromkeys(OUTCOMES, 0)
    with tempfile.TemporaryDirectory(prefix="store_fuzz_") as tmp:
        base = Path(tmp) / "base"
        uids = build_store(base, seed=args.seed)
        probe = [int(u) for u in rng.choice(uids, 3, replace=False)]
        shutil.copytree(base, Path(tmp) / "undamaged")  # the child's writer compacts what it opens
        outcome, baseline = run_case(Path(tmp) / "undamaged", probe, args.timeout)
        if outcome != "clean_run":
            print(f"the undamaged store did not search cleanly ({outcome}): {baseline}", file=sys.stderr)
            return 2
        targets = store_files(base)
        for case in range(args.cases):
            copy = Path(tmp) / f"case-{case:03d}"
            shutil.copytree(base, copy)
            what = damage(copy, rng, copy / targets[case % len(targets)].relative_to(base))
            outcome, detail = run_case(copy, probe, args.timeout)
            if outcome == "clean_run" and detail != baseline:
                outcome = "wrong_result"
            counts[outcome] += 1
            shown = detail if outcome in ("traceback", "hang") else detail.splitlines()[0][:160]
            print(f"case {case:03d} {what}: {outcome}: {shown}", flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    for name in OUTCOMES:
        print(f"store_fuzz_{name}={counts[name]}")
    return 0 if counts["wrong_result"] == counts["traceback"] == counts["hang"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
