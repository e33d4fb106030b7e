"""`vmstream index` end to end on the real broker: results produced by real runs and
workers (tiny checkpoint, tiny encoded videos), the indexer as a real subprocess (so it
can be SIGKILLed), the store it builds compared with the one `vmstream run` writes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.kafka.test_worker import PIPELINE, send_jobs, wait_until, workers, write_config  # noqa: F401,F811 (workers: a fixture)
from vmstream.records import SegmentResult, segment_uid

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def ref_config(ckpt: str, out: Path, bootstrap=None, names=None, **over) -> dict:
    cfg = {
        "model": {"checkpoint": ckpt, "name": None, "top_k": 3, "device": "cpu"},
        "output": {"dir": str(out), "console": False},
        "decode": dict(PIPELINE["decode"]),
        "runner": dict(PIPELINE["runner"]),
    }
    if bootstrap:
        cfg["kafka"] = {
            "bootstrap": bootstrap,
            "results_topic": names.segments,
            "events_topic": names.events,
            "summaries_topic": names.summaries,
            "state_topic": names.state,
            "dead_letter_topic": names.dead_letter,
            "jobs_topic": names.jobs,
        }
    for section, values in over.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def run_reference(ckpt: str, jobs: list, out: Path, bootstrap=None, names=None, **over):
    """`vmstream run --out OUT` of the jobs, in process (the worker's pipeline settings);
    with a broker, its results also go to the topics `names`."""
    from vmstream.pipeline.assembly import build_runner
    from vmstream.pipeline.config import load_config
    from vmstream.stages.sources import resolve_sources

    cfg = load_config(overrides=ref_config(ckpt, out, bootstrap, names, **over))
    report = build_runner(cfg).run(resolve_sources(jobs))
    assert report.streams_failed == 0


def indexer_config(path: Path, bootstrap: str, names) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap": bootstrap,
                    "results_topic": names.segments,
                    "events_topic": names.events,
                    "summaries_topic": names.summaries,
                    "state_topic": names.state,
                    "dead_letter_topic": names.dead_letter,
                    "jobs_topic": names.jobs,
                    "indexer_group_id": f"idx-{names.jobs}",
                }
            }
        )
    )
    return path


class IndexerProc:
    def __init__(self, config: Path, out: Path, log_path: Path, *extra: str):
        self.log_path = log_path
        self._log = open(log_path, "a")
        self.starts = (log_path.read_text().count("indexing ") if log_path.exists() else 0) + 1
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmstream.cli",
                "index",
                "--config",
                str(config),
                "--out",
                str(out),
                "--commit-interval",
                "0.2",
                *extra,
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"indexer exited ({self.proc.returncode}):\n{self.log()[-4000:]}")

    def started(self) -> bool:
        self.check_alive()
        return self.log().count("indexing ") >= self.starts

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()


@pytest.fixture
def indexers():
    made: list[IndexerProc] = []

    def start(*args, **kw) -> IndexerProc:
        made.append(IndexerProc(*args, **kw))
        return made[-1]

    yield start
    for p in made:
        if p.proc.poll() is None:
            p.kill()


def end_offsets(bootstrap: str, topics: list) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t))]
        return {f"{tp.topic}:{tp.partition}": o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


def consumed(out: Path) -> dict:
    from vmstream.pipeline.indexer import read_consumer

    rec = read_consumer(out)
    return (rec or {}).get("offsets", {})


def wait_indexed(out: Path, bootstrap: str, names, proc: IndexerProc, timeout: float = 120) -> None:
    """Until the store's committed offsets reach the topics' ends now."""
    topics = [names.segments, names.events, names.summaries]
    ends = end_offsets(bootstrap, topics)
    wait_until(proc.started, 60, "the indexer to start")

    def done():
        proc.check_alive()
        have = consumed(out)
        return all(have.get(k, 0) >= v for k, v in ends.items())

    wait_until(done, timeout, f"the indexer to reach {ends}")


def store_view(out: Path) -> dict:
    """What a reader sees of a store (either backend): the ids, vectors and id-map rows;
    the de-duplicated Parquet rows of every table."""
    from vmstream.store import open_store
    from vmstream.store.results import read_table

    with open_store(out / "index", readonly=True) as s:
        ids, vecs = s.live_vectors()
        view = {
            "ids": ids.tolist(),
            "vectors": vecs,
            "idmap": s.id_rows(),
            "metric": s.meta.get("metric"),
            "model": s.meta.get("model"),
            "dim": s.meta.get("dim"),
        }
    view["segments"] = sorted(read_table(out, "segments").to_pylist(), key=lambda r: r["uid"])
    view["summaries"] = sorted(read_table(out, "summaries").to_pylist(), key=lambda r: r["stream_id"])
    view["events"] = sorted(json.dumps(r, sort_keys=True, default=str) for r in read_table(out, "events").to_pylist())
    return view


def _approx_rows(rows: list) -> list:
    """Rows with their float lists as pytest.approx: the model run in other processes,
    batched with other streams, gives scores that differ in the last bits."""
    return [
        {
            k: (pytest.approx(v, rel=1e-5, abs=1e-6) if isinstance(v, list) and v and isinstance(v[0], float) else v)
            for k, v in r.items()
        }
        for r in rows
    ]


def assert_same_store(got: dict, want: dict, *, exact: bool = True) -> None:
    """`exact`: the same records indexed (bit for bit); else results of the same videos
    computed elsewhere (workers), floats to a tolerance."""
    assert got["ids"] == want["ids"]
    assert len(got["ids"]) == len(set(got["ids"]))
    assert (got["metric"], got["model"], got["dim"]) == (want["metric"], want["model"], want["dim"])
    assert [r["uid"] for r in got["segments"]] == want["ids"]  # every segment exactly once
    if exact:
        np.testing.assert_array_equal(got["vectors"], want["vectors"])
        assert got["idmap"] == want["idmap"]
        assert got["segments"] == want["segments"]
        assert got["summaries"] == want["summaries"]
        assert got["events"] == want["events"]
    else:
        np.testing.assert_allclose(got["vectors"], want["vectors"], rtol=1e-5, atol=1e-5)
        assert got["idmap"] == _approx_rows(want["idmap"])
        assert got["segments"] == _approx_rows(want["segments"])
        assert got["summaries"] == _approx_rows(want["summaries"])
        assert len(got["events"]) == len(want["events"])


def make_topics(bootstrap: str, partitions: int = 3):
    import uuid

    from vmstream.kafka.topics import TopicNames, ensure_topics, vmstream_topics

    names = TopicNames.with_prefix(f"t{uuid.uuid4().hex[:10]}")
    ensure_topics(bootstrap, vmstream_topics(names, partitions=partitions))
    return names


def six_jobs(d: Path) -> list:
    from tests.fixtures.media import make_video

    jobs = []
    for i in range(6):
        path = make_video(str(d / f"v{i}.mp4"), fps=10, seconds=2 + (i % 3), gop=20, size=(64, 48), noise=i * 3)
        jobs.append({"stream_id": f"cam-{i}", "uri": path})
    return jobs


@pytest.fixture(scope="module")
def produced(tmp_path_factory, kafka_bootstrap, tiny_ckpt):
    """Six videos run once by `vmstream run` with its results also sent to Kafka: the
    topics an indexer reads, and the store the run wrote (the reference)."""
    from vmstream.kafka.topics import delete_topics

    d = tmp_path_factory.mktemp("indexer")
    names = make_topics(kafka_bootstrap)
    jobs = six_jobs(d)
    run_reference(tiny_ckpt, jobs, d / "ref", kafka_bootstrap, names)
    yield {"names": names, "ref": d / "ref", "jobs": jobs, "view": store_view(d / "ref")}
    delete_topics(kafka_bootstrap, names.all(), timeout_s=10)


# --------------------------------------------------------------------------- tests


def backend_args(backend: str, tmp_path: Path) -> list:
    if backend == "faiss":
        return []
    pytest.importorskip("milvus_lite")
    return ["--set", "output.store.backend=milvus", "--set", f"output.store.uri={tmp_path / 'store.db'}"]


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_the_indexer_builds_the_store_run_writes(tmp_path, kafka_bootstrap, produced, indexers, backend):
    names = produced["names"]
    out = tmp_path / "store"
    p = indexers(
        indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names),
        out,
        tmp_path / "i.log",
        *backend_args(backend, tmp_path),
    )
    wait_indexed(out, kafka_bootstrap, names, p)
    assert p.terminate() == 0
    assert len(produced["view"]["ids"]) >= 12
    assert_same_store(store_view(out), produced["view"])
    # Its progress is also the group's (a hint for monitoring tools).
    from tests.kafka.test_worker import committed

    group_offsets = committed(kafka_bootstrap, f"idx-{names.jobs}", names.segments)
    ends = end_offsets(kafka_bootstrap, [names.segments])
    assert {f"{names.segments}:{p}": o for p, o in group_offsets.items()} == ends


def copy_records(bootstrap: str, src, dst, times: int = 1) -> None:
    """The results on topics `src` sent again to `dst`, `times` over, each to its
    partition: the duplicates an at-least-once producer makes after retries and resumes."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for _ in range(times):
            for s, d in ((src.segments, dst.segments), (src.events, dst.events), (src.summaries, dst.summaries)):
                for m in _raw_messages(bootstrap, [s]):
                    prod.send(d, m.value, key=m.key, headers=m.headers, partition=m.partition)
        prod.flush(60)
    finally:
        prod.close()


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_sigkill_at_five_random_points_gives_the_same_store(tmp_path, kafka_bootstrap, produced, indexers, backend):
    from vmstream.kafka.topics import delete_topics

    names = make_topics(kafka_bootstrap)
    try:
        copy_records(kafka_bootstrap, produced["names"], names, times=3)
        _sigkill_five_times(tmp_path, kafka_bootstrap, names, produced, indexers, backend_args(backend, tmp_path))
    finally:
        delete_topics(kafka_bootstrap, names.all(), timeout_s=10)


def _sigkill_five_times(tmp_path, kafka_bootstrap, names, produced, indexers, extra):
    out = tmp_path / "store"
    cfg = indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names)
    topics = [names.segments, names.events, names.summaries]
    total = sum(end_offsets(kafka_bootstrap, topics).values())
    rng = random.Random(int(os.environ.get("VMSTREAM_TEST_SEED", "0")) or None)
    kills = []
    # Increasing targets, so every restart gets further before its kill.
    for fraction in sorted(rng.uniform(0.05, 0.95) for _ in range(5)):
        # Small commit cycles, so a kill lands between commits, inside one, or mid-write.
        p = indexers(cfg, out, tmp_path / "i.log", "--commit-records", "1", *extra)
        target = fraction * total

        def reached(p=p, target=target):
            p.check_alive()
            return sum(consumed(out).values()) >= target

        wait_until(reached, 90, "indexer progress", every=0.05)
        time.sleep(rng.uniform(0, 0.02))
        p.kill()
        kills.append(sum(consumed(out).values()))
    p = indexers(cfg, out, tmp_path / "i.log", *extra)
    wait_indexed(out, kafka_bootstrap, names, p)
    assert p.terminate() == 0
    assert_same_store(store_view(out), produced["view"])
    assert sum(0 < k < total for k in kills) >= 3, f"too few kills landed mid-way: {kills} of {total}"


