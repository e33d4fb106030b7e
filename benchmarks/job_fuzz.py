"""Seeded fuzz of the worker's jobs topic: random and malformed job records sent to a
real broker and a real `vmstream worker`, then one good job that must still be served.

A record on the jobs topic is anyone's to write: whatever it holds must end as a dead
letter with its reason, never stop the worker (a restarted worker would read the same
record and stop again: one message would stop the fleet). The records (seeded) are of
these kinds:

    deep         JSON nested 17 to 100,000 levels ([[[...]]], {"a":{"a":...}}), in a field or alone
    huge         a valid job padded past the size bound (up to 500 KB)
    bytes        random bytes, some not UTF-8
    truncated    a job cut short
    not_object   JSON that is not an object (null, a number, a string, a list)
    wrong_types  each field of a job given a value of another type
    unknown      unknown fields, odd option keys and values
    flipped      a job with bytes flipped
    empty        no value at all (a tombstone) or b""
    refused      jobs the policy refuses (outside the root, other schemes and hosts)

It starts a private broker (scripts/kafka-local) unless --bootstrap names one, makes a
tiny checkpoint and a 2 s video with ffmpeg, starts the worker, sends the records, then
the good job, and waits for the good job's summary and for the committed offset to
pass every record.

    .venv/bin/python benchmarks/job_fuzz.py [--count 1000] [--seed 5] [--bootstrap HOST:PORT] [--timeout 600]

Last lines, one figure each (name=value): job_fuzz_records (sent; job_fuzz_too_large_for_the_broker more the
broker itself refused), job_fuzz_dead_lettered,
job_fuzz_dead_lettered_<reason>, job_fuzz_results_of_bad_jobs (must be 0),
job_fuzz_good_job_served (must be 1), job_fuzz_worker_exits (must be 0),
job_fuzz_tracebacks (must be 0), job_fuzz_committed_all (must be 1), job_fuzz_seconds,
job_fuzz_records_per_s.
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
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
KINDS = ("deep", "huge", "bytes", "truncated", "not_object", "wrong_types", "unknown", "flipped", "empty", "refused")
_ODD_VALUES = [
    None,
    True,
    0,
    -1,
    2**70,
    1e308,
    -0.0,
    "",
    "x" * 5000,
    [],
    {},
    [1, "a"],
    {"k": [None]},
    "\u0000",
    "\ud800",
    "..",
    "%2e%2e/",
    "\u202e.mp4",
]


def make_video(path: Path) -> None:
    subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=10:duration=2",
            "-c:v",
            "libx264",
            "-g",
            "10",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )


def make_checkpoint(path: Path) -> None:
    import torch

    from vmstream.models import VideoMamba

    torch.manual_seed(0)
    model = VideoMamba(
        img_size=32, patch_size=16, depth=2, embed_dim=32, num_classes=5, num_frames=4, ssm_cfg={"d_state": 8}
    )
    torch.save({"model": model.state_dict()}, path)


def nested(depth: int, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def bad_record(kind: str, rng: random.Random, root: Path) -> bytes | None:
    """One malformed or refused job record of `kind` (None: a record without a value)."""
    missing = str(root / f"missing-{rng.randrange(10**6)}.mp4")  # under the root, not there
    base = {"stream_id": f"bad-{rng.randrange(10**9)}", "uri": missing}
    if kind == "deep":
        depth = rng.choice([17, 100, 1000, 5000, 50_000, 100_000])
        inner = nested(depth, rng)
        where = rng.choice(["alone", "options", "uri", "stream_id"])
        if where == "alone":
            return inner.encode()
        return json.dumps({**base, where: "@"}).replace('"@"', inner).encode()
    if kind == "huge":
        pad = rng.choice([70_000, 200_000, 500_000])
        field = rng.choice(["uri", "stream_id", "pad"])
        job = dict(base)
        job[field] = job.get(field, "") + "y" * pad
        return json.dumps(job).encode()
    if kind == "bytes":
        n = rng.choice([1, 7, 100, 4000])
        return bytes(rng.randrange(256) for _ in range(n))
    if kind == "truncated":
        text = json.dumps({**base, "options": {"timeout": 5}, "live": False}).encode()
        return text[: rng.randrange(1, len(text))]
    if kind == "not_object":
        return json.dumps(rng.choice([None, 1, -3.5, "a.mp4", [base], True])).encode()
    if kind == "wrong_types":
        job = {**base, "options": {}, "live": False}
        for key in rng.sample(sorted(job), rng.randint(1, len(job))):
            job[key] = rng.choice(_ODD_VALUES)
        return json.dumps(job).encode()
    if kind == "unknown":
        job = dict(base)
        choice = rng.randrange(4)
        if choice == 0:
            job[rng.choice(["URI", "path", "__proto__", "", "\u0000"])] = rng.choice(_ODD_VALUES)
        elif choice == 1:
            job["options"] = {rng.choice(["ffmpeg", "format", "reconnect", "timeout", "x"]): rng.choice(_ODD_VALUES)}
        elif choice == 2:
            job["options"] = {"reconnect": {rng.choice(["initial", "max_tries", "bogus"]): rng.choice(_ODD_VALUES)}}
        else:
            job["uri"] = rng.choice(
                [
                    "\u0000",
                    missing + "\u0000.mp4",
                    "file://" + "/" * 5000,
                    "x:" * 2000,
                    "http://[::1",
                    "http://%zz/",
                    "rtsp://" + "a" * 300 + "/s",
                ]
            )
        return json.dumps(job).encode()
    if kind == "flipped":
        buf = bytearray(json.dumps({**base, "options": {"timeout": 5}}).encode())
        for _ in range(rng.randint(1, 6)):
            buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
        return bytes(buf)
    if kind == "empty":
        return rng.choice([None, b"", b" ", b"{}"])
    if kind == "refused":
        return json.dumps(
            {
                **base,
                "uri": rng.choice(
                    [
                        "/etc/passwd",
                        "file:///etc/shadow",
                        str(root / ".." / "x.mp4"),
                        "/dev/zero",
                        "/proc/self/environ",
                        "concat:/etc/passwd",
                        "data:video/mp4;base64,AAAA",
                        "pipe:0",
                        "http://169.254.169.254/x",
                        "subfile:,start,0,end,9,:/etc/passwd",
                    ]
                ),
            }
        ).encode()
    raise ValueError(kind)


def start_broker(work: Path) -> tuple[str, Path]:
    state = work / "kafka"
    r = subprocess.run(
        [str(REPO / "scripts" / "kafka-local"), "start", "--state-dir", str(state), "--owner-pid", str(os.getpid())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        raise SystemExit(f"job_fuzz: could not start a broker: {r.stderr[-2000:]}")
    return r.stdout.strip().splitlines()[-1], state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--bootstrap", default=None, help="a running broker (default: start a private one)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the worker to get through")
    args = ap.parse_args()

    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError

    from vmstream.kafka.readers import read_messages, read_records
    from vmstream.kafka.topics import TopicNames, delete_topics, ensure_topics, vmstream_topics
    from vmstream.records import StreamSummary

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="job_fuzz-"))
    broker_state = None
    worker = None
    try:
        bootstrap = args.bootstrap
        if bootstrap is None:
            bootstrap, broker_state = start_broker(work)
        root = work / "root"
        root.mkdir()
        good = root / "good.mp4"
        make_video(good)
        ckpt = work / "tiny.pth"
        make_checkpoint(ckpt)
        names = TopicNames.with_prefix(f"fuzz{uuid.uuid4().hex[:8]}")
        ensure_topics(bootstrap, vmstream_topics(names, partitions=1))
        group = f"g-{names.jobs}"
        import yaml

        cfg = {
            "model": {"checkpoint": str(ckpt), "name": None, "top_k": 3, "device": "cpu"},
            "decode": {"fps": 4.0, "img_size": 32},
            "output": {"console": False, "faiss": False, "dir": str(work / "out")},
            "runner": {"progress": False},
            "kafka": {
                "bootstrap": bootstrap,
                "jobs_topic": names.jobs,
                "results_topic": names.segments,
                "events_topic": names.events,
                "summaries_topic": names.summaries,
                "state_topic": names.state,
                "dead_letter_topic": names.dead_letter,
                "group_id": group,
                "jobs": {"schemes": ["file", "http"], "roots": [str(root)], "hosts": ["127.0.0.1"]},
            },
        }
        (work / "worker.yaml").write_text(yaml.safe_dump(cfg))
        log_path = work / "worker.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        worker = subprocess.Popen(
            [sys.executable, "-m", "vmstream.cli", "worker", "--config", str(work / "worker.yaml")],
            cwd=REPO,
            stdout=open(log_path, "w"),
            stderr=subprocess.STDOUT,
            env=env,
        )

        kinds = Counter()
        records = []
        for _ in range(args.count):
            kind = rng.choice(KINDS)
            kinds[kind] += 1
            records.append((kind, bad_record(kind, rng, root)))
        t0 = time.monotonic()
        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2 << 20)
        sent = too_large = 0
        for _kind, value in records:
            key = rng.choice([None, b"k", bytes(rng.randrange(256) for _ in range(8))])
            if value is None and key is None:
                key = b"tombstone"  # Kafka needs one of the two
            try:
                p.send(names.jobs, value, key=key, partition=0).get(60)
            except MessageSizeTooLargeError:  # past the topic's own limit: the broker keeps it out
                too_large += 1
                p.close()
                p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2 << 20)
                continue
            sent += 1
        p.send(names.jobs, json.dumps({"stream_id": "good", "uri": str(good)}).encode(), key=b"good", partition=0).get(
            60
        )
        p.close()

        served = False
        deadline = time.monotonic() + args.timeout
        summaries: list = []
        while time.monotonic() < deadline and worker.poll() is None:
            recs = read_records(bootstrap, [names.segments, names.summaries], timeout_s=60)
            summaries = [r for r in recs if isinstance(r, StreamSummary)]
            if any(s.stream_id == "good" for s in summaries):
                served = True
                break
            time.sleep(1.0)
        # Every record done: dead-lettered (or run) and committed past.
        committed_all = False
        if worker.poll() is None:
            from kafka import KafkaConsumer, TopicPartition

            c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
            try:
                while time.monotonic() < deadline:
                    if c.committed(TopicPartition(names.jobs, 0)) == sent + 1:
                        committed_all = True
                        break
                    time.sleep(0.5)
            finally:
                c.close()
        seconds = time.monotonic() - t0
        dead = read_messages(bootstrap, names.dead_letter, timeout_s=60)
        reasons = Counter(json.loads(m.value)["reason"] for m in dead)
        bad_results = sum(
            1 for r in read_records(bootstrap, [names.segments, names.summaries], timeout_s=60) if r.stream_id != "good"
        )
        exits = 0 if worker.poll() is None else 1
        if worker.poll() is None:
            worker.terminate()
            worker.wait(120)
        log_text = log_path.read_text(errors="replace")
        tracebacks = log_text.count("Traceback (most recent call last)")
        delete_topics(bootstrap, names.all(), timeout_s=10)

        print(
            f"{sent + too_large} fuzzed job records (seed {args.seed}): " + ", ".join(f"{k} {kinds[k]}" for k in KINDS)
        )
        if exits or tracebacks or not served:
            print(log_text[-4000:], file=sys.stderr)
        print(f"job_fuzz_records={sent}")
        print(f"job_fuzz_too_large_for_the_broker={too_large}")
        print(f"job_fuzz_dead_lettered={len(dead)}")
        for reason in sorted(reasons):
            print(f"job_fuzz_dead_lettered_{reason}={reasons[reason]}")
        print(f"job_fuzz_results_of_bad_jobs={bad_results}")
        print(f"job_fuzz_good_job_served={int(served)}")
        print(f"job_fuzz_worker_exits={exits}")
        print(f"job_fuzz_tracebacks={tracebacks}")
        print(f"job_fuzz_committed_all={int(committed_all)}")
        print(f"job_fuzz_seconds={seconds:.1f}")
        print(f"job_fuzz_records_per_s={sent / seconds:.1f}")
        ok = served and committed_all and not exits and not tracebacks and not bad_results and len(dead) == sent
        return 0 if ok else 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(30)
        if broker_state is not None:
            subprocess.run(
                [str(REPO / "scripts" / "kafka-local"), "clean", "--state-dir", str(broker_state)],
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
