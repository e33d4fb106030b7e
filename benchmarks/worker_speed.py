"""Kafka worker figures on the local broker (scripts/kafka-local).

    .venv/bin/python benchmarks/worker_speed.py [--bootstrap HOST:PORT] [--streams 120] [--repeats 5]

State store (`KafkaStateStore`, a compacted topic with 6 partitions), medians of
--repeats runs:
- save: an acknowledged snapshot write of a VideoMamba-Ti-sized (0.7 MB) and an
  M-sized (2.8 MB) state, p50 / p99 over the repeats;
- load, with --streams streams' Ti-sized snapshots in the topic: the first load of a
  stream (reads the key's partition to its end), a load after one more snapshot
  landed in that partition (reads only that), a load with nothing new (one fetch at
  the offset the index holds); baseline measured in the same run: reading the whole
  topic to its end (`vmstream.kafka.readers.latest_by_key`), which is what a store without
  the index would do for every load.
Worker: one `vmstream worker` process (tiny checkpoint, 32x32 frames), --jobs jobs of
a 30-segment video sent at once; wall time from sending them to the last summary,
against the same videos through the runner in-process with the same model and
settings (no Kafka): what the worker's acknowledged flushes, Kafka snapshots and
offset commits cost on top. Worker start-up (imports, model, joining the group) is
reported apart.

Without --bootstrap it starts a private broker in a temp dir and removes it afterwards.
The last line is JSON with every figure.
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
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vmstream.kafka.state import KafkaStateStore, partition_for_key  # noqa: E402
from vmstream.kafka.topics import TopicNames, delete_topics, ensure_topics, vmstream_topics  # noqa: E402

TI_STATE = 700_000
M_STATE = 2_800_000


def snap(sid: str, i: int, nbytes: int) -> dict:
    return {"stream_id": sid, "next_index": i, "t_end": float(i), "state": os.urandom(nbytes), "book": b"b" * 600}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def bench_store(bootstrap: str, streams: int, repeats: int) -> dict:
    from vmstream.kafka.readers import latest_by_key

    names = TopicNames.with_prefix(f"bench{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, vmstream_topics(names, partitions=6))
    fig: dict = {}
    try:
        with KafkaStateStore(bootstrap, names.state) as w:
            for label, n in (("ti", TI_STATE), ("m", M_STATE)):
                lat = []
                for i in range(max(5, repeats * 2)):
                    s = snap(f"save-{label}", i, n)
                    t0 = time.perf_counter()
                    w.save(s)
                    lat.append(time.perf_counter() - t0)
                fig[f"save_{label}_p50_ms"] = 1000 * statistics.median(lat)
                fig[f"save_{label}_p99_ms"] = 1000 * pct(lat, 99)
            for k in range(streams):
                w.save(snap(f"cam-{k}", 10, TI_STATE))
            first, incr, hit, full = [], [], [], []
            for r in range(repeats):
                sid = f"cam-{(r * 7) % streams}"
                p = partition_for_key(sid.encode(), 6)
                other = next(
                    f"cam-{k}"
                    for k in range(streams)
                    if f"cam-{k}" != sid and partition_for_key(f"cam-{k}".encode(), 6) == p
                )
                with KafkaStateStore(bootstrap, names.state) as reader:  # a fresh worker
                    t0 = time.perf_counter()
                    assert reader.load(sid)["next_index"] == 10
                    first.append(time.perf_counter() - t0)
                    w.save(snap(other, 11 + r, TI_STATE))
                    t0 = time.perf_counter()
                    assert reader.load(sid)["next_index"] == 10
                    incr.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    assert reader.load(sid)["next_index"] == 10
                    hit.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert sid.encode() in latest_by_key(bootstrap, names.state)
                full.append(time.perf_counter() - t0)
        fig.update(
            {
                "load_first_ms": 1000 * statistics.median(first),
                "load_incremental_ms": 1000 * statistics.median(incr),
                "load_index_hit_ms": 1000 * statistics.median(hit),
                "read_whole_topic_ms": 1000 * statistics.median(full),
                "streams_in_topic": streams,
                "topic_mb": round(streams * TI_STATE / 1e6, 1),
            }
        )
    finally:
        delete_topics(bootstrap, names.all())
    return fig


def bench_worker(bootstrap: str, jobs: int, tmp: Path) -> dict:
    import torch
    import yaml

    from tests.fixtures.media import make_video
    from tests.fixtures.videomamba import make_tiny_model
    from vmstream.kafka.readers import read_records
    from vmstream.pipeline.assembly import build_runner
    from vmstream.pipeline.config import load_config
    from vmstream.stages.sources import source_from_job

    ckpt = tmp / "tiny.pth"
    torch.save({"model": make_tiny_model(seed=3).state_dict()}, ckpt)
    video = make_video(str(tmp / "v.mp4"), fps=10, seconds=30, gop=20, size=(64, 48))
    base = {
        "model": {"checkpoint": str(ckpt), "name": None, "top_k": 3, "device": "cpu"},
        "decode": {"fps": 4.0, "img_size": 32},
        "output": {"dir": str(tmp / "inproc"), "console": False, "faiss": False},
        "runner": {"progress": False, "snapshot_every": 10},
    }
    specs = [{"stream_id": f"bench-{i}", "uri": video} for i in range(jobs)]

    cfg = load_config(overrides=base)
    runner = build_runner(cfg, state_store=None)
    t0 = time.perf_counter()
    report = runner.run([source_from_job(s) for s in specs])
    inproc = time.perf_counter() - t0
    assert report.streams == jobs and report.streams_failed == 0

    names = TopicNames.with_prefix(f"benchw{uuid.uuid4().hex[:8]}")
    ensure_topics(bootstrap, vmstream_topics(names, partitions=6))
    wcfg = dict(
        base,
        output=dict(base["output"], dir=str(tmp / "worker")),
        kafka={
            "bootstrap": bootstrap,
            "jobs_topic": names.jobs,
            "results_topic": names.segments,
            "events_topic": names.events,
            "summaries_topic": names.summaries,
            "state_topic": names.state,
            "dead_letter_topic": names.dead_letter,
            "group_id": f"g-{names.jobs}",
            "jobs": {"roots": [str(tmp)]},
        },
    )  # the job policy: the video's directory
    (tmp / "w.yaml").write_text(yaml.safe_dump(wcfg))
    log = open(tmp / "worker.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmstream.cli", "worker", "--config", str(tmp / "w.yaml")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while "assigned partitions [" + names.jobs not in (tmp / "worker.log").read_text():
            if proc.poll() is not None or time.perf_counter() - t0 > 120:
                raise RuntimeError("worker did not start:\n" + (tmp / "worker.log").read_text()[-3000:])
            time.sleep(0.05)
        startup = time.perf_counter() - t0
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        t0 = time.perf_counter()
        for s in specs:
            p.send(names.jobs, json.dumps(s).encode(), key=s["stream_id"].encode())
        p.flush()
        p.close()
        while True:
            recs = read_records(bootstrap, names.summaries, timeout_s=30)
            if len({r.stream_id for r in recs}) == jobs:
                break
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("jobs did not finish")
            time.sleep(0.1)
        worker = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
        delete_topics(bootstrap, names.all())
    return {
        "jobs": jobs,
        "segments_per_job": report.segments // jobs,
        "inprocess_s": inproc,
        "worker_s": worker,
        "worker_over_inprocess": worker / inproc,
        "worker_startup_s": startup,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--streams", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=8)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmstream-worker-bench-"))
    state = str(tmp / "kafka")
    script = str(REPO / "scripts" / "kafka-local")
    started = False
    try:
        bootstrap = a.bootstrap
        if not bootstrap:
            r = subprocess.run(
                [script, "start", "--state-dir", state, "--owner-pid", str(os.getpid())],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            bootstrap = r.stdout.strip().splitlines()[-1]
            started = True
        fig = bench_store(bootstrap, a.streams, a.repeats)
        print(f"state store ({fig['streams_in_topic']} Ti-sized snapshots, {fig['topic_mb']} MB, 6 partitions):")
        print(f"  save Ti (0.7 MB)   p50 {fig['save_ti_p50_ms']:7.1f} ms   p99 {fig['save_ti_p99_ms']:7.1f} ms")
        print(f"  save M  (2.8 MB)   p50 {fig['save_m_p50_ms']:7.1f} ms   p99 {fig['save_m_p99_ms']:7.1f} ms")
        print(f"  load, first         {fig['load_first_ms']:7.1f} ms   (reads the key's partition)")
        print(f"  load, incremental   {fig['load_incremental_ms']:7.1f} ms   (one new snapshot in the partition)")
        print(f"  load, index hit     {fig['load_index_hit_ms']:7.1f} ms   (one fetch)")
        print(
            f"  baseline: whole topic read {fig['read_whole_topic_ms']:7.1f} ms "
            f"= {fig['read_whole_topic_ms'] / fig['load_incremental_ms']:.0f}x an incremental load"
        )
        w = bench_worker(bootstrap, a.jobs, tmp)
        fig.update(w)
        print(
            f"worker: {w['jobs']} jobs x {w['segments_per_job']} segments: {w['worker_s']:.2f} s from sending to "
            f"the last summary; in-process runner {w['inprocess_s']:.2f} s; ratio {w['worker_over_inprocess']:.2f}x; "
            f"worker start-up {w['worker_startup_s']:.1f} s"
        )
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in fig.items()}))
        return 0
    finally:
        if started:
            subprocess.run([script, "clean", "--state-dir", state], capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
