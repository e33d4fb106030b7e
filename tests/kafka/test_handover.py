"""The hand-over on its own, with no Worker and no broker: a real JobTable, real
DeadLetters and GuardedStore, real job records; the runner and the consumer are the
one method each that the hand-over calls of them (StreamCanceller, OffsetCommitter),
so the timing cases (a cancel that outlasts the wait) are exact. test_worker.py runs
the same code in real workers in a real group."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from kafka import TopicPartition

from vmstream.pipeline.worker.dead_letters import DeadLetters
from vmstream.pipeline.worker.handover import GuardedStore, Handover, make_listener
from vmstream.pipeline.worker.jobs import Job, JobTable, WorkerStats
from vmstream.stages.sources import source_from_job

TP0, TP1 = TopicPartition("jobs", 0), TopicPartition("jobs", 1)


class Msg:
    """A job record as kafka-python delivers it (the fields JobTable.take reads)."""

    def __init__(self, offset: int, sid: str):
        self.offset, self.key, self.headers, self.timestamp = offset, sid.encode(), [], 0
        self.value = json.dumps({"stream_id": sid, "uri": f"/videos/{sid}.mp4"}).encode()


class Runner:
    """The runner as the hand-over uses it: `cancel`. Streams in `stops_on_cancel`
    end "stopped" 50 ms after their cancel (the runner's sink thread reporting them);
    the others do not end until `end` is called."""

    def __init__(self, table: JobTable, stops_on_cancel=()):
        self.table = table
        self.stops_on_cancel = set(stops_on_cancel)
        self.running: dict[str, Job] = {}
        self.cancelled: list[str] = []

    def run(self, tp, offset: int, sid: str) -> Job:
        """Take a job and start it, as the worker's loop does."""
        job = self.table.take(tp, Msg(offset, sid))
        job.source = source_from_job(json.loads(job.value))
        job.state = "running"
        self.running[sid] = job
        return job

    def end(self, sid: str, status: str) -> Job:
        job = self.running.pop(sid)
        self.table.complete(job, status, None)
        return job

    def cancel(self, sid: str) -> bool:
        self.cancelled.append(sid)
        if sid in self.stops_on_cancel:
            threading.Timer(0.05, self.end, (sid, "stopped")).start()
        return True


class Committer:
    """The consumer as the hand-over uses it: `commit_async`."""

    def __init__(self):
        self.commits: list[dict] = []

    def commit_async(self, offsets: dict) -> None:
        self.commits.append({tp.partition: o for tp, o in offsets.items()})


class Producer:
    """ReliableProducer's surface as DeadLetters uses it: nothing is acknowledged
    until `acked` is set."""

    def __init__(self):
        self.sent: list[tuple] = []
        self.acked = False

    def send(self, topic, value, key=None, headers=None):
        self.sent.append((topic, key))

    def flush(self, timeout_s=None):
        if not self.acked:
            raise TimeoutError("not acknowledged")


def handover(table: JobTable, runner: Runner, *, sleep=None):
    committer, stats = Committer(), WorkerStats()
    dead = DeadLetters(Producer(), "jobs.dead", worker_id="h:1", group_id="g", lock=table.lock)
    h = Handover(
        table,
        runner=runner,
        consumer=committer,
        dead_letters=dead,
        stats=stats,
        worker_id="h:1",
        revoke_timeout_s=0.5,
        sleep=sleep,
        sync_wait_s=0.5,
    )
    return h, committer, dead, stats


def revoke(h: Handover, tps, how: str) -> None:
    if how == "sync":
        h.on_revoked_sync(tps)
    else:  # a listener on an event loop: it sleeps there while the cancels land
        asyncio.run(h.on_revoked_async(tps))


@pytest.mark.parametrize("how", ["sync", "async-blocking", "async-loop"])
def test_revoke_commits_the_done_prefix_and_fences_a_slow_cancel(how):
    table = JobTable()
    runner = Runner(table, stops_on_cancel={"b"})
    h, committer, _, stats = handover(table, runner, sleep=asyncio.sleep if how == "async-loop" else None)
    if how == "async-blocking":
        how = "async"  # sleep None: the async listener waits by blocking
    saved = []

    class Store:
        def save(self, snap):
            saved.append(snap["stream_id"])

        def delete(self, sid):
            saved.append("-" + sid)

        def load(self, sid):
            return None

    guard = GuardedStore(Store(), table)
    a = runner.run(TP0, 0, "a")
    runner.run(TP0, 1, "b")
    runner.run(TP0, 2, "c")
    runner.run(TP1, 0, "d")
    runner.end("a", "ok")
    table.finish(a)  # a: done, seen by the main loop
    runner.end("c", "ok")  # c: done, not yet seen by the main loop
    revoke(h, {TP0, TP1}, how)

    assert sorted(runner.cancelled) == ["b", "d"]  # a and c had ended: nothing to cancel
    # TP0: a done, b cancelled (stopped in time, not done), c done -> commit up to b.
    # TP1: d still stopping -> nothing to commit.
    assert committer.commits == [{0: 1}]
    # b stopped within the wait: its final snapshot was allowed. d did not: fenced.
    assert not table.fenced_stream("b") and table.fenced_stream("d")
    guard.save({"stream_id": "d"})
    guard.delete("d")
    guard.save({"stream_id": "b"})
    assert saved == ["b"]
    assert stats.revoked == 3  # b, c, d: the jobs still held when the partitions left
    assert table.jobs == {} and table.ledgers == {}
    # d's cancel completes later: the fence goes with it.
    runner.end("d", "stopped")
    assert not table.fenced_stream("d")
    guard.save({"stream_id": "d"})
    assert saved == ["b", "d"]


def test_lost_partitions_are_fenced_at_once_and_nothing_is_committed():
    table = JobTable()
    runner = Runner(table, stops_on_cancel={"e"})  # e would stop in time: lost fences anyway
    h, committer, _, stats = handover(table, runner)
    runner.run(TP1, 7, "e")
    runner.run(TP1, 8, "f")
    runner.end("f", "ok")
    h.on_lost({TP1})
    assert runner.cancelled == ["e"] and table.fenced_stream("e")
    assert committer.commits == [] and table.ledgers == {} and stats.revoked == 2


def test_partitions_other_than_the_revoked_ones_are_left_alone():
    table = JobTable()
    runner = Runner(table, stops_on_cancel={"x"})
    h, committer, _, _ = handover(table, runner)
    runner.run(TP0, 0, "x")
    kept = runner.run(TP1, 4, "y")
    h.on_revoked_sync({TP0})
    assert runner.cancelled == ["x"] and committer.commits == []  # x stopped: not done
    assert list(table.jobs.values()) == [kept] and not kept.revoked
    runner.end("y", "ok")
    table.finish(kept)
    assert table.commit_offsets() == {TP1: 5}  # the loop's next commit


def test_an_unacknowledged_dead_letter_is_left_to_the_next_owner():
    table = JobTable()
    runner = Runner(table)
    h, committer, dead, _ = handover(table, runner)
    bad = table.take(TP0, Msg(0, "bad"))
    dead.send(bad, "bad_message", "not a job")  # sent, the topic has not acknowledged it
    ok = runner.run(TP0, 1, "ok")
    runner.end("ok", "ok")
    table.finish(ok)
    h.on_revoked_sync({TP0})
    # The dead letter is not done: nothing past it is committed, the next owner reads
    # both records again; and it never comes back as acknowledged here.
    assert committer.commits == [] and bad.revoked
    assert dead.producer.sent == [("jobs.dead", b"bad")]
    dead.producer.acked = True  # now the topic has it
    assert dead.acknowledged() == []


def test_a_revoke_of_nothing_held_commits_nothing():
    table = JobTable()
    h, committer, _, stats = handover(table, Runner(table))
    h.on_revoked_sync(set())
    h.on_revoked_sync({TP0})
    assert committer.commits == [] and stats.revoked == 0


def test_the_listener_calls_the_handover():
    """make_listener's listener (the async kind on this kafka-python, where the
    revoke waits on the event loop) drives a Handover."""
    table = JobTable()
    runner = Runner(table, stops_on_cancel={"s"})
    h, committer, _, _ = handover(table, runner, sleep=asyncio.sleep)
    listener = make_listener(h)
    done = runner.run(TP0, 0, "done")
    runner.end("done", "ok")
    table.finish(done)
    runner.run(TP0, 1, "s")

    def call(result):
        if asyncio.iscoroutine(result):
            asyncio.run(result)

    call(listener.on_partitions_assigned({TP0}))
    call(listener.on_partitions_revoked({TP0}))
    assert runner.cancelled == ["s"] and committer.commits == [{0: 1}]
    runner.run(TP1, 0, "t")
    call(listener.on_partitions_lost({TP1}))
    assert runner.cancelled == ["s", "t"] and table.fenced_stream("t")


def test_worker_stats_format_as_the_stop_line():
    stats = WorkerStats(jobs=3, done=2, dead_lettered=1)
    stats.revoked += 1
    assert stats.format() == "jobs 3, done 2, dead_lettered 1, revoked 1, retried 0, commits 0"
