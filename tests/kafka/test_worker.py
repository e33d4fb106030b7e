"""`vmstream worker` end to end: real worker processes in one consumer group on the
local broker, real encoded videos, a tiny checkpoint.

Workers run as subprocesses (`python -m vmstream.cli worker`) so one can be
SIGKILLed mid-stream. Their group timing is short (session 6 s, the broker's minimum;
heartbeat 1 s) so the group notices a dead worker quickly.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import yaml

from tests.fixtures.waiting import Budget, load_factor, wait_until
from vmstream.records import SegmentResult, StreamSummary, segment_uid

# The hard cap per test stretches with the load too (a loaded host ran the suite 5x slower).
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(int(300 * load_factor()))]

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


class WorkerProc:
    """One `vmstream worker` process, its log in a file."""

    def __init__(self, config: Path, out_dir: Path, log_path: Path, *extra: str):
        self.log_path = log_path
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmstream.cli",
                "worker",
                "--config",
                str(config),
                "--set",
                f"output.dir={out_dir}",
                *extra,
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 90.0) -> re.Match:
        def found():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) before logging {pattern!r}:\n" + self.log()[-4000:]
                )
            return re.search(pattern, self.log())

        return wait_until(found, timeout, f"{pattern!r} in {self.log_path.name}")

    def terminate(self, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("worker did not stop on SIGTERM:\n" + self.log()[-4000:]) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def close(self) -> None:
        self.kill()
        self._log.close()


@pytest.fixture
def workers(tmp_path):
    """start(config, name) -> WorkerProc; every worker is killed after the test."""
    made: list[WorkerProc] = []

    def start(config: Path, name: str, *extra: str) -> WorkerProc:
        w = WorkerProc(config, tmp_path / f"out-{name}", tmp_path / f"{name}.log", *extra)
        made.append(w)
        return w

    yield start
    for w in made:
        w.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from tests.fixtures.media import make_video

    d = tmp_path_factory.mktemp("worker-videos")
    return {
        # 4 s at 4 fps: 4 segments of T=4 (the tiny checkpoint's num_frames)
        "short": make_video(str(d / "short.mp4"), fps=10, seconds=4, gop=20, size=(64, 48)),
        # 60 s at 8 fps: 120 segments, long enough to catch a worker mid-stream
        # (index at the front, so it can also be read over HTTP without seeking to the end)
        "long": make_video(str(d / "long.mp4"), fps=10, seconds=60, gop=20, size=(64, 48), faststart=True),
    }


class _Throttled(http.server.BaseHTTPRequestHandler):
    """Serves one file at a fixed byte rate, with Range requests (FFmpeg seeks with them)."""

    def do_GET(self):
        data, rate = self.server.data, self.server.rate
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            a, _, b = rng[len("bytes=") :].partition("-")
            start = int(a) if a else 0
            end = min(int(b), end) if b else end
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "video/mp4")
        self.end_headers()
        pos = start
        while pos <= end and not self.server.closing:
            n = min(1024, end - pos + 1)
            try:
                self.wfile.write(data[pos : pos + n])
            except (BrokenPipeError, ConnectionResetError):
                return
            pos += n
            time.sleep(n / rate)

    def log_message(self, *args):
        pass


class SlowHTTP:
    """serve(path, seconds) -> an http://127.0.0.1 URL that delivers the file in about
    `seconds`: a source whose pace does not depend on how fast this machine is.
    `unthrottle()` lets every server go full speed from then on."""

    def __init__(self):
        self.servers = []

    def serve(self, path: str, seconds: float) -> str:
        import threading

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttled)
        srv.daemon_threads = True
        srv.data = Path(path).read_bytes()
        srv.rate = len(srv.data) / seconds
        srv.closing = False
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/{Path(path).name}"

    def unthrottle(self) -> None:
        for srv in self.servers:
            srv.rate = float("inf")

    def close(self) -> None:
        for srv in self.servers:
            srv.closing = True
            srv.shutdown()
            srv.server_close()


@pytest.fixture
def slow_http():
    h = SlowHTTP()
    yield h
    h.close()


PIPELINE = {"decode": {"fps": 4.0, "img_size": 32}, "runner": {"progress": False, "snapshot_every": 2, "queue_size": 2}}
LONG = {"decode": {"fps": 8.0}}


def write_config(path: Path, ckpt: str, bootstrap: str, names, group: str, **over) -> Path:
    cfg = {
        "model": {"checkpoint": ckpt, "name": None, "top_k": 3, "device": "cpu"},
        "decode": dict(PIPELINE["decode"]),
        "output": {"console": False, "faiss": False},
        "runner": dict(PIPELINE["runner"]),
        "kafka": {
            "bootstrap": bootstrap,
            "jobs_topic": names.jobs,
            "results_topic": names.segments,
            "events_topic": names.events,
            "summaries_topic": names.summaries,
            "state_topic": names.state,
            "dead_letter_topic": names.dead_letter,
            "group_id": group,
            "consumer": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 60000},
            # The tests' videos (pytest's temporary directories) and their local HTTP servers.
            "jobs": {"schemes": ["file", "http"], "roots": [str(path.parent.parent)], "hosts": ["127.0.0.1"]},
        },
    }
    for section, values in over.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def send_jobs(bootstrap: str, topic: str, jobs: list, partition: Optional[int] = None) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for j in jobs:
            if isinstance(j, bytes):
                value, key = j, b"raw"
            else:
                value, key = json.dumps(j).encode(), (j.get("stream_id") or j.get("uri", "x")).encode()
            p.send(topic, value, key=key, partition=partition).get(30)
    finally:
        p.close()


def records(bootstrap: str, names, dedupe: bool = True) -> list:
    from vmstream.kafka.readers import read_records

    return read_records(bootstrap, [names.segments, names.summaries], dedupe=dedupe, timeout_s=30)


def segments_of(recs, sid: str) -> dict[int, SegmentResult]:
    return {r.segment_index: r for r in recs if isinstance(r, SegmentResult) and r.stream_id == sid}


def summaries_of(recs, sid: str) -> list[StreamSummary]:
    return [r for r in recs if isinstance(r, StreamSummary) and r.stream_id == sid]


def committed(bootstrap: str, group: str, topic: str) -> dict[int, Optional[int]]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = sorted(c.partitions_for_topic(topic))
        return {p: c.committed(TopicPartition(topic, p)) for p in parts}
    finally:
        c.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        return {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


_REFS: dict = {}


def reference(ckpt: str, video: str, tmp_path: Path, **over) -> tuple[dict[int, np.ndarray], StreamSummary]:
    """Embeddings by segment index and the summary of one uninterrupted in-process
    run (no Kafka), with the workers' pipeline settings."""
    key = (ckpt, video, json.dumps(over, sort_keys=True))
    if key in _REFS:
        return _REFS[key]
    from vmstream.pipeline.assembly import build_runner
    from vmstream.pipeline.config import load_config
    from vmstream.stages.sinks.base import Sink
    from vmstream.stages.sources import resolve_sources

    cfg = {
        "model": {"checkpoint": ckpt, "name": None, "top_k": 3, "device": "cpu"},
        "output": {"dir": str(tmp_path / "ref"), "console": False, "parquet": False, "faiss": False},
        "decode": dict(PIPELINE["decode"]),
        "runner": dict(PIPELINE["runner"]),
    }
    for section, values in over.items():
        cfg[section].update(values)

    class Collect(Sink):
        name = "collect"

        def __init__(self):
            self.emb, self.summary = {}, None

        def write(self, r):
            if isinstance(r, SegmentResult):
                self.emb[r.segment_index] = r.embedding
            elif isinstance(r, StreamSummary):
                self.summary = r

    sink = Collect()
    report = build_runner(load_config(overrides=cfg), sinks=[sink]).run(resolve_sources([video]))
    assert report.streams_failed == 0 and sink.summary is not None
    _REFS[key] = (sink.emb, sink.summary)
    return _REFS[key]


