"""The jobs topic's consumer (JobConsumer) on its own: what it does with kafka-python's
errors and its pause / seek calls. The kafka-python consumer under it is a stand-in
raising the errors a broker outage or a group's churn makes it raise (seen in
test_worker.py's real outage and rebalance tests), which a live broker cannot be made
to raise on cue."""

from __future__ import annotations

import threading

import pytest
from kafka import TopicPartition
from kafka import errors as E

from vmstream.pipeline.worker.consumer import JobConsumer, broker_trouble

TP0, TP1 = TopicPartition("jobs", 0), TopicPartition("jobs", 1)


class Record:
    def __init__(self, offset):
        self.offset = offset


class KafkaConsumer:
    """kafka-python's KafkaConsumer calls, each answering from `outcomes` (an exception
    is raised) and recording what was asked."""

    def __init__(self, outcomes=(), assigned=()):
        self.outcomes = list(outcomes)
        self.assigned = set(assigned)
        self.paused_tps: set = set()
        self.calls: list = []

    def _next(self, default):
        got = self.outcomes.pop(0) if self.outcomes else default
        if isinstance(got, BaseException):
            raise got
        return got

    def poll(self, timeout_ms, max_records):
        self.calls.append(("poll", timeout_ms, max_records))
        return self._next({})

    def commit(self, offsets, timeout_ms):
        self.calls.append(("commit", {tp.partition: o.offset for tp, o in offsets.items()}, timeout_ms))
        return self._next(None)

    def assignment(self):
        return set(self.assigned)

    def pause(self, *tps):
        self.paused_tps.update(tps)

    def paused(self):
        return set(self.paused_tps)

    def resume(self, *tps):
        self.paused_tps.difference_update(tps)

    def seek(self, tp, offset):
        self.calls.append(("seek", tp.partition, offset))


def consumer(kc, **kw) -> JobConsumer:
    return JobConsumer(kc, worker_id="h:1", stopping=threading.Event(), retry_wait_s=0.01, **kw)


def test_poll_rides_out_broker_errors_and_raises_real_ones(caplog):
    """kafka-python 3 raises connection errors out of poll() while the broker is away
    (seen in the real outage test): the worker must wait and poll again, not stop."""
    kc = KafkaConsumer(
        [
            E.KafkaConnectionError("111 ECONNREFUSED"),
            E.KafkaTimeoutError(),
            ConnectionRefusedError(111),
            {"tp": ["m"]},
            E.IllegalStateError("a bug, not an outage"),
        ]
    )
    c = consumer(kc)
    with caplog.at_level("INFO", logger="vmstream.pipeline.worker"):
        assert [c.poll(0.01, 1) for _ in range(4)] == [{}, {}, {}, {"tp": ["m"]}]
    warned = [r for r in caplog.records if "retrying while the broker is away" in r.getMessage()]
    assert len(warned) == 1  # one warning per outage, not one per poll
    assert any("after 3 failed poll(s)" in r.getMessage() for r in caplog.records)
    with pytest.raises(E.IllegalStateError):
        c.poll(0.01, 1)


def test_a_stop_request_cuts_the_wait_after_a_failed_poll():
    c = JobConsumer(KafkaConsumer([E.KafkaConnectionError("down")]), worker_id="h:1", stopping=threading.Event())
    c.retry_wait_s = 3600.0
    c.stopping.set()  # the worker was asked to stop: the failed poll must not hold it an hour
    assert c.poll(0.01, 1) == {}


def test_commit_leaves_offsets_pending_on_broker_trouble_and_group_churn(caplog):
    kc = KafkaConsumer([E.KafkaConnectionError("away"), E.CommitFailedError("rebalanced"), None])
    c = consumer(kc, commit_timeout_s=2.5)
    assert c.commit({TP0: 5}) is False
    with caplog.at_level("ERROR", logger="vmstream.pipeline.worker"):
        assert c.commit({TP0: 5}, final=True) is False
    assert any("committing offsets jobs[0]=5" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert c.commit({TP0: 5, TP1: 2}) is True
    assert [call for call in kc.calls if call[0] == "commit"] == [
        ("commit", {0: 5}, 2500),
        ("commit", {0: 5}, 2500),
        ("commit", {0: 5, 1: 2}, 2500),
    ]
    kc.outcomes = [E.IllegalStateError("a bug")]
    with pytest.raises(E.IllegalStateError):
        c.commit({TP0: 6})


def test_heartbeat_takes_nothing_and_puts_back_what_arrives():
    """Full, the worker polls only to stay in the group: every partition paused, and a
    record from a partition assigned meanwhile goes back for later."""
    kc = KafkaConsumer([{TP1: [Record(4), Record(5)]}], assigned={TP0})
    c = consumer(kc)
    c.heartbeat(0.1)
    assert ("poll", 100, 1) in kc.calls and ("seek", 1, 4) in kc.calls
    assert kc.paused() == {TP0, TP1}
    c.resume()
    assert kc.paused() == set()
    c.put_back(TP0, 9)
    assert kc.calls[-1] == ("seek", 0, 9) and kc.paused() == {TP0}


def test_what_counts_as_the_brokers_trouble():
    assert broker_trouble(ConnectionResetError())
    assert broker_trouble(E.KafkaTimeoutError())  # retriable
    assert not broker_trouble(E.IllegalStateError())
    assert broker_trouble(E.CommitFailedError(), also=(E.CommitFailedError,))
    assert not broker_trouble(ValueError("no"))
