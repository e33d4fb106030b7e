"""`vmstream index` speed: segments from Kafka into the one store, FAISS and Milvus.

    .venv/bin/python benchmarks/index_speed.py [--bootstrap HOST:PORT] [--n 10000] [--dim 576]

- throughput: --n segment results (plus a summary per stream) are written to the
  results topics by the workers' sink (KafkaSink), timed: the producer's rate, the
  baseline. Then an indexer consumes them into a fresh store, timed from its start to
  the commit that holds the last one: `index_segments_per_s` for FAISS and for Milvus
  (milvus-lite, embedded: a Milvus server's ingest is the cluster's, see docs/design.md),
  and each against the producer's rate (`index_vs_producer`);
- lag: the indexer follows the topics while a producer writes segments at a steady
  --rate for --seconds; a segment's lag is from its production (its Kafka timestamp) to
  the commit that makes it searchable: `index_lag_p50_s`, `index_lag_p99_s` (default
  commit interval, 1 s).

Without --bootstrap it starts a private broker in a temp dir and removes it afterwards.
The last lines are machine-readable `key=value` lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vmstream.kafka.topics import TopicNames, delete_topics, ensure_topics, vmstream_topics  # noqa: E402
from vmstream.pipeline.config import load_config  # noqa: E402
from vmstream.pipeline.indexer import Indexer  # noqa: E402
from vmstream.records import SegmentResult, StreamSummary  # noqa: E402
from vmstream.stages.sinks.kafka import KafkaSink  # noqa: E402


def segments(n: int, dim: int, streams: int, tag: str, start: int = 0) -> list:
    rng = np.random.default_rng(start)
    emb = rng.standard_normal((256, dim)).astype(np.float32)
    out = []
    for i in range(start, start + n):
        out.append(
            SegmentResult(
                stream_id=f"{tag}-cam-{i % streams}",
                segment_index=i // streams,
                t_start=2.0 * (i // streams),
                t_end=2.0 * (i // streams) + 2,
                labels=["a", "b", "c", "d", "e"],
                scores=[0.5, 0.2, 0.1, 0.05, 0.01],
                label_ids=[1, 2, 3, 4, 5],
                embedding=emb[i % 256] + 0.01 * i,
                model="videomamba_middle",
                checkpoint_digest="0123456789abcdef",
                num_frames=16,
                uri=f"rtsp://cam-{i % streams}/stream",
                stream_version="v1",
            )
        )
    return out


def summaries(streams: int, tag: str) -> list:
    return [
        StreamSummary(
            stream_id=f"{tag}-cam-{s}",
            labels=["a"],
            scores=[0.5],
            label_ids=[1],
            mode="last",
            duration=10.0,
            segment_count=1,
            t_start=0.0,
            t_end=10.0,
            status="ok",
            stream_version="v1",
        )
        for s in range(streams)
    ]


def indexer_cfg(bootstrap: str, names: TopicNames, out: str, backend: str, tmp: str):
    store = {"backend": backend}
    if backend == "milvus":
        store["uri"] = os.path.join(tmp, f"{uuid.uuid4().hex[:6]}.db")
    return load_config(
        overrides={
            "kafka": {
                "bootstrap": bootstrap,
                "results_topic": names.segments,
                "events_topic": names.events,
                "summaries_topic": names.summaries,
                "dead_letter_topic": names.dead_letter,
                "indexer_group_id": f"idx-{uuid.uuid4().hex[:6]}",
            },
            "output": {"dir": out, "store": store},
        }
    )


def produce(bootstrap: str, names: TopicNames, recs: list, spill: str) -> float:
    sink = KafkaSink(bootstrap, topics=names.sink_topics(), spill_dir=spill)
    t0 = time.perf_counter()
    for r in recs:
        sink.write(r)
    sink.flush()
    dt = time.perf_counter() - t0
    sink.close()
    return dt


def time_index(cfg, out: str, n_records: int) -> float:
    ix = Indexer(cfg, out)
    ix.open()
    try:
        t0 = time.monotonic()
        ix.loop(idle_exit_s=2.0)
        assert ix.stats.records == n_records, (ix.stats.records, n_records)
        return ix.last_commit_at - t0
    finally:
        ix.close()


def lag_run(cfg, out: str, bootstrap: str, names: TopicNames, spill: str, rate: float, seconds: float, dim: int):
    ix = Indexer(cfg, out, record_lag=True)
    ix.open()
    th = threading.Thread(target=ix.loop, daemon=True)
    th.start()
    sink = KafkaSink(bootstrap, topics=names.sink_topics(), spill_dir=spill)
    n = int(rate * seconds)
    recs = segments(n, dim, 16, "lag", start=10_000_000)
    t0 = time.monotonic()
    for i, r in enumerate(recs):
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sink.write(r)
    sink.flush()
    sink.close()
    deadline = time.monotonic() + 60
    while len(ix.stats.lags_s) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    ix.stop()
    th.join(30)
    ix.close()
    lags = np.array(ix.stats.lags_s)
    return float(np.percentile(lags, 50)), float(np.percentile(lags, 99)), len(lags)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--n", type=int, default=10000, help="segments in the throughput runs")
    ap.add_argument("--dim", type=int, default=576, help="embedding size (576: VideoMamba-M)")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--rate", type=float, default=200.0, help="segments/s written in the lag run")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the lag run")
    ap.add_argument("--backends", default="faiss,milvus")
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("vmstream").setLevel(logging.ERROR)
    tmp = tempfile.mkdtemp(prefix="vmstream-index-bench-")
    state = os.path.join(tmp, "broker")
    script = str(REPO / "scripts" / "kafka-local")
    bootstrap = a.bootstrap
    started = False
    figures: dict[str, float] = {}
    try:
        if bootstrap is None:
            r = subprocess.run(
                [script, "start", "--state-dir", state, "--owner-pid", str(os.getpid())],
                capture_output=True,
                text=True,
                check=True,
            )
            bootstrap, started = r.stdout.strip().splitlines()[-1], True
        names = TopicNames.with_prefix(f"ibench{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, vmstream_topics(names, partitions=6))
        spill = os.path.join(tmp, "spill")
        recs = segments(a.n, a.dim, a.streams, "t") + summaries(a.streams, "t")
        dt = produce(bootstrap, names, recs, spill)
        figures["producer_segments_per_s"] = a.n / dt
        print(f"producer (KafkaSink, {a.n} segments of dim {a.dim}): {figures['producer_segments_per_s']:.0f}/s")
        for backend in a.backends.split(","):
            out = os.path.join(tmp, f"store-{backend}")
            t = time_index(indexer_cfg(bootstrap, names, out, backend, tmp), out, len(recs))
            figures[f"index_segments_per_s_{backend}"] = a.n / t
            figures[f"index_vs_producer_{backend}"] = (
                figures[f"index_segments_per_s_{backend}"] / figures["producer_segments_per_s"]
            )
            print(
                f"indexer -> {backend}: {a.n / t:.0f} segments/s ({t:.1f} s), "
                f"{figures[f'index_vs_producer_{backend}']:.2f}x the producer"
            )
        for backend in a.backends.split(","):
            lnames = TopicNames.with_prefix(f"ilag{uuid.uuid4().hex[:8]}")
            ensure_topics(bootstrap, vmstream_topics(lnames, partitions=6))
            out = os.path.join(tmp, f"lag-{backend}")
            p50, p99, n = lag_run(
                indexer_cfg(bootstrap, lnames, out, backend, tmp),
                out,
                bootstrap,
                lnames,
                spill,
                a.rate,
                a.seconds,
                a.dim,
            )
            figures[f"index_lag_p50_s_{backend}"], figures[f"index_lag_p99_s_{backend}"] = p50, p99
            print(
                f"lag {backend}, {n} segments at {a.rate:.0f}/s: p50 {p50:.2f} s, p99 {p99:.2f} s "
                "(production -> searchable; commit interval 1 s)"
            )
            delete_topics(bootstrap, lnames.all(), timeout_s=10)
        delete_topics(bootstrap, names.all(), timeout_s=10)
    finally:
        if started:
            subprocess.run([script, "stop", "--state-dir", state], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    for backend in a.backends.split(","):
        print(
            f"index_segments_per_s={figures[f'index_segments_per_s_{backend}']:.0f} backend={backend} "
            f"producer_segments_per_s={figures['producer_segments_per_s']:.0f} "
            f"ratio={figures[f'index_vs_producer_{backend}']:.2f}"
        )
    for backend in a.backends.split(","):
        print(
            f"index_lag_p99_s={figures[f'index_lag_p99_s_{backend}']:.2f} backend={backend} "
            f"rate={a.rate:.0f} p50={figures[f'index_lag_p50_s_{backend}']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
