"""The worker's pure parts: offset bookkeeping, job parsing, dead-letter payloads,
consumer options. No broker needed."""

from __future__ import annotations

import json
import random

import pytest

from vmstream.errors import UserError
from vmstream.pipeline.config import ConfigError, load_config
from vmstream.pipeline.worker.dead_letters import dead_letter_payload
from vmstream.pipeline.worker.jobs import Job, OffsetLedger, parse_job
from vmstream.pipeline.worker.loop import Worker
from vmstream.pipeline.worker.options import consumer_options


class TP:  # stands in for kafka's TopicPartition in payload tests (same two fields)
    def __init__(self, topic, partition):
        self.topic, self.partition = topic, partition


def test_ledger_commits_only_past_finished_prefix():
    led = OffsetLedger()
    for o in (5, 6, 7, 9, 12):  # gaps, as in compacted or transactional logs
        led.add(o)
    assert led.commit_offset() is None  # nothing finished: nothing to commit
    led.finish(6)
    led.finish(7)
    assert led.commit_offset() is None  # 5 is not finished: 6 and 7 must not be committed
    led.finish(5)
    assert led.commit_offset() == 8  # next to read: 8 (a gap, so 9, the unfinished one)
    led.committed(8)
    assert led.commit_offset() is None
    led.finish(12)
    assert led.commit_offset() is None
    led.finish(9)
    assert led.commit_offset() == 13  # all finished: one past the last
    led.committed(13)
    assert led.commit_offset() is None and led.unfinished == []


def test_ledger_rejects_out_of_order_and_ignores_unknown():
    led = OffsetLedger()
    led.add(3)
    with pytest.raises(ValueError):
        led.add(3)
    led.finish(3)
    assert led.commit_offset() == 4
    with pytest.raises(ValueError):  # taken again after it was finished
        led.add(2)
    led.finish(100)  # not taken: no effect
    led.add(4)
    assert led.commit_offset() == 4


def test_ledger_matches_a_brute_force_model():
    rng = random.Random(7)
    for _ in range(200):
        offsets = sorted(rng.sample(range(60), rng.randint(1, 20)))
        led = OffsetLedger()
        for o in offsets:
            led.add(o)
        done, committed = set(), None
        for o in rng.sample(offsets, len(offsets)):
            led.finish(o)
            done.add(o)
            prefix = 0
            while prefix < len(offsets) and offsets[prefix] in done:
                prefix += 1
            want = offsets[prefix - 1] + 1 if prefix else None
            got = led.commit_offset()
            if want is None or want == committed:
                assert got is None
            else:
                assert got == want
                led.committed(got)
                committed = got
        assert led.commit_offset() is None and committed == offsets[-1] + 1


def test_parse_job_errors_name_the_problem():
    assert parse_job(b'{"uri": "/a.mp4"}') == {"uri": "/a.mp4"}
    with pytest.raises(ValueError, match="not JSON"):
        parse_job(b"uri=/a.mp4")
    with pytest.raises(ValueError, match="JSON object"):
        parse_job(b'["/a.mp4"]')
    with pytest.raises(ValueError, match="UTF-8"):
        parse_job(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="empty"):
        parse_job(None)