def assert_matches_reference(recs, sid: str, ref) -> None:
    emb, summary = ref
    got = segments_of(recs, sid)
    assert sorted(got) == sorted(emb), f"stream {sid}: segments {sorted(set(emb) - set(got))} missing"
    for i, r in got.items():
        assert r.uid == segment_uid(sid, i)
    np.testing.assert_allclose(
        np.stack([got[i].embedding for i in sorted(got)]), np.stack([emb[i] for i in sorted(emb)]), rtol=1e-5, atol=1e-5
    )
    (s,) = summaries_of(recs, sid)
    assert s.segment_count == summary.segment_count == len(emb)
    assert s.label_ids == summary.label_ids and s.status == "ok"
    np.testing.assert_allclose(s.scores, summary.scores, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- tests


def test_job_in_results_out_offset_committed(tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos):
    from vmstream.kafka.state import KafkaStateStore

    names = kafka_topics(partitions=2)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    w = workers(cfg, "a")
    w.wait_log(r"assigned partitions \[\S")
    sid = "cam-short"
    send_jobs(kafka_bootstrap, names.jobs, [{"stream_id": sid, "uri": videos["short"]}])
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, sid) and r, 90, "the stream's summary"
    )
    assert_matches_reference(recs, sid, reference(tiny_ckpt, videos["short"], tmp_path))
    w.wait_log(r"stream cam-short done \(ok\)")
    ends = end_offsets(kafka_bootstrap, names.jobs)
    wait_until(
        lambda: committed(kafka_bootstrap, group, names.jobs) == {p: e or None for p, e in ends.items()},
        30,
        "the job's offset to be committed",
    )
    with KafkaStateStore(kafka_bootstrap, names.state) as store:
        assert store.load(sid) is None  # finished: its snapshot is tombstoned
    # Local outputs per the config: Parquet here (FAISS is off in these tests).
    from vmstream.store.results import read_table

    assert len(read_table(tmp_path / "out-a", "segments")) == 4
    assert w.terminate() == 0
    assert "stopped (jobs 1, done 1" in w.log()


