"""FAISS video store speed: add rate, query latency (p50/p99) and recall@10 against exact
search, per index kind, at 100k and 1M vectors of the model's dimension.

    .venv/bin/python benchmarks/faiss_speed.py                       # 100k and 1M, d=192
    .venv/bin/python benchmarks/faiss_speed.py --sizes 100000 --dims 192 576
    .venv/bin/python benchmarks/faiss_speed.py --quick               # 20k, a smoke run

Everything goes through `VideoStore` (what the pipeline and `vmstream search` use): adds
are upserts in batches with id-map rows, a query is one vector at a time and returns
SearchHits with metadata. `save_s` is a full generation save; `commit_256_ms` what the
sink's flush costs (256 new vectors, logged). The baseline is the exact flat store in the same run; the
ground truth is exact inner product over all vectors (faiss IndexFlatIP).

Data: synthetic but clustered like video embeddings (topics -> videos -> segments, unit
vectors, the true 10th neighbour at cosine ~0.5), not pure noise, so recall means
something. The last lines are JSON, one per (n, dim, kind, setting), prefixed
"faiss_speed ".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from vmstream.store import VideoStore  # noqa: E402
from vmstream.store.index import default_nprobe  # noqa: E402


def clustered(
    n: int,
    d: int,
    seed: int = 0,
    topics: int = 100,
    per_video: int = 20,
    spread_video: float = 1.2,
    spread_segment: float = 1.0,
) -> np.ndarray:
    """Unit vectors: `topics` directions, videos scattered around them, segments around
    their video. Tuned so IVF's nprobe matters and the exact 10th neighbour is at ~0.5."""
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((topics, d), dtype=np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    nv = max(1, n // per_video)
    v = t[rng.integers(0, topics, nv)] + spread_video / np.sqrt(d) * rng.standard_normal((nv, d), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 100_000):  # chunked: 1M x 576 temporaries would double memory
        m = min(n, i + 100_000) - i
        x[i : i + m] = v[rng.integers(0, nv, m)] + spread_segment / np.sqrt(d) * rng.standard_normal(
            (m, d), dtype=np.float32
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def bench_kind(
    kind: str,
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray,
    k: int,
    workdir: Path,
    batch: int,
    train_at,
    threads: int,
) -> list[dict]:
    n, d = x.shape
    path = workdir / f"{kind}-{n}-{d}"
    store = VideoStore(path, kind=kind, dim=d, use_gpu=False, train_at=train_at, threads=threads)
    uids = np.arange(n, dtype=np.int64) * 7919 + 11  # any non-negative ids
    # Real id-map rows, as the pipeline adds them.
    t_add = time.perf_counter()
    train_s = 0.0
    for i in range(0, n, batch):
        j = min(n, i + batch)
        before = store.index_kind
        t0 = time.perf_counter()
        store.add(
            uids[i:j],
            x[i:j],
            {
                "stream_id": [f"video{v // 450}" for v in range(i, j)],
                "segment_index": [v % 450 for v in range(i, j)],
                "t_start": [(v % 450) * 8.0 for v in range(i, j)],
                "t_end": [(v % 450) * 8.0 + 8.0 for v in range(i, j)],
            },
        )
        if (
            before == "flat"
            and store.index_kind != "flat"
            or before is None
            and store.index_kind not in ("flat", "hnsw")
        ):
            train_s = time.perf_counter() - t0  # this batch converted flat -> trained kind
    add_s = time.perf_counter() - t_add
    t0 = time.perf_counter()
    store.save()
    save_s = time.perf_counter() - t0
    size = dir_bytes(path / (path / "CURRENT").read_text().split()[0])
    truth_uids = uids[truth]

    if store.index_kind in ("ivfsq8", "ivfpq"):  # the store's default nprobe for its lists, then 4x
        nlist = faiss.extract_index_ivf(store.index.index).nlist
        settings = [default_nprobe(nlist), min(nlist, 4 * default_nprobe(nlist))]
    elif store.index_kind == "hnsw":
        settings = [64, 128]
    else:
        settings = [None]
    rows = []
    for setting in settings:
        params = {}
        if store.index_kind in ("ivfsq8", "ivfpq"):
            params["nprobe"] = setting
        elif store.index_kind == "hnsw":
            params["ef"] = setting
        for i in range(min(5, len(q))):  # warm up
            store.search(q[i], k, **params)
        lat = []
        found = 0
        for i in range(len(q)):
            t0 = time.perf_counter()
            hits = store.search(q[i], k, **params)
            lat.append(time.perf_counter() - t0)
            found += len({h.uid for h in hits} & set(truth_uids[i].tolist()))
        lat_ms = np.array(lat) * 1e3
        rows.append(
            {
                "n": n,
                "dim": d,
                "kind": kind,
                "index_kind": store.index_kind,
                "setting": (
                    f"nprobe={setting}" if "nprobe" in params else f"ef={setting}" if "ef" in params else "exact"
                ),
                "add_per_s": round(n / add_s),
                "add_per_s_excl_train": round(n / max(1e-9, add_s - train_s)),
                "train_s": round(train_s, 2),
                "save_s": round(save_s, 2),
                "threads": threads,
                "store_mb": round(size / 2**20, 1),
                "queries": len(q),
                "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
                "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
                f"recall@{k}": round(found / truth.size, 4),
            }
        )
        print("  ", rows[-1], flush=True)
    # What the sink does every few segments: add a small batch and make it durable.
    # commit() logs the change instead of rewriting the index (save_s above).
    commit_ms = []
    for r in range(5):
        new = 10**15 + r * 256 + np.arange(256, dtype=np.int64)
        store.add(new, x[r * 256 : (r + 1) * 256])
        t0 = time.perf_counter()
        store.commit()
        commit_ms.append((time.perf_counter() - t0) * 1e3)
    for row in rows:
        row["commit_256_ms"] = round(float(np.median(commit_ms)), 2)
    store.close()
    shutil.rmtree(path, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[192])
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivfsq8", "ivfpq", "hnsw"])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--flat-queries-1m", type=int, default=60, help="exact search is slow per query at 1M")
    ap.add_argument(
        "--hnsw-max",
        type=int,
        default=200_000,
        help="largest n to build HNSW for (its build dominates the 1M run's time)",
    )
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10_000, help="vectors per add (the sink uses 256)")
    ap.add_argument(
        "--train-at", type=int, default=None, help="vectors before an IVF kind is trained (default: the store's, 50k)"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="force faiss threads (default: VideoStore's policy, 1 for small work)"
    )
    ap.add_argument("--quick", action="store_true", help="20k vectors, 100 queries, IVF trained at 10k")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.queries, args.train_at = [20_000], 100, args.train_at or 10_000

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="faiss_speed-"))
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, cpus {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = []
    for d in args.dims:
        for n in args.sizes:
            t0 = time.perf_counter()
            allx = clustered(n + args.queries, d, seed=n + d)
            x, q = allx[:n], allx[n:]
            gt = faiss.IndexFlatIP(d)
            gt.add(x)
            _, truth = gt.search(q, args.k)
            del gt
            print(f"n={n} d={d}: data + exact ground truth in {time.perf_counter() - t0:.1f}s", flush=True)
            for kind in args.kinds:
                if kind == "hnsw" and n > args.hnsw_max:
                    print(f"  hnsw: skipped above --hnsw-max {args.hnsw_max} (graph build ~1.5k vectors/s here)")
                    continue
                nq = (
                    args.queries if not (kind == "flat" and n >= 1_000_000) else min(args.queries, args.flat_queries_1m)
                )
                t0 = time.perf_counter()
                results.extend(
                    bench_kind(kind, x, q[:nq], truth[:nq], args.k, workdir, args.batch, args.train_at, args.threads)
                )
                print(f"  {kind}: {time.perf_counter() - t0:.0f}s", flush=True)
    # Ratios against the exact flat store of the same run.
    for r in results:
        base = next((b for b in results if b["kind"] == "flat" and b["n"] == r["n"] and b["dim"] == r["dim"]), None)
        if base:
            r["speedup_vs_flat_p50"] = round(base["p50_ms"] / r["p50_ms"], 2)
    for r in results:
        print("faiss_speed " + json.dumps(r, sort_keys=True))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