def test_dead_letter_payload_keeps_the_message_and_its_origin():
    from vmstream.stages.sources import source_from_job

    job = Job(1, TP("jobs", 2), 17, b"cam-1", b'{"stream_id": "cam-1", "uri": "/nope.mp4"}', [], 1234)
    job.source = source_from_job(json.loads(job.value))
    d = json.loads(dead_letter_payload(job, "failed", "/nope.mp4: no such file", worker_id="h:1", group_id="g"))
    assert d["reason"] == "failed" and "no such file" in d["error"]
    assert d["job"] == {"stream_id": "cam-1", "uri": "/nope.mp4"} and d["stream_id"] == "cam-1"
    assert d["source"] == {"topic": "jobs", "partition": 2, "offset": 17, "timestamp_ms": 1234, "key": "cam-1"}
    assert d["worker"] == "h:1" and d["group_id"] == "g"

    bad = Job(2, TP("jobs", 0), 3, None, b"\xff\x00binary", [], None)
    d = json.loads(dead_letter_payload(bad, "bad_message", "not UTF-8", worker_id="h:1", group_id="g"))
    assert d["job"]["base64"] and d["stream_id"] is None and d["source"]["key"] is None

    big = Job(3, TP("jobs", 0), 4, None, b'"' + b"x" * (600 << 10) + b'"', [], None)
    raw = dead_letter_payload(big, "bad_message", "too big", worker_id="h:1", group_id="g")
    assert len(raw) < 300 << 10 and json.loads(raw)["job_truncated"] is True


def _cfg(**kafka):
    return load_config(overrides={"kafka": {"bootstrap": "127.0.0.1:1", **kafka}})


def test_consumer_options_pass_through_and_refuse_auto_commit():
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    opts = consumer_options(_cfg(consumer={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}), "h:1")
    assert opts["session_timeout_ms"] == 6000 and opts["enable_auto_commit"] is False
    assert opts["partition_assignment_strategy"] == [CooperativeStickyAssignor]
    assert opts["group_id"] == "vmstream-workers" and opts["auto_offset_reset"] == "earliest"
    opts = consumer_options(_cfg(consumer={"partition_assignment_strategy": ["range"]}), "h:1")
    assert opts["partition_assignment_strategy"] == [RangePartitionAssignor]
    with pytest.raises(UserError, match="auto-commit"):
        consumer_options(_cfg(consumer={"enable_auto_commit": True}), "h:1")
    with pytest.raises(ConfigError, match="kafka.consumer: unknown kafka-python option 'session_timout_ms'"):
        _cfg(consumer={"session_timout_ms": 6000})  # refused with the config, before any worker
    with pytest.raises(UserError, match="unknown assignor"):
        consumer_options(_cfg(consumer={"partition_assignment_strategy": "fair"}), "h:1")


def test_worker_needs_a_broker():
    with pytest.raises(UserError, match="kafka.bootstrap"):
        Worker(load_config(), install_signals=False)


def test_runner_stop_lands_within_its_bounded_queues(tmp_path, media):
    """A cancel or stop (what a rebalance or SIGTERM does to a worker's streams) takes
    effect after at most the segments the runner's bounded queues hold, not after the
    whole decoded-ahead video. The model is the slow stage here, as in real use."""
    import time as _time

    import torch

    from tests.fixtures.media import make_video
    from tests.fixtures.videomamba import make_tiny_model
    from vmstream.pipeline.assembly import build_runner
    from vmstream.records import SegmentResult
    from vmstream.stages.sinks.base import Sink
    from vmstream.stages.sources import resolve_sources

    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": make_tiny_model(seed=3).state_dict()}, ckpt)
    video = make_video(str(tmp_path / "v.mp4"), fps=10, seconds=150, gop=20, size=(64, 48))
    cfg = load_config(
        overrides={
            "model": {"checkpoint": str(ckpt), "name": None, "max_batch": 1},
            "decode": {"fps": 4.0, "img_size": 32},
            "output": {"dir": str(tmp_path / "out"), "console": False, "parquet": False, "faiss": False},
            "runner": {"progress": False, "snapshot_every": 0, "queue_size": 8},
        }
    )

    class Count(Sink):
        name = "count"

        def __init__(self):
            self.n = 0

        def write(self, r):
            if isinstance(r, SegmentResult):
                self.n += 1
                if self.n == 20:
                    runner.stop()

    sink = Count()
    runner = build_runner(cfg, sinks=[sink])
    process = runner.inference.process

    def slow_model(batch):
        _time.sleep(0.03)  # a model slower than decoding
        return process(batch)

    runner.inference.process = slow_model
    report = runner.run(resolve_sources([video]))
    assert report.stopped
    # seg queue + inference FIFOs (2 * max_batch) + results queue + one in hand
    bound = runner._seg_q.maxsize + 2 + runner._out_q.maxsize + 1
    assert sink.n <= 20 + bound < 150, f"{sink.n} segments after the stop"