def test_bad_jobs_go_to_the_dead_letter_topic(tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos):
    from vmstream.kafka.readers import read_messages

    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    w = workers(cfg, "a")
    missing = str(tmp_path / "no-such-video.mp4")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    send_jobs(
        kafka_bootstrap,
        names.jobs,
        [
            b"this is not json",
            {"stream_id": "broken", "uri": missing},
            {"stream_id": "no-uri"},
            {"stream_id": "text", "uri": str(not_video)},
            {"stream_id": "good", "uri": videos["short"]},
        ],
        partition=0,
    )
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, "good") and r,
        90,
        "the good job's summary after the bad ones",
    )
    assert len(segments_of(recs, "good")) == 4
    dead = wait_until(
        lambda: len(m := read_messages(kafka_bootstrap, names.dead_letter)) >= 4 and m, 30, "four dead letters"
    )
    assert len(dead) == 4
    by_offset = {json.loads(m.value)["source"]["offset"]: json.loads(m.value) for m in dead}
    assert sorted(by_offset) == [0, 1, 2, 3]
    assert by_offset[0]["reason"] == "bad_message" and "not JSON" in by_offset[0]["error"]
    assert by_offset[0]["job"] == "this is not json"
    assert by_offset[1]["reason"] == "failed" and "no such file" in by_offset[1]["error"]
    assert by_offset[1]["job"] == {"stream_id": "broken", "uri": missing} and by_offset[1]["uri"] == missing
    assert by_offset[2]["reason"] == "bad_message" and "uri" in by_offset[2]["error"]
    assert by_offset[3]["reason"] == "failed" and by_offset[3]["stream_id"] == "text"
    for d in by_offset.values():
        assert d["source"]["topic"] == names.jobs and d["source"]["partition"] == 0 and d["group_id"] == group
    headers = {json.loads(m.value)["source"]["offset"]: dict(m.headers) for m in dead}
    assert headers[1]["vmstream.dead_letter.reason"] == b"failed"
    # Every job is done (good or dead-lettered): the offset is past all five.
    wait_until(lambda: committed(kafka_bootstrap, group, names.jobs) == {0: 5}, 30, "offset 5 committed")
    assert w.proc.poll() is None  # the worker went on
    assert w.terminate() == 0