def _raw_messages(bootstrap: str, topics: list) -> list:
    from vmstream.kafka.readers import read_messages

    return read_messages(bootstrap, topics, timeout_s=30)


def test_a_poison_record_is_dead_lettered_and_the_indexer_goes_on(tmp_path, kafka_bootstrap, produced, indexers):
    from kafka import KafkaProducer

    from vmstream.kafka.codec import encode_record
    from vmstream.kafka.readers import read_messages

    src = produced["names"]
    names = make_topics(kafka_bootstrap)
    msgs = _raw_messages(kafka_bootstrap, [src.segments])
    good = [m for m in msgs if m.key == b"cam-0"]
    wrong_dim = SegmentResult(
        stream_id="cam-9",
        segment_index=0,
        t_start=0.0,
        t_end=1.0,
        labels=[],
        scores=[],
        label_ids=[],
        embedding=np.ones(7, np.float32),
        stream_version="x",
    )
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        half = len(good) // 2
        for m in good[:half]:
            prod.send(names.segments, m.value, key=m.key, headers=m.headers, partition=0)
        prod.send(names.segments, b"\x00not a record", key=b"cam-0", partition=0)
        enc = encode_record(wrong_dim)
        prod.send(names.segments, enc.value, key=enc.key, headers=enc.headers, partition=0)
        for m in good[half:]:
            prod.send(names.segments, m.value, key=m.key, headers=m.headers, partition=0)
        prod.flush(30)
    finally:
        prod.close()
    out = tmp_path / "store"
    p = indexers(indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names), out, tmp_path / "i.log")
    wait_indexed(out, kafka_bootstrap, names, p)
    assert p.terminate() == 0
    view = store_view(out)
    want = sorted(segment_uid("cam-0", i) for i in range(len(good)))
    assert view["ids"] == want and [r["uid"] for r in view["segments"]] == want
    dead = [json.loads(m.value) for m in read_messages(kafka_bootstrap, [names.dead_letter], timeout_s=30)]
    assert [d["reason"] for d in dead] == ["bad_record", "refused"]
    assert dead[0]["source"]["topic"] == names.segments and dead[0]["source"]["offset"] == half
    assert "7" in dead[1]["error"] and "cam-9" in dead[1]["error"], dead[1]["error"]
    assert dead[1]["record"]["stream_id"] == "cam-9"