# --------------------------------------------------------------------------- the loop's jobs
# The loop's side of taking, deferring, retrying and finishing jobs, with a stand-in
# runner so the order of events is exact. The hand-over alone is test_handover.py, the
# consumer alone test_job_consumer.py; test_worker.py runs them all in real workers.


class _Runner:
    max_streams = 4

    def __init__(self, stops_on_cancel: set):
        self.jobs = {}
        self.cancelled = []
        self.stops_on_cancel = stops_on_cancel

    def running(self):
        return list(self.jobs)

    def submit(self, source, on_done):
        self.jobs[source.stream_id] = (source, on_done)

    def finish(self, sid, status):
        source, on_done = self.jobs.pop(sid)
        on_done(source, status, None)

    def cancel(self, sid):
        self.cancelled.append(sid)
        if sid in self.stops_on_cancel:
            import threading

            threading.Timer(0.05, self.finish, (sid, "stopped")).start()
        return True


class _KafkaConsumer:  # kafka-python's commit_async, the one call these tests make
    def __init__(self):
        self.async_commits = []

    def commit_async(self, offsets):
        from kafka.future import Future

        self.async_commits.append({tp.partition: o.offset for tp, o in offsets.items()})
        f = Future()
        f.success(None)
        return f


class _Msg:
    def __init__(self, offset, sid):
        self.offset, self.key, self.headers, self.timestamp = offset, sid.encode(), [], 0
        self.value = json.dumps({"stream_id": sid, "uri": f"/videos/{sid}.mp4"}).encode()


def _worker_with(stops_on_cancel):
    """A Worker with the parts _start would make, the runner and consumer stood in for."""
    import threading

    from vmstream.pipeline.worker.consumer import JobConsumer
    from vmstream.pipeline.worker.dead_letters import DeadLetters
    from vmstream.pipeline.worker.handover import Handover

    # The jobs of _Msg read /videos (the job policy refuses every local file by default).
    w = Worker(_cfg(jobs={"roots": ["/videos"]}), install_signals=False, revoke_timeout_s=0.5)
    w.runner = _Runner(stops_on_cancel)
    w.consumer = JobConsumer(_KafkaConsumer(), worker_id=w.worker_id, stopping=threading.Event())
    w.dead_letters = DeadLetters(None, "jobs.dead", worker_id=w.worker_id, group_id="g", lock=w.table.lock)
    w.handover = Handover(
        w.table,
        runner=w.runner,
        consumer=w.consumer,
        dead_letters=w.dead_letters,
        stats=w.stats,
        worker_id=w.worker_id,
        revoke_timeout_s=w.revoke_timeout_s,
        sync_wait_s=0.5,
    )
    return w