def test_a_job_cannot_make_the_worker_read_outside_its_roots(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos
):
    """The probe of issue 11: /etc/passwd decoded as raw video made segment results."""
    from vmstream.kafka.readers import read_messages

    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    w = workers(cfg, "a")
    raw = {"format": "rawvideo", "ffmpeg": {"video_size": "8x8", "pixel_format": "gray", "framerate": "4"}}
    send_jobs(
        kafka_bootstrap,
        names.jobs,
        [
            {"stream_id": "x", "uri": "file:///etc/passwd", "options": raw},
            {"stream_id": "y", "uri": "file:///etc/passwd"},
            {"stream_id": "z", "uri": "/etc/no-such-file"},
            {"stream_id": "raw-in-root", "uri": videos["short"], "options": raw},
            {"stream_id": "web", "uri": "http://169.254.169.254/latest/meta-data"},
            {"stream_id": "good", "uri": videos["short"]},
        ],
        partition=0,
    )
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, "good") and r,
        90,
        "the good job's summary after the refused ones",
    )
    assert {r.stream_id for r in recs} == {"good"}  # no result of any refused job
    dead = wait_until(
        lambda: len(m := read_messages(kafka_bootstrap, names.dead_letter)) >= 5 and m, 30, "five dead letters"
    )
    by_sid = {
        json.loads(m.value)["stream_id"] or json.loads(m.value)["job"]["stream_id"]: json.loads(m.value) for m in dead
    }
    assert sorted(by_sid) == ["raw-in-root", "web", "x", "y", "z"]
    assert all(d["reason"] == "refused" for d in by_sid.values())
    assert "option 'ffmpeg'" in by_sid["x"]["error"] and "option 'ffmpeg'" in by_sid["raw-in-root"]["error"]
    # The same words for an existing and a missing file: nothing about the machine.
    assert by_sid["y"]["error"] == by_sid["z"]["error"] and "kafka.jobs.roots" in by_sid["y"]["error"]
    assert "kafka.jobs.hosts" in by_sid["web"]["error"]
    wait_until(lambda: committed(kafka_bootstrap, group, names.jobs) == {0: 6}, 30, "offset 6 committed")
    assert w.terminate() == 0


def test_a_stream_id_rerun_replaces_its_results_only_when_allowed(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos
):
    """Issue 11: two jobs of one stream id and different files left new rows plus stale
    ones, and the Kafka reader and the Parquet sink disagreed on which copy won."""
    from tests.fixtures.media import make_video
    from vmstream.kafka.readers import read_messages
    from vmstream.store.results import read_table

    other = make_video(str(tmp_path / "other.mp4"), fps=10, seconds=2, gop=20, size=(64, 48), noise=20)
    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    w = workers(cfg, "a")
    send_jobs(
        kafka_bootstrap,
        names.jobs,
        [{"stream_id": "cam", "uri": videos["short"]}, {"stream_id": "cam", "uri": other}],
        partition=0,
    )
    dead = wait_until(lambda: read_messages(kafka_bootstrap, names.dead_letter), 90, "the second job's dead letter")
    (d,) = [json.loads(m.value) for m in dead]
    assert d["stream_id"] == "cam" and d["reason"] == "failed" and "allow_replace" in d["error"]
    assert videos["short"] not in d["error"]
    recs = records(kafka_bootstrap, names)
    assert len(segments_of(recs, "cam")) == 4 and {r.uri for r in segments_of(recs, "cam").values()} == {
        videos["short"]
    }
    assert w.terminate() == 0

    # Allowed by the operator: the rerun replaces the stream's results everywhere.
    w = workers(cfg, "b", "--set", "kafka.jobs.allow_replace=true", "--set", f"output.dir={tmp_path / 'out-a'}")
    send_jobs(kafka_bootstrap, names.jobs, [{"stream_id": "cam", "uri": other}], partition=0)
    w.wait_log(r"stream cam done \(ok\)")
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and {s.uri for s in summaries_of(r, "cam")} == {other} and r,
        60,
        "the new version's summary",
    )
    segs = segments_of(recs, "cam")
    assert sorted(segs) == [0, 1] and {r.uri for r in segs.values()} == {other}
    assert len({r.stream_version for r in segs.values()}) == 1
    (summary,) = summaries_of(recs, "cam")
    assert summary.segment_count == 2 and summary.stream_version == segs[0].stream_version
    parquet = read_table(tmp_path / "out-a", "segments").to_pandas()
    assert sorted(parquet.segment_index) == [0, 1] and set(parquet.uri) == {other}
    assert w.terminate() == 0