def test_a_stream_resent_with_changed_content_is_replaced(tmp_path, kafka_bootstrap, tiny_ckpt, indexers):
    from tests.fixtures.media import make_video
    from vmstream.kafka.topics import delete_topics

    names = make_topics(kafka_bootstrap)
    try:
        video = tmp_path / "cam.mp4"
        make_video(str(video), fps=10, seconds=5, gop=20, size=(64, 48))
        job = [{"stream_id": "cam", "uri": str(video)}]
        run_reference(tiny_ckpt, job, tmp_path / "run1", kafka_bootstrap, names)
        out = tmp_path / "store"
        p = indexers(indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names), out, tmp_path / "i.log")
        wait_indexed(out, kafka_bootstrap, names, p)
        first = store_view(out)
        assert_same_store(first, store_view(tmp_path / "run1"))
        # The same stream id, other content (shorter, other pixels): a new version.
        time.sleep(1.1)  # a later Kafka timestamp than the first version's records, on any clock
        make_video(str(video), fps=10, seconds=3, gop=20, size=(64, 48), noise=20)
        run_reference(tiny_ckpt, job, tmp_path / "run2", kafka_bootstrap, names)
        wait_indexed(out, kafka_bootstrap, names, p)
        second = store_view(out)
        assert len(second["ids"]) < len(first["ids"])
        assert_same_store(second, store_view(tmp_path / "run2"))
        assert {r["stream_version"] for r in second["segments"]} != {r["stream_version"] for r in first["segments"]}
        assert p.terminate() == 0
        assert_same_store(store_view(out), store_view(tmp_path / "run2"))
    finally:
        delete_topics(kafka_bootstrap, names.all(), timeout_s=10)


