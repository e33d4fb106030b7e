"""The sink writer alone, without a runner: a real output queue, the real Parquet sink,
a real state store, and the run control a runner would hand it."""

from __future__ import annotations

import contextlib
import queue

import pytest

from tests.fixtures.sinks import make_event, make_result
from vmstream.pipeline.disk_full import DiskFullError
from vmstream.pipeline.report import RunReport
from vmstream.pipeline.run_control import RunControl
from vmstream.pipeline.sink_writer import SinkWriter
from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
from vmstream.pipeline.snapshots import LocalStateStore
from vmstream.records import SaveSnapshot, StreamDone, StreamStart
from vmstream.stages.media import Source
from vmstream.stages.sinks.console import ConsoleSink
from vmstream.stages.sinks.parquet import ParquetSink
from vmstream.store.results import read_table


class _DurabilityWitness(LocalStateStore):
    """A local state store that notes, as each snapshot is saved, which segments of the
    results directory a reader could see at that moment."""

    def __init__(self, root, results):
        super().__init__(root)
        self.results = results
        self.seen_at_save: list[list[int]] = []

    def save(self, snap: dict) -> None:
        self.seen_at_save.append(_durable_segments(self.results))
        super().save(snap)


def _durable_segments(out) -> list[int]:
    try:
        return sorted(read_table(out, "segments").column("segment_index").to_pylist())
    except FileNotFoundError:
        return []


def _parquet(out):
    # Rows stay in memory until a flush: no row-group size or age reaches them here.
    return ParquetSink(out, row_group_rows=10_000, max_delay_s=None)


def _writer(sinks, control, store=None, **kw) -> SinkWriter:
    return SinkWriter(
        sinks=sinks,
        snapshots=SnapshotKeeper(store, None),
        out_q=queue.Queue(),
        control=control,
        report=control.report,
        **kw,
    )


def _feed(writer: SinkWriter, *items) -> None:
    for item in (*items, None):
        writer.out_q.put(item)


def _snap(stream_id: str, next_index: int) -> SaveSnapshot:
    return SaveSnapshot(stream_id, {"stream_id": stream_id, "next_index": next_index, "t_end": next_index * 8.0})


def test_a_snapshot_is_saved_only_once_the_results_before_it_are_durable(tmp_path):
    out = tmp_path / "out"
    store = _DurabilityWitness(tmp_path / "state", out)
    control = RunControl(RunReport())
    writer = _writer([_parquet(out)], control, store)
    results = [make_result("a", i) for i in range(4)]
    _feed(writer, StreamStart("a", "v1"), *results[:3], _snap("a", 3), results[3])

    writer.run()

    assert store.seen_at_save == [[0, 1, 2]]
    assert store.load("a")["next_index"] == 3
    assert _durable_segments(out) == [0, 1, 2]  # the last result waits for a flush or the close
    assert writer.close() == []
    table = read_table(out, "segments")
    assert sorted(table.column("segment_index").to_pylist()) == [0, 1, 2, 3]
    assert set(table.column("stream_version").to_pylist()) == {"v1"}  # the stream's start stamps its records
    assert control.fatal is None and control.report.sinks.items == 4


@pytest.mark.parametrize(
    ("status", "flush_on_stream_end", "flushed", "snapshot_kept"),
    [
        ("ok", True, True, False),  # finished: a later run starts it afresh
        ("ok", False, False, False),
        ("stopped", False, True, True),  # stopped: always flushed, and resumable
    ],
)
def test_a_streams_end_is_told_once_its_records_are_written(
    tmp_path, status, flush_on_stream_end, flushed, snapshot_kept
):
    out = tmp_path / "out"
    store = LocalStateStore(tmp_path / "state")
    store.save(_snap("a", 1).snapshot)
    progress = []
    control = RunControl(RunReport(), progress.append)
    told = []
    control.add(Source("a", "a.mp4"), lambda src, st, err: told.append((src.uri, st, _durable_segments(out))))
    writer = _writer([_parquet(out)], control, store, flush_on_stream_end=flush_on_stream_end)
    r0, r1 = make_result("a", 0), make_result("a", 1)
    _feed(writer, StreamStart("a", "v1", resumed=True), r0, r1, StreamDone("a", status))

    writer.run()

    assert told == [("a.mp4", status, [0, 1] if flushed else [])]
    assert (store.load("a") is not None) == snapshot_kept
    assert control.running() == [] and control.wait_idle(timeout=0)
    assert control.report.streams == 1 and control.report.statuses == {"a": status}
    assert control.report.streams_stopped == (status == "stopped")
    assert progress == [r0, r1, ("done", "a", status)]


def test_a_failed_stream_is_counted_with_its_uri(tmp_path):
    control = RunControl(RunReport())
    control.add(Source("bad", "broken.mp4"))
    writer = _writer([_parquet(tmp_path / "out")], control)
    _feed(writer, make_event("bad", kind="error", message="no video stream"), StreamDone("bad", "failed", "no video"))

    writer.run()

    assert control.report.streams_failed == 1
    assert control.report.failures == [("bad", "broken.mp4", "no video")]


def test_a_full_disk_is_the_runs_fatal_error_in_one_line_and_the_rest_is_drained(tmp_path):
    """A sink that meets a full disk (/dev/full) fails the run with a DiskFullError (exit
    code 3) naming what could not be written; what follows is read and dropped, so the
    inference loop never blocks, and no snapshot after the failure is saved."""
    out = tmp_path / "out"
    store = LocalStateStore(tmp_path / "state")
    control = RunControl(RunReport())
    full = open("/dev/full", "w")  # closed below: its close fails too
    try:
        writer = _writer([_parquet(out), ConsoleSink(full, width=80)], control, store)
        _feed(writer, StreamStart("a", "v1"), make_result("a", 0), make_result("a", 1), _snap("a", 2))
        writer.run()
    finally:
        with contextlib.suppress(OSError):
            full.close()

    assert writer.out_q.empty()
    assert isinstance(control.fatal, DiskFullError) and control.fatal.exit_code == 3
    assert str(control.fatal).startswith("No space left on device: could not write the console sink's output")
    assert "\n" not in str(control.fatal)
    assert control.stopped
    assert store.load("a") is None
    assert control.report.sinks.items == 0  # the first record already failed