def test_killed_worker_is_resumed_by_another_from_the_snapshot(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos
):
    from vmstream.kafka.readers import RecordConsumer

    names = kafka_topics(partitions=2)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group, **LONG)
    ref = reference(tiny_ckpt, videos["long"], tmp_path, **LONG)
    total = len(ref[0])
    a = workers(cfg, "a")
    a.wait_log(r"assigned partitions \[\S")
    sid = "cam-long"
    with RecordConsumer(kafka_bootstrap, [names.segments], from_beginning=True) as c:
        send_jobs(kafka_bootstrap, names.jobs, [{"stream_id": sid, "uri": videos["long"]}])
        seen = 0
        budget = Budget(90)
        while seen < 6:
            assert not budget.spent(), "no results from worker a"
            seen += sum(isinstance(r, SegmentResult) for r in c.poll(0.05))
        a.proc.send_signal(signal.SIGSTOP)  # frozen mid-stream: nothing more from it
    first = segments_of(records(kafka_bootstrap, names), sid)
    assert 6 <= len(first) < total, "worker a finished before it could be stopped; make the video longer"
    a.kill()
    b = workers(cfg, "b")
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, sid) and r,
        120,
        "worker b to finish the stream",
    )
    assert_matches_reference(recs, sid, ref)
    # b resumed from a snapshot instead of starting over: it skipped the segments
    # before it, so fewer than `total` segments were made again.
    m = b.wait_log(r"stream cam-long: resuming at segment (\d+)")
    resumed_at = int(m.group(1))
    assert 2 <= resumed_at <= len(first)
    raw = [r for r in records(kafka_bootstrap, names, dedupe=False) if isinstance(r, SegmentResult)]
    assert len(raw) == len(first) + total - resumed_at
    assert b.terminate() == 0


def test_two_workers_share_the_jobs(tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos):
    from vmstream.store.results import read_table

    names = kafka_topics(partitions=4)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group)
    a = workers(cfg, "a")
    a.wait_log(r"assigned partitions \[\S")
    b = workers(cfg, "b")
    b.wait_log(r"assigned partitions \[\S")  # the group has settled: two partitions each
    sids = [f"s{p}-{i}" for p in range(4) for i in range(2)]
    for sid in sids:
        send_jobs(kafka_bootstrap, names.jobs, [{"stream_id": sid, "uri": videos["short"]}], partition=int(sid[1]))
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and all(summaries_of(r, s) for s in sids) and r,
        120,
        "every stream's summary",
    )
    ref = reference(tiny_ckpt, videos["short"], tmp_path)
    for sid in sids:
        assert_matches_reference(recs, sid, ref)  # exactly one summary each: done once
    done_by = {}
    for name in ("a", "b"):
        seg = read_table(tmp_path / f"out-{name}", "segments").to_pandas()
        done_by[name] = set(seg.stream_id)
    assert done_by["a"] and done_by["b"], f"one worker got no work: {done_by}"
    assert done_by["a"].isdisjoint(done_by["b"]) and done_by["a"] | done_by["b"] == set(sids)
    wait_until(
        lambda: committed(kafka_bootstrap, group, names.jobs) == {p: 2 for p in range(4)}, 30, "all offsets committed"
    )
    assert a.terminate() == 0 and b.terminate() == 0