def test_two_workers_and_one_indexer_give_the_store_run_writes(
    tmp_path, kafka_bootstrap, produced, workers, indexers, tiny_ckpt
):
    names = make_topics(kafka_bootstrap, partitions=4)
    from vmstream.kafka.topics import delete_topics

    try:
        group = f"g-{names.jobs}"
        cfg = write_config(
            tmp_path / "w.yaml",
            tiny_ckpt,
            kafka_bootstrap,
            names,
            group,
            output={"console": False, "store": {"backend": "none"}},
        )
        a = workers(cfg, "a")
        b = workers(cfg, "b")
        out = tmp_path / "store"
        p = indexers(indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names), out, tmp_path / "i.log")
        a.wait_log(r"assigned partitions \[\S")
        b.wait_log(r"assigned partitions \[\S")
        for i, job in enumerate(produced["jobs"]):
            send_jobs(kafka_bootstrap, names.jobs, [job], partition=i % 4)

        def all_done():
            p.check_alive()
            from vmstream.store.results import read_table

            try:
                return len(read_table(out, "summaries")) == 6
            except FileNotFoundError:
                return False

        wait_until(all_done, 180, "six summaries in the indexer's store")
        wait_indexed(out, kafka_bootstrap, names, p)
        assert p.terminate() == 0
        assert_same_store(store_view(out), produced["view"], exact=False)
        # The workers kept no store of their own.
        for name in ("a", "b"):
            assert not (tmp_path / f"out-{name}" / "segments").exists()
            assert not (tmp_path / f"out-{name}" / "index").exists()
        assert a.terminate() == 0 and b.terminate() == 0
    finally:
        delete_topics(kafka_bootstrap, names.all(), timeout_s=10)


