"""Kafka results sink speed on the local broker (scripts/kafka-local).

    .venv/bin/python benchmarks/kafka_speed.py [--bootstrap HOST:PORT] [--n 5000] [--dim 576]

Prints, each as the median of --repeats runs:
- throughput: segment results/s through KafkaSink (encode + idempotent acks=all produce,
  flushed until every record is acknowledged), against two baselines measured in the
  same run: kafka-python's producer alone sending the same, already encoded, messages
  with the same settings (what the sink costs on top), and encoding alone;
- latency: a result written by the sink -> a live consumer sees it (p50, p99), with the
  records written at a steady rate, for the sink's default linger (5 ms) and linger 0;
- broker start-up: first start (format + start) and restart, when it starts its own.

Without --bootstrap it starts a private broker in a temp dir and removes it afterwards.
The last lines are machine-readable: `key=value` lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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

from vmstream.kafka.codec import encode_record  # noqa: E402
from vmstream.kafka.readers import RecordConsumer  # noqa: E402
from vmstream.kafka.topics import TopicNames, delete_topics, ensure_topics, vmstream_topics  # noqa: E402
from vmstream.records import SegmentResult  # noqa: E402
from vmstream.stages.sinks.kafka import KafkaSink  # noqa: E402


def results(n: int, dim: int, streams: int, tag: str) -> list[SegmentResult]:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((min(n, 256), dim)).astype(np.float32)
    return [
        SegmentResult(
            stream_id=f"{tag}-cam-{i % streams}",
            segment_index=i // streams,
            t_start=2.0 * i,
            t_end=2.0 * i + 2,
            labels=["label_a", "label_b", "label_c", "label_d", "label_e"],
            scores=[0.5, 0.2, 0.1, 0.05, 0.01],
            label_ids=[1, 2, 3, 4, 5],
            embedding=emb[i % len(emb)],
            model="videomamba_middle",
            checkpoint_digest="0123456789abcdef",
            num_frames=16,
            uri=f"rtsp://cam-{i % streams}/stream",
        )
        for i in range(n)
    ]


def time_sink(bootstrap: str, names: TopicNames, recs: list, spill: str, **kw) -> float:
    sink = KafkaSink(bootstrap, topics=names.sink_topics(), spill_dir=spill, **kw)
    try:
        t0 = time.perf_counter()
        for r in recs:
            sink.write(r)
        sink.flush()
        dt = time.perf_counter() - t0
        assert sink.stats.acked == len(recs), sink.stats
    finally:
        sink.close()
    return dt


def time_raw(bootstrap: str, topic: str, encoded: list) -> float:
    from kafka import KafkaProducer

    # The sink's producer settings, so the ratio is what the sink adds on top.
    p = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        batch_size=256 << 10,
        max_in_flight_requests_per_connection=5,
    )
    try:
        t0 = time.perf_counter()
        futs = [p.send(topic, e.value, e.key, e.headers) for e in encoded]
        p.flush()
        dt = time.perf_counter() - t0
        assert all(f.succeeded() for f in futs)
    finally:
        p.close()
    return dt


def latency(
    bootstrap: str, names: TopicNames, spill: str, n: int, rate: float, dim: int, linger_ms: int
) -> list[float]:
    """Seconds from sink.write() to a consumer's poll returning the record."""
    recs = results(n, dim, 8, f"lat{linger_ms}-{uuid.uuid4().hex[:6]}")
    t_write: dict[int, float] = {}
    t_seen: dict[int, float] = {}
    done = threading.Event()
    consumer = RecordConsumer(bootstrap, names.segments, consumer_options={"fetch_max_wait_ms": 10})

    def consume():
        while not done.is_set():
            for r in consumer.poll(0.05):
                t_seen.setdefault(r.uid, time.perf_counter())
            if len(t_seen) >= n:
                break

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    time.sleep(0.5)  # the consumer is positioned at the end before anything is written
    sink = KafkaSink(bootstrap, topics=names.sink_topics(), spill_dir=spill, linger_ms=linger_ms)
    try:
        period = 1.0 / rate
        t_next = time.perf_counter()
        for r in recs:
            now = time.perf_counter()
            if now < t_next:
                time.sleep(t_next - now)
            t_write[r.uid] = time.perf_counter()
            sink.write(r)
            t_next += period
        sink.flush()
        deadline = time.monotonic() + 30
        while len(t_seen) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        th.join(5)
        sink.close()
        consumer.close()
    missing = n - len(t_seen)
    if missing:
        raise RuntimeError(f"latency run: {missing} of {n} records never seen by the consumer")
    return [t_seen[u] - t_write[u] for u in t_write]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--n", type=int, default=5000, help="results per throughput run")
    ap.add_argument("--dim", type=int, default=576, help="embedding size (576: VideoMamba-M)")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency-n", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200.0, help="results/s written in the latency runs")
    a = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.ERROR)
    tmp = tempfile.mkdtemp(prefix="vmstream-kafka-bench-")
    state = os.path.join(tmp, "broker")
    figures: dict[str, float] = {}
    script = str(REPO / "scripts" / "kafka-local")
    bootstrap = a.bootstrap
    try:
        if bootstrap is None:
            t0 = time.perf_counter()
            r = subprocess.run(
                [script, "start", "--state-dir", state, "--owner-pid", str(os.getpid())],
                capture_output=True,
                text=True,
                check=True,
            )
            figures["broker_first_start_s"] = time.perf_counter() - t0
            subprocess.run([script, "stop", "--state-dir", state], capture_output=True, check=True)
            t0 = time.perf_counter()
            r = subprocess.run(
                [script, "start", "--state-dir", state, "--owner-pid", str(os.getpid())],
                capture_output=True,
                text=True,
                check=True,
            )
            figures["broker_restart_s"] = time.perf_counter() - t0
            bootstrap = r.stdout.strip().splitlines()[-1]
            print(
                f"broker {bootstrap}: first start {figures['broker_first_start_s']:.1f}s, "
                f"restart {figures['broker_restart_s']:.1f}s"
            )
        names = TopicNames.with_prefix(f"bench{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, vmstream_topics(names, partitions=6))
        spill = os.path.join(tmp, "spill")

        recs = results(a.n, a.dim, a.streams, "warm")
        time_sink(bootstrap, names, recs[: min(500, a.n)], spill)  # connections, JIT-free warm-up
        enc_t, sink_t, raw_t = [], [], []
        for rep in range(a.repeats):
            recs = results(a.n, a.dim, a.streams, f"r{rep}")
            t0 = time.perf_counter()
            encoded = [encode_record(r) for r in recs]
            enc_t.append(time.perf_counter() - t0)
            raw_t.append(time_raw(bootstrap, names.segments, encoded))
            sink_t.append(time_sink(bootstrap, names, recs, spill))
        msg_bytes = statistics.mean(len(e.value) for e in encoded)
        figures["message_bytes"] = msg_bytes
        figures["sink_results_per_s"] = a.n / statistics.median(sink_t)
        figures["raw_producer_results_per_s"] = a.n / statistics.median(raw_t)
        figures["encode_only_results_per_s"] = a.n / statistics.median(enc_t)
        figures["sink_vs_raw_producer"] = figures["sink_results_per_s"] / figures["raw_producer_results_per_s"]
        # Encoding runs in the caller's thread and producing in kafka-python's, but under
        # the GIL on a busy machine they add up: this bound is what a sink could reach
        # with no bookkeeping of its own.
        serial = 1.0 / (1.0 / figures["raw_producer_results_per_s"] + 1.0 / figures["encode_only_results_per_s"])
        figures["sink_vs_encode_plus_produce"] = figures["sink_results_per_s"] / serial
        figures["sink_MB_per_s"] = figures["sink_results_per_s"] * msg_bytes / 1e6
        print(f"throughput ({a.n} results, dim {a.dim}, {msg_bytes:.0f} B/message, median of {a.repeats}):")
        print(
            f"  KafkaSink (encode + produce + all acked) {figures['sink_results_per_s']:8.0f} results/s "
            f"({figures['sink_MB_per_s']:.1f} MB/s)"
        )
        print(f"  kafka-python producer, pre-encoded       {figures['raw_producer_results_per_s']:8.0f} results/s")
        print(f"  JSON encoding alone                      {figures['encode_only_results_per_s']:8.0f} results/s")
        print(f"  sink / raw producer                      {figures['sink_vs_raw_producer']:8.2f}")
        print(f"  sink / (encode + produce, one after other) {figures['sink_vs_encode_plus_produce']:6.2f}")

        for linger in (5, 0):
            lat = latency(bootstrap, names, spill, a.latency_n, a.rate, a.dim, linger)
            figures[f"latency_linger{linger}_p50_ms"] = pct(lat, 50) * 1e3
            figures[f"latency_linger{linger}_p99_ms"] = pct(lat, 99) * 1e3
            print(
                f"latency write -> consumer sees it, linger_ms={linger}, {a.latency_n} results at {a.rate:.0f}/s: "
                f"p50 {figures[f'latency_linger{linger}_p50_ms']:.1f} ms, "
                f"p99 {figures[f'latency_linger{linger}_p99_ms']:.1f} ms"
            )
        delete_topics(bootstrap, names.all())
    finally:
        if a.bootstrap is None:
            subprocess.run([script, "clean", "--state-dir", state], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in figures.items():
        print(f"{k}={v:.3f}")
    print(json.dumps({"benchmark": "kafka_speed", **{k: round(v, 3) for k, v in figures.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