class Intruder:
    """A plain consumer joining the workers' group (cooperative-sticky, like them):
    its arrival makes a worker give a partition up; it never commits, and when it
    leaves the partition goes on to a worker."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        import threading

        from kafka import KafkaConsumer
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            partition_assignment_strategy=[CooperativeStickyAssignor],
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        self.consumer.subscribe([topic])
        self.assigned: set = set()
        self.generation = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.consumer.poll(100)  # may fetch the job; never commits it
            self.assigned = {tp.partition for tp in self.consumer.assignment()}
            self.generation = self.consumer.group_metadata().generation_id
        self.consumer.close(autocommit=False)

    def leave(self):
        self._stop.set()
        self._thread.join(30)


def test_rebalance_hands_a_running_job_over(
    tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos, slow_http
):
    """A runs two long jobs on two partitions. A new group member arrives: A gives one
    partition up, cancelling its job (snapshot saved, offset not committed) while the
    other job runs on undisturbed. The partition then reaches worker b, which resumes
    the job from A's snapshot. Both streams end complete and equal to uninterrupted
    runs. The jobs read the video over HTTP at a fixed pace (about 12 s each), so the
    rebalance lands mid-stream however fast this machine is."""
    from vmstream.kafka.readers import RecordConsumer

    names = kafka_topics(partitions=2)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group, **LONG)
    ref = reference(tiny_ckpt, videos["long"], tmp_path, **LONG)
    a = workers(cfg, "a")
    a.wait_log(r"assigned partitions \[\S")
    with RecordConsumer(kafka_bootstrap, [names.segments], from_beginning=True) as c:
        for p in (0, 1):
            url = slow_http.serve(videos["long"], seconds=12)
            send_jobs(kafka_bootstrap, names.jobs, [{"stream_id": f"p{p}", "uri": url}], partition=p)
        seen: dict[str, int] = {}
        budget = Budget(90)
        while min(seen.get("p0", 0), seen.get("p1", 0)) < 3:
            assert not budget.spent(), "no results from worker a"
            for r in c.poll(0.05):
                if isinstance(r, SegmentResult):
                    seen[r.stream_id] = seen.get(r.stream_id, 0) + 1
    intruder = Intruder(kafka_bootstrap, group, names.jobs)
    try:
        m = a.wait_log(r"job \S+\[(\d)\]@0: stream (p[01]) handed over \((\w+)\)", timeout=30)
        moved_partition, moved, status = int(m.group(1)), m.group(2), m.group(3)
        assert status == "stopped", "the job finished before the rebalance; make the video longer"
        stayed = "p1" if moved == "p0" else "p0"
        wait_until(lambda: intruder.assigned == {moved_partition}, 30, "the new member to get the partition")
        # Not committed: the job is unfinished, so whoever owns the partition next gets it.
        assert committed(kafka_bootstrap, group, names.jobs)[moved_partition] is None
        generation = intruder.generation
        b = workers(cfg, "b")
        # b has joined once the group moved to a newer generation; only then does the
        # intruder leave, so its partition goes to b (a keeps its one).
        wait_until(lambda: intruder.generation > generation, 60, "worker b to join the group")
    finally:
        intruder.leave()
    b.wait_log(rf"stream {moved}: resuming at segment \d+", timeout=60)
    slow_http.unthrottle()  # the handover is done; no need to wait out the pace
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, "p0") and summaries_of(r, "p1") and r,
        120,
        "both streams to finish",
    )
    for sid in ("p0", "p1"):
        assert_matches_reference(recs, sid, ref)
    b.wait_log(rf"stream {moved} done \(ok\)")
    a.wait_log(rf"stream {stayed} done \(ok\)")
    assert f"stream {stayed}: resuming" not in a.log() + b.log()  # the other job ran on undisturbed
    wait_until(lambda: committed(kafka_bootstrap, group, names.jobs) == {0: 1, 1: 1}, 30, "both offsets committed")
    assert a.terminate() == 0 and b.terminate() == 0


def test_sigterm_stops_cleanly_and_the_job_resumes(tmp_path, kafka_bootstrap, kafka_topics, workers, tiny_ckpt, videos):
    """SIGTERM mid-stream: snapshot saved, results flushed, the job's offset NOT
    committed, the group left; the next worker resumes where it stopped."""
    from vmstream.kafka.readers import RecordConsumer
    from vmstream.kafka.state import KafkaStateStore

    names = kafka_topics(partitions=1)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, group, **LONG)
    ref = reference(tiny_ckpt, videos["long"], tmp_path, **LONG)
    a = workers(cfg, "a")
    a.wait_log(r"assigned partitions \[\S")
    sid = "cam-term"
    with RecordConsumer(kafka_bootstrap, [names.segments], from_beginning=True) as c:
        send_jobs(kafka_bootstrap, names.jobs, [{"stream_id": sid, "uri": videos["long"]}])
        seen = 0
        budget = Budget(90)
        while seen < 4:
            assert not budget.spent(), "no results from worker a"
            seen += sum(isinstance(r, SegmentResult) for r in c.poll(0.05))
    assert a.terminate() == 0
    first = segments_of(records(kafka_bootstrap, names), sid)
    assert len(first) < len(ref[0]), "worker a finished before SIGTERM; make the video longer"
    assert committed(kafka_bootstrap, group, names.jobs) == {0: None}
    with KafkaStateStore(kafka_bootstrap, names.state) as store:
        snap = store.load(sid)
    # The stop snapshot covers every result a flushed: nothing after it was lost.
    assert snap is not None and snap["next_index"] == len(first) == max(first) + 1
    b = workers(cfg, "b")
    recs = wait_until(
        lambda: (r := records(kafka_bootstrap, names)) and summaries_of(r, sid) and r,
        120,
        "worker b to finish the stream",
    )
    assert_matches_reference(recs, sid, ref)
    b.wait_log(rf"stream {sid}: resuming at segment {snap['next_index']}\b")
    raw = [r for r in records(kafka_bootstrap, names, dedupe=False) if isinstance(r, SegmentResult)]
    assert len(raw) == len(ref[0])  # a clean stop repeats nothing
    assert b.terminate() == 0


@pytest.mark.slow
def test_broker_outage_delays_results_and_loses_none(
    tmp_path, make_kafka_broker, kafka_topics, workers, tiny_ckpt, videos
):
    """The broker goes away mid-stream and comes back: the worker waits (results and
    snapshots held, commits retried) and then completes the job, every segment there."""
    from vmstream.kafka.readers import RecordConsumer

    broker = make_kafka_broker()
    bootstrap = broker.bootstrap
    names = kafka_topics(partitions=1, bootstrap=bootstrap)
    group = f"g-{names.jobs}"
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, bootstrap, names, group, **LONG)
    ref = reference(tiny_ckpt, videos["long"], tmp_path, **LONG)
    a = workers(cfg, "a")
    a.wait_log(r"assigned partitions \[\S")
    sid = "cam-outage"
    with RecordConsumer(bootstrap, [names.segments], from_beginning=True) as c:
        send_jobs(bootstrap, names.jobs, [{"stream_id": sid, "uri": videos["long"]}])
        seen = 0
        budget = Budget(90)
        while seen < 3:
            assert not budget.spent(), "no results from the worker"
            seen += sum(isinstance(r, SegmentResult) for r in c.poll(0.05))
    broker.stop()
    # Long enough for the consumer's metadata refreshes and coordinator lookups to fail
    # (kafka-python 3 raises those out of poll; the worker must ride them out).
    time.sleep(8)
    assert a.proc.poll() is None and "stopping:" not in a.log(), (
        "the worker stopped with the broker:\n" + a.log()[-3000:]
    )
    broker.start()
    try:
        recs = wait_until(
            lambda: (r := records(bootstrap, names)) and summaries_of(r, sid) and r,
            180,
            "the stream's summary after the outage",
        )
    except AssertionError as e:
        raise AssertionError(f"{e}; the worker's log:\n{a.log()[-6000:]}") from None
    assert_matches_reference(recs, sid, ref)
    wait_until(lambda: committed(bootstrap, group, names.jobs) == {0: 1}, 60, "the job's offset committed")
    assert a.terminate() == 0


def test_start_errors_are_one_clear_line(tmp_path, kafka_bootstrap, kafka_topics, tiny_ckpt):
    names = kafka_topics(partitions=1)
    cfg = write_config(tmp_path / "w.yaml", tiny_ckpt, kafka_bootstrap, names, f"g-{names.jobs}")
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pth")], "missing.pth"),
        (["--set", "kafka.consumer.enable_auto_commit=true"], "auto-commit"),
        (["--set", "kafka.client.sasl_mechanizm=PLAIN"], "did you mean sasl_mechanism"),
    ]
    for extra, message in cases:
        r = subprocess.run(
            [sys.executable, "-m", "vmstream.cli", "worker", "--config", str(cfg), *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
