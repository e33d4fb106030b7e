"""Search-by-text speed on this machine's CPU (issue 12, "Speed").

Prints:
  * text encoding (the video-text model's BERT-base text encoder + text_proj, random
    weights: speed does not depend on them) in queries/s at batch 1 and 64, 16 tokens a
    query (a caption's length); with $VMSTREAM_BERT_VOCAB set, tokenization is included;
  * search latency p50/p99 (k=10, one query at a time) and recall@10 of the IVF store
    against exact search, at each `--sizes` of stored 512-d joint-space embeddings
    (unnormalised means of unit vectors, clustered like video segments, inner product);
  * the video-text vision encoder (VideoMamba-M, 32 layers, 576 wide) ms per 8x224x224
    segment, batch 1, state carried, and its matmul efficiency computed as in
    `model_speed.py`: (time of the segment's matmuls in isolation, torch.matmul on the same
    shapes) / (segment time).

    .venv/bin/python benchmarks/text_search_speed.py                 # 100k and 1M stored
    .venv/bin/python benchmarks/text_search_speed.py --quick         # 20k and 100k, fewer repeats

The last lines are machine-readable, one figure each.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmstream.models import VideoTextMamba  # noqa: E402
from vmstream.store import VideoStore  # noqa: E402

D_JOINT = 512
TEXT_LEN = 16
FRAMES = 8
IMG = 224


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ text encoding


def text_speed(model: VideoTextMamba, batch: int, repeats: int) -> float:
    """Queries per second at `batch` queries a call."""
    vocab = os.environ.get("VMSTREAM_BERT_VOCAB")
    if vocab:
        from vmstream.models.tokenizer import BertTokenizer

        tok = BertTokenizer(vocab)
        texts = ["a man in a red shirt throws a frisbee to his dog in the park"] * batch

        def run():
            b = tok(texts)
            model.encode_text(b.input_ids, b.attention_mask)
    else:
        ids = torch.randint(1000, 30000, (batch, TEXT_LEN))
        ids[:, 0], ids[:, -1] = 101, 102

        def run():
            model.encode_text(ids, torch.ones_like(ids))

    with torch.inference_mode():
        return batch / median_time(run, repeats)


# ------------------------------------------------------------------------- search


def segment_embeddings(n: int, seed: int = 0, topics: int = 100, per_video: int = 20) -> np.ndarray:
    """Means over 8 frames of unit vectors scattered around video and topic directions:
    what a video-text store holds (norms below 1, clustered)."""
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((topics, D_JOINT), dtype=np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    nv = max(1, n // per_video)
    v = t[rng.integers(0, topics, nv)] + 1.2 / math.sqrt(D_JOINT) * rng.standard_normal((nv, D_JOINT), np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x = np.empty((n, D_JOINT), np.float32)
    for i in range(0, n, 50_000):
        m = min(n, i + 50_000) - i
        centre = v[rng.integers(0, nv, m)]
        acc = np.zeros((m, D_JOINT), np.float32)
        for _ in range(FRAMES):
            f = centre + 1.0 / math.sqrt(D_JOINT) * rng.standard_normal((m, D_JOINT), np.float32)
            acc += f / np.linalg.norm(f, axis=1, keepdims=True)
        x[i : i + m] = acc / FRAMES
    return x


def build_store(path: Path, x: np.ndarray, columns=None) -> VideoStore:
    """The benchmark's store of `x` (ivfsq8, inner product), ids 0..n-1; `columns(ids)`
    gives their id-map columns (default: one stream "s", segment index = id). Also what
    `serve_speed.py` serves."""
    n = x.shape[0]
    store = VideoStore(path, dim=D_JOINT, kind="ivfsq8", metric="ip", train_at=min(n, 200_000), use_gpu=False)
    for i in range(0, n, 100_000):
        ids = np.arange(i, min(n, i + 100_000), dtype=np.int64)
        meta = columns(ids) if columns else {"stream_id": ["s"] * len(ids), "segment_index": ids.tolist()}
        store.add(ids, x[ids], meta)
    return store


def search_speed(n: int, n_queries: int, workdir: Path) -> dict:
    x = segment_embeddings(n)
    rng = np.random.default_rng(1)
    q = x[rng.integers(0, n, n_queries)] + 0.02 * rng.standard_normal((n_queries, D_JOINT), np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]  # exact inner product
    t0 = time.perf_counter()
    store = build_store(workdir / f"s{n}", x)
    add_s = time.perf_counter() - t0
    lat, found = [], 0
    for j in range(n_queries):
        t0 = time.perf_counter()
        hits = store.search(q[j], 10)
        lat.append(time.perf_counter() - t0)
        found += len({h.uid for h in hits} & set(truth[j].tolist()))
    store.close()
    lat_ms = np.array(lat) * 1e3
    return {
        "n": n,
        "add_s": add_s,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "recall": found / truth.size,
    }


# ------------------------------------------------------------------ vision segment


def vision_matmul_shapes(T=FRAMES, embed=576, depth=32, d_state=16, patch=16, embed_joint=D_JOINT):
    """(M, K, N, count) of every matmul of one segment of the video-text vision encoder."""
    n_patch = (IMG // patch) ** 2
    L = 1 + T * n_patch
    d_inner, dt_rank = 2 * embed, math.ceil(embed / 16)
    return [
        ("patch_embed", T * n_patch, 3 * patch * patch, embed, 1),
        ("in_proj", L, embed, 2 * d_inner, depth),
        ("x_proj", L, d_inner, dt_rank + 2 * d_state, 2 * depth),
        ("dt_proj", L, dt_rank, d_inner, 2 * depth),
        ("out_proj", L, d_inner, embed, depth),
        ("vision_proj", T, embed, embed_joint, 1),
    ]


def time_matmuls(shapes, repeats: int) -> float:
    total = 0.0
    for _, m, k, n, count in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        total += median_time(lambda a=a, b=b: torch.matmul(a, b), max(repeats, 5), warmup=2) * count
    return total


def segment_ms(model: VideoTextMamba, repeats: int) -> float:
    clip = torch.randn(1, 3, FRAMES, IMG, IMG)
    state = {"s": model.init_state(1)}

    def run():
        state["s"] = model.forward_segment(clip, state["s"]).state

    with torch.inference_mode():
        return median_time(run, repeats) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="stored vectors, comma separated")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in ("20000,100000" if args.quick else args.sizes).split(",")]
    repeats = 2 if args.quick else args.repeats
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")

    model = VideoTextMamba().eval()  # the official VideoMamba-M + BERT-base shapes, random weights
    qps1 = text_speed(model, 1, max(5, 4 * repeats))
    qps64 = text_speed(model, 64, repeats)
    print(f"text encoding ({TEXT_LEN} tokens): batch 1 {qps1:.1f} queries/s, batch 64 {qps64:.1f} queries/s")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = search_speed(n, args.queries, Path(tmp))
            results[n] = r
            print(
                f"search {n:>9,d} stored (ivfsq8, ip): p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"recall@10 vs exact {r['recall']:.3f} (added in {r['add_s']:.1f} s)"
            )

    seg = segment_ms(model, repeats)
    shapes = vision_matmul_shapes()
    t_mm = time_matmuls(shapes, repeats)
    gmacs = sum(m * k * n * c for _, m, k, n, c in shapes) / 1e9
    eff = t_mm * 1e3 / seg
    print(
        f"video-text vision segment {FRAMES}x{IMG}: {seg:.0f} ms ({2 * gmacs / seg * 1e3:.1f} GFLOP/s; its "
        f"{gmacs:.1f} G MACs of matmuls take {t_mm * 1e3:.0f} ms alone) -> matmul_efficiency {eff:.3f}"
    )

    big = max(results)
    print(f"text_queries_per_s_b64={qps64:.1f}")
    print(f"search_p99_ms_1m={results[big]['p99_ms']:.3f}" + ("" if big >= 1_000_000 else f"  # at {big} stored"))
    print(f"recall_at_10_1m={results[big]['recall']:.4f}" + ("" if big >= 1_000_000 else f"  # at {big} stored"))
    print(f"mm_segment_ms_f8={seg:.1f}")
    print(f"mm_matmul_efficiency={eff:.3f}")


if __name__ == "__main__":
    main()
