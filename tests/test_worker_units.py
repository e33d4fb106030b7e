"""The worker's pure parts: offset bookkeeping, job parsing, dead-letter payloads,
consumer options. No broker needed."""
from __future__ import annotations

import json
import random

import pytest

from vmstream.pipeline.cli import UserError
from vmstream.pipeline.config import load_config
from vmstream.pipeline.worker import OffsetLedger, Worker, _Job, dead_letter_payload, parse_job


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

    job = _Job(1, TP("jobs", 2), 17, b"cam-1", b'{"stream_id": "cam-1", "uri": "/nope.mp4"}', [], 1234)
    job.source = source_from_job(json.loads(job.value))
    d = json.loads(dead_letter_payload(job, "failed", "/nope.mp4: no such file", worker_id="h:1", group_id="g"))
    assert d["reason"] == "failed" and "no such file" in d["error"]
    assert d["job"] == {"stream_id": "cam-1", "uri": "/nope.mp4"} and d["stream_id"] == "cam-1"
    assert d["source"] == {"topic": "jobs", "partition": 2, "offset": 17, "timestamp_ms": 1234, "key": "cam-1"}
    assert d["worker"] == "h:1" and d["group_id"] == "g"

    bad = _Job(2, TP("jobs", 0), 3, None, b"\xff\x00binary", [], None)
    d = json.loads(dead_letter_payload(bad, "bad_message", "not UTF-8", worker_id="h:1", group_id="g"))
    assert d["job"]["base64"] and d["stream_id"] is None and d["source"]["key"] is None

    big = _Job(3, TP("jobs", 0), 4, None, b'"' + b"x" * (600 << 10) + b'"', [], None)
    raw = dead_letter_payload(big, "bad_message", "too big", worker_id="h:1", group_id="g")
    assert len(raw) < 300 << 10 and json.loads(raw)["job_truncated"] is True


def _cfg(**kafka):
    return load_config(overrides={"kafka": {"bootstrap": "127.0.0.1:1", **kafka}})


def test_consumer_options_pass_through_and_refuse_auto_commit():
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    w = Worker(_cfg(consumer={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}), install_signals=False)
    opts = w._consumer_options()
    assert opts["session_timeout_ms"] == 6000 and opts["enable_auto_commit"] is False
    assert opts["partition_assignment_strategy"] == [CooperativeStickyAssignor]
    assert opts["group_id"] == "vmstream-workers" and opts["auto_offset_reset"] == "earliest"
    w = Worker(_cfg(consumer={"partition_assignment_strategy": ["range"]}), install_signals=False)
    assert w._consumer_options()["partition_assignment_strategy"] == [RangePartitionAssignor]
    with pytest.raises(UserError, match="auto-commit"):
        Worker(_cfg(consumer={"enable_auto_commit": True}), install_signals=False)._consumer_options()
    with pytest.raises(UserError, match="session_timout_ms"):
        Worker(_cfg(consumer={"session_timout_ms": 6000}), install_signals=False)._consumer_options()
    with pytest.raises(UserError, match="unknown assignor"):
        Worker(_cfg(consumer={"partition_assignment_strategy": "fair"}), install_signals=False)._consumer_options()


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
    from vmstream.pipeline.app import build_runner
    from vmstream.records import SegmentResult
    from vmstream.stages.sinks.base import Sink
    from vmstream.stages.sources import resolve_sources

    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": make_tiny_model(seed=3).state_dict()}, ckpt)
    video = make_video(str(tmp_path / "v.mp4"), fps=10, seconds=150, gop=20, size=(64, 48))
    cfg = load_config(overrides={
        "model": {"checkpoint": str(ckpt), "name": None, "max_batch": 1},
        "decode": {"fps": 4.0, "img_size": 32},
        "output": {"dir": str(tmp_path / "out"), "console": False, "parquet": False, "faiss": False},
        "runner": {"progress": False, "snapshot_every": 0, "queue_size": 8},
    })

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