def test_a_worker_killed_mid_job_leaves_every_segment_once_in_the_store(
    tmp_path, kafka_bootstrap, workers, indexers, tiny_ckpt
):
    from tests.fixtures.media import make_video
    from vmstream.kafka.readers import RecordConsumer
    from vmstream.kafka.topics import delete_topics

    names = make_topics(kafka_bootstrap, partitions=2)
    try:
        video = make_video(str(tmp_path / "long.mp4"), fps=10, seconds=40, gop=20, size=(64, 48), faststart=True)
        job = {"stream_id": "cam-long", "uri": video}
        cfg = write_config(
            tmp_path / "w.yaml",
            tiny_ckpt,
            kafka_bootstrap,
            names,
            f"g-{names.jobs}",
            decode={"fps": 8.0},
            output={"console": False, "store": {"backend": "none"}},
        )
        out = tmp_path / "store"
        p = indexers(indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names), out, tmp_path / "i.log")
        a = workers(cfg, "a")
        a.wait_log(r"assigned partitions \[\S")
        with RecordConsumer(kafka_bootstrap, [names.segments], from_beginning=True) as c:
            send_jobs(kafka_bootstrap, names.jobs, [job])
            seen, deadline = 0, time.monotonic() + 90
            while seen < 6:
                assert time.monotonic() < deadline, "no results from worker a"
                seen += sum(isinstance(r, SegmentResult) for r in c.poll(0.05))
        a.kill()  # mid-stream
        b = workers(cfg, "b")
        b.wait_log(r"stream cam-long: resuming at segment (\d+)", timeout=120)

        def finished():
            p.check_alive()
            from vmstream.store.results import read_table

            try:
                return len(read_table(out, "summaries")) == 1
            except FileNotFoundError:
                return False

        wait_until(finished, 180, "the stream's summary in the indexer's store")
        wait_indexed(out, kafka_bootstrap, names, p)
        assert p.terminate() == 0
        run_reference(tiny_ckpt, [job], tmp_path / "ref", decode={"fps": 8.0})
        want = store_view(tmp_path / "ref")
        got = store_view(out)
        assert len(want["ids"]) >= 40
        # Every segment once; the resumed part of the stream continues the state exactly
        # as an uninterrupted run would, so the vectors agree to float tolerance.
        assert got["ids"] == want["ids"] and [r["uid"] for r in got["segments"]] == want["ids"]
        np.testing.assert_allclose(got["vectors"], want["vectors"], rtol=1e-5, atol=1e-5)
        assert [r["segment_count"] for r in got["summaries"]] == [len(want["ids"])]
        assert b.terminate() == 0
    finally:
        delete_topics(kafka_bootstrap, names.all(), timeout_s=10)