@pytest.mark.parametrize("listener", ["sync", "async"])
def test_the_loop_and_the_handover_agree_on_revoked_jobs(listener):
    """The worker's loop with its hand-over: what the loop saw finish and what it did
    not are both committed at the revoke; a revoked job's late end is ignored."""
    from kafka import TopicPartition

    from vmstream.pipeline.worker.handover import GuardedStore

    w = _worker_with(stops_on_cancel={"b"})
    saved = []

    class Store:
        def save(self, snap):
            saved.append(snap["stream_id"])

        def delete(self, sid):
            saved.append("-" + sid)

        def load(self, sid):
            return None

    guard = GuardedStore(Store(), w.table)
    tp0, tp1 = TopicPartition("jobs", 0), TopicPartition("jobs", 1)
    for tp, off, sid in [(tp0, 0, "a"), (tp0, 1, "b"), (tp0, 2, "c"), (tp1, 0, "d")]:
        w._take(tp, _Msg(off, sid))
    w.runner.finish("a", "ok")
    w._process_completions()  # a: done, seen by the main loop
    w.runner.finish("c", "ok")  # c: done, not yet seen by the main loop
    revoked = {tp0, tp1}
    if listener == "sync":
        w.handover.on_revoked_sync(revoked)
    else:
        coro = w.handover.on_revoked_async(revoked)
        with pytest.raises(StopIteration):
            coro.send(None)
    assert sorted(w.runner.cancelled) == ["b", "d"]
    # tp0: a done, b cancelled (stopped in time, not done), c done -> commit up to b.
    # tp1: d still stopping -> nothing to commit.
    assert w.consumer.consumer.async_commits == [{0: 1}]
    # b stopped within the wait: its final snapshot was allowed. d did not: fenced.
    assert not w.table.fenced_stream("b") and w.table.fenced_stream("d")
    guard.save({"stream_id": "d"})
    guard.delete("d")
    guard.save({"stream_id": "b"})
    assert saved == ["b"]
    # d's cancel completes later: the fence goes, the completion is ignored.
    w.runner.finish("d", "stopped")
    assert not w.table.fenced_stream("d")
    w._process_completions()
    assert w.table.ledgers == {} and not w.table.jobs


def test_jobs_of_a_stream_still_in_the_runner_wait_their_turn():
    from kafka import TopicPartition

    w = _worker_with(stops_on_cancel=set())
    tp = TopicPartition("jobs", 0)
    w._take(tp, _Msg(0, "g"))
    w._take(tp, _Msg(1, "g"))  # the same stream again: waits for the first
    states = [j.state for j in w.table.jobs.values()]
    assert states == ["running", "deferred"] and w._free_slots() == 4 - 1 - 1
    w.runner.finish("g", "ok")
    w._process_completions()
    w._submit_deferred()
    assert [j.state for j in w.table.jobs.values()] == ["running"] and "g" in w.runner.running()
    w.runner.finish("g", "ok")
    w._process_completions()
    assert w.table.ledgers[tp].commit_offset() == 2


def test_repeat_filter_thins_kafka_noise_only():
    import logging

    from vmstream.pipeline.worker.log_filter import RepeatFilter

    f = RepeatFilter(every_s=60)

    def rec(name, msg, *args):
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    assert f.filter(rec("kafka.net.connection", "%s: Connection lost", "a"))
    assert not f.filter(rec("kafka.net.connection", "%s: Connection lost", "b"))  # same kind, other args
    assert f.filter(rec("kafka.cluster", "Metadata refresh: failed %s", "x"))
    assert all(f.filter(rec("vmstream.pipeline.worker", "job %s done", i)) for i in range(3))
    assert f.suppressed == 1


def test_a_snapshot_that_cannot_be_loaded_is_retried_not_dead_lettered():
    from kafka import TopicPartition

    from vmstream.pipeline.worker.handover import GuardedStore

    class Down:
        def load(self, sid):
            raise TimeoutError("reading Kafka state topic vmstream.state[0] took over 120s")

    w = _worker_with(stops_on_cancel=set())
    w.retry_backoff_s = 0.0
    w.dead_letters = None  # a dead letter here would fail the test
    tp = TopicPartition("jobs", 0)
    w._take(tp, _Msg(0, "x"))
    with pytest.raises(TimeoutError):
        GuardedStore(Down(), w.table).load("x")  # what the runner's decode thread does first
    w.runner.finish("x", "error")
    w._process_completions()
    (job,) = w.table.jobs.values()
    assert job.state == "deferred" and "state topic" in job.error and w.stats.retried == 1
    w._submit_deferred()
    assert job.state == "running" and "x" in w.runner.running()
    w.runner.finish("x", "ok")
    w._process_completions()
    assert w.table.ledgers[tp].commit_offset() == 1