def test_shards_split_the_streams_between_indexers(tmp_path, kafka_bootstrap, produced, indexers):
    """--shard I/N: each indexer takes its partitions; a stream is in one, so together
    the shards hold every segment exactly once (what feeds one Milvus collection from
    several indexers)."""
    names = produced["names"]
    cfg = indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names)
    views = []
    for i in range(2):
        out = tmp_path / f"shard{i}"
        p = indexers(cfg, out, tmp_path / f"i{i}.log", "--shard", f"{i}/2")
        topics = [names.segments, names.events, names.summaries]
        ends = {k: v for k, v in end_offsets(kafka_bootstrap, topics).items() if int(k.rsplit(":", 1)[1]) % 2 == i}
        wait_until(p.started, 60, "the indexer to start")
        wait_until(
            lambda ends=ends, out=out: all(consumed(out).get(k, 0) >= v for k, v in ends.items()), 120, "shard indexed"
        )
        assert p.terminate() == 0
        assert set(consumed(out)) == set(ends)
        views.append(store_view(out))
    want = produced["view"]
    ids = sorted(views[0]["ids"] + views[1]["ids"])
    assert ids == want["ids"] and not set(views[0]["ids"]) & set(views[1]["ids"])
    assert views[0]["ids"] and views[1]["ids"]
    streams = [{r["stream_id"] for r in v["segments"]} for v in views]
    assert not streams[0] & streams[1]
    assert sorted(views[0]["segments"] + views[1]["segments"], key=lambda r: r["uid"]) == want["segments"]


def test_versions_are_ordered_by_production_time_not_by_arrival(tmp_path, kafka_bootstrap, indexers):
    """A late record of a replaced version (the topics are read at their own pace) is
    skipped; a re-run of an earlier content after another one replaces it again."""
    from kafka import KafkaProducer

    from vmstream.kafka.codec import encode_record
    from vmstream.kafka.readers import read_messages
    from vmstream.kafka.topics import delete_topics

    names = make_topics(kafka_bootstrap, partitions=1)
    rng = np.random.default_rng(0)

    def rec(i: int, version: str, t: float = 0.0) -> SegmentResult:
        return SegmentResult(
            stream_id="s",
            segment_index=i,
            t_start=float(i),
            t_end=i + 1.0,
            labels=[],
            scores=[],
            label_ids=[],
            embedding=rng.standard_normal(8).astype(np.float32),
            stream_version=version,
        )

    sends = [
        (rec(0, "v1"), 1_000),
        (rec(1, "v1"), 1_001),
        (rec(0, "v2"), 2_000),
        (rec(1, "v2"), 2_001),
        (rec(2, "v1"), 1_500),  # late: produced before v2 started
        (rec(3, "v2"), 2_002),
        (rec(0, "v1"), 3_000),
    ]  # v1's content run again, after v2: replaces v2
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for r, ts in sends:
            enc = encode_record(r)
            prod.send(names.segments, enc.value, key=enc.key, headers=enc.headers, timestamp_ms=ts)
        prod.flush(30)
        out = tmp_path / "store"
        p = indexers(indexer_config(tmp_path / "i.yaml", kafka_bootstrap, names), out, tmp_path / "i.log")
        wait_indexed(out, kafka_bootstrap, names, p)
        held = read_consumer_streams(out)
        assert p.terminate() == 0
        view = store_view(out)
        assert view["ids"] == [segment_uid("s", 0)]
        assert [r["stream_version"] for r in view["segments"]] == ["v1"]
        np.testing.assert_allclose(view["segments"][0]["embedding"], sends[-1][0].embedding, rtol=1e-6)
        assert held == {"s": ["v1", 3_000]}
        assert read_messages(kafka_bootstrap, [names.dead_letter], timeout_s=30) == []  # skipped, not poison
    finally:
        delete_topics(kafka_bootstrap, names.all(), timeout_s=10)


def read_consumer_streams(out: Path) -> dict:
    from vmstream.pipeline.indexer import read_consumer

    return (read_consumer(out) or {}).get("streams", {})
