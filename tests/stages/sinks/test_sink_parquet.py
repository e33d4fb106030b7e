"""Parquet sink: schema, row groups that survive SIGKILL, upsert by uid, compaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.fixtures.sinks import make_event, make_result, make_summary, nan_event
from vmstream.records import EVENT_SCHEMA, SEGMENT_SCHEMA, SUMMARY_SCHEMA, SegmentResult, segment_uid
from vmstream.stages.sinks.parquet import ParquetSink
from vmstream.store.results import read_table

REPO = Path(__file__).resolve().parents[3]


def part_files(d: Path, emptied: bool = False) -> list[str]:
    """The part files holding rows (with `emptied`, also compacted-away parts waiting for
    readers that may have listed them)."""
    return sorted(
        p.name
        for p in d.iterdir()
        if p.name.endswith(".parquet")
        and not p.name.startswith(".")
        and (emptied or pq.ParquetFile(p).metadata.num_rows > 0)
    )


def test_round_trip_readable_by_pandas_without_vmstream(tmp_path):
    results = [make_result("cam0", i) for i in range(7)] + [make_result("cam1", i) for i in range(3)]
    with ParquetSink(tmp_path, row_group_rows=4) as sink:
        for r in results:
            sink.write(r)
        sink.write(make_event("cam0", "gap", 10.0, 12.5, "reconnect"))
        sink.write(make_event("cam1", "error", 3.0, 3.0, "corrupt packet"))
        sink.write(make_summary("cam0", 7))

    seg = pd.read_parquet(tmp_path / "segments")
    assert len(seg) == 10 and seg["uid"].is_unique
    seg = seg.set_index("uid")
    for r in results:
        row = seg.loc[r.uid]
        assert row.stream_id == r.stream_id and row.segment_index == r.segment_index
        assert (row.t_start, row.t_end) == (r.t_start, r.t_end)
        assert list(row.labels) == r.labels
        np.testing.assert_allclose(row.scores, r.scores, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(row.embedding, np.float32), r.embedding)
        assert row.uri == r.uri and row.model == r.model
    assert r.uid == segment_uid(r.stream_id, r.segment_index)

    ev = pd.read_parquet(tmp_path / "events")
    assert sorted(ev.kind) == ["error", "gap"]
    assert ev.set_index("kind").loc["gap", "message"] == "reconnect"
    summ = pd.read_parquet(tmp_path / "summaries")
    assert summ.stream_id.tolist() == ["cam0"] and summ.segment_count.tolist() == [7]

    # Every file carries the records' Arrow schema (and its version metadata).
    for name, schema in (("segments", SEGMENT_SCHEMA), ("events", EVENT_SCHEMA), ("summaries", SUMMARY_SCHEMA)):
        for f in part_files(tmp_path / name):
            s = pq.read_schema(tmp_path / name / f)
            assert s.equals(schema, check_metadata=False)
            assert s.metadata[b"vmstream.schema_version"] == schema.metadata[b"vmstream.schema_version"]
    # And back into records.
    back = [SegmentResult.from_row(r) for r in read_table(tmp_path, "segments").to_pylist()]
    assert sorted((b.stream_id, b.segment_index) for b in back) == sorted(
        (r.stream_id, r.segment_index) for r in results
    )


def test_resumed_run_upserts_newest_row_wins(tmp_path):
    with ParquetSink(tmp_path) as sink:
        for i in range(10):
            sink.write(make_result("cam0", i, seed=0))
        sink.write(make_summary("cam0", 10))
        sink.write(nan_event("cam0"))
    # Resume from a snapshot after segment 4: segments 5.. are produced again, same uids.
    with ParquetSink(tmp_path) as sink:
        for i in range(5, 15):
            sink.write(make_result("cam0", i, seed=1))
        sink.write(make_summary("cam0", 15))
        sink.write(nan_event("cam0"))  # identical event rows collapse (NaN times included)

    seg = pd.read_parquet(tmp_path / "segments")
    assert len(seg) == 15 and seg.uid.is_unique
    by_index = seg.set_index("segment_index").num_frames
    assert all(by_index[i] == 8 for i in range(5)) and all(by_index[i] == 9 for i in range(5, 15))
    new = make_result("cam0", 7, seed=1)
    np.testing.assert_array_equal(np.asarray(seg.set_index("uid").loc[new.uid].embedding, np.float32), new.embedding)
    assert pd.read_parquet(tmp_path / "summaries").segment_count.tolist() == [15]
    assert len(pd.read_parquet(tmp_path / "events")) == 1
    assert len(part_files(tmp_path / "segments")) == 1  # compacted into one file


def test_duplicates_within_one_run_and_read_while_open(tmp_path):
    sink = ParquetSink(tmp_path, row_group_rows=3)
    for i in range(6):
        sink.write(make_result("cam0", i, seed=0))
    for i in range(2, 4):
        sink.write(make_result("cam0", i, seed=1))
    sink.flush()
    # A plain reader mid-run may see both versions; read_table de-duplicates.
    assert len(pd.read_parquet(tmp_path / "segments")) == 8
    t = read_table(tmp_path / "segments").to_pandas().set_index("segment_index")
    assert len(t) == 6 and t.num_frames[2] == 9 and t.num_frames[1] == 8
    sink.close()
    seg = pd.read_parquet(tmp_path / "segments")
    assert len(seg) == 6 and seg.uid.is_unique
    sink.close()  # idempotent


def test_row_groups_written_as_results_arrive(tmp_path):
    sink = ParquetSink(tmp_path, row_group_rows=4, max_small_parts=1000)
    for i in range(10):
        sink.write(make_result("cam0", i))
    # Two closed row groups are on disk and readable; two rows are in the open one.
    assert len(part_files(tmp_path / "segments")) == 2
    assert len(pd.read_parquet(tmp_path / "segments")) == 8
    assert sink.tables["segments"].buffered_rows == 2
    sink.flush()
    assert len(pd.read_parquet(tmp_path / "segments")) == 10
    sink.close()


def test_max_delay_closes_row_group_for_slow_streams(tmp_path):
    with ParquetSink(tmp_path, row_group_rows=1000, max_delay_s=0.05, max_small_parts=1000) as sink:
        sink.write(make_result("cam0", 0))
        time.sleep(0.08)
        sink.write(make_result("cam0", 1))  # the first row waited long enough: both go out
        assert len(pd.read_parquet(tmp_path / "segments")) == 2


def test_small_parts_are_merged_during_a_run(tmp_path):
    d = tmp_path / "segments"
    sink = ParquetSink(tmp_path, row_group_rows=1, max_small_parts=4)
    merged: set[str] = set()
    for i in range(21):
        sink.write(make_result("cam0", i))
        rows = {f: pq.ParquetFile(d / f).metadata.num_rows for f in part_files(d)}
        assert sum(1 for n in rows.values() if n == 1) < 4  # flushes get merged...
        merged |= {f for f, n in rows.items() if n > 1}
        assert merged <= set(rows)  # ...and merged parts are not rewritten again mid-run
    assert len(merged) == 5
    sink.close()
    assert len(part_files(d)) == 1  # close merges everything small
    seg = pd.read_parquet(d)
    assert sorted(seg.segment_index) == list(range(21))


def test_empty_run_leaves_readable_tables(tmp_path):
    ParquetSink(tmp_path).close()
    for name in ("segments", "events", "summaries"):
        df = pd.read_parquet(tmp_path / name)
        assert len(df) == 0 and "stream_id" in df.columns


def test_bad_record_is_refused_with_its_name_and_loses_nothing(tmp_path):
    sink = ParquetSink(tmp_path)
    sink.write(make_result("cam0", 0))
    bad = make_result("cam0", 1)
    bad.scores = ["high", "low", "none"]
    with pytest.raises(ValueError, match=r"stream 'cam0', segment 1"):
        sink.write(bad)
    with pytest.raises(TypeError, match="cannot write"):
        sink.write("not a record")
    sink.write(make_result("cam0", 2))
    sink.close()
    assert sorted(pd.read_parquet(tmp_path / "segments").segment_index) == [0, 2]


def test_one_writer_per_directory(tmp_path):
    with ParquetSink(tmp_path):
        with pytest.raises(RuntimeError, match="is locked by another run"):
            ParquetSink(tmp_path)
    ParquetSink(tmp_path).close()  # released on close


def test_crash_during_compaction_is_repaired_on_open(tmp_path, monkeypatch):
    sink = ParquetSink(tmp_path, row_group_rows=4, max_small_parts=1000)
    for i in range(8):
        sink.write(make_result("cam0", i, seed=0))
    for i in range(4, 8):
        sink.write(make_result("cam0", i, seed=1))
    sink.flush()

    import os
    import types

    from vmstream.store import results

    renames = []

    def replace(src, dst):  # the merged file is in place; die before emptying the other inputs
        if renames:
            raise KeyboardInterrupt("simulated crash")
        renames.append(dst)
        os.replace(src, dst)

    monkeypatch.setattr(results, "os", types.SimpleNamespace(replace=replace))
    with pytest.raises(KeyboardInterrupt):
        sink.tables["segments"].compact()
    monkeypatch.undo()
    for t in sink.tables.values():  # the process "died": its locks go with it
        t._lock.release()
        t._closed = True
    rows = [pq.ParquetFile(tmp_path / "segments" / f).metadata.num_rows for f in part_files(tmp_path / "segments")]
    assert rows == [4, 4, 8]  # 2 inputs left whole + the merged rows in the newest input's place

    ParquetSink(tmp_path).close()
    seg = pd.read_parquet(tmp_path / "segments").set_index("segment_index")
    assert len(seg) == 8 and seg.uid.is_unique
    assert [seg.num_frames[i] for i in range(8)] == [8] * 4 + [9] * 4


WRITER = textwrap.dedent(
    """
    import sys
    from tests.fixtures.sinks import make_result
    from vmstream.stages.sinks.parquet import ParquetSink
    out, rg, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sink = ParquetSink(out, row_group_rows=rg, max_delay_s=None, max_small_parts=8)
    i = 0
    while True:
        sink.write(make_result("cam0", i, dim=192))
        i += 1
        if mode == "stop" and i == 35:
            print("ready", flush=True)
            sys.stdin.read()  # wait here to be killed
    """
)


def _spawn_writer(out: Path, rg: int, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), str(rg), mode],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_sigkill_loses_at_most_the_open_row_group(tmp_path):
    out = tmp_path / "run"
    proc = _spawn_writer(out, 10, "stop")
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    # 35 rows written: three closed row groups survive, the open one (5 rows) is lost.
    seg = pd.read_parquet(out / "segments")
    assert sorted(seg.segment_index) == list(range(30))

    # The resumed run re-produces segments since its snapshot (say 25): upserted.
    with ParquetSink(out) as sink:
        for i in range(25, 40):
            sink.write(make_result("cam0", i, dim=192, seed=7))
    seg = pd.read_parquet(out / "segments")
    assert sorted(seg.segment_index) == list(range(40)) and seg.uid.is_unique
    assert set(seg[seg.segment_index >= 25].num_frames) == {15}


def test_sigkill_at_a_random_moment_leaves_whole_row_groups(tmp_path):
    out = tmp_path / "run"
    proc = _spawn_writer(out, 7, "run")
    try:
        deadline = time.monotonic() + 60
        # Let it write and compact a while (>= 12 parts means it has compacted too).
        while time.monotonic() < deadline:
            try:  # the writer may compact away a part between listing and reading
                done = len(read_table(out / "segments"))
            except (FileNotFoundError, OSError):
                done = 0
            if done >= 7 * 12:
                break
            time.sleep(0.02)
        time.sleep(np.random.default_rng().uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    seg = pd.read_parquet(out / "segments")  # whatever the kill interrupted is invisible
    n = seg.segment_index.nunique()
    assert n >= 7 * 12 and n % 7 == 0
    assert sorted(seg.segment_index.unique()) == list(range(n))
    assert all(len(e) == 192 for e in seg.embedding)
    # Every file is accounted for by the part records, whatever the kill interrupted.
    from vmstream.store.repair import verify_results

    assert verify_results(out) == []
    # Reopening repairs whatever the kill interrupted (a compaction, a part write).
    ParquetSink(out).close()
    seg = pd.read_parquet(out / "segments")
    assert len(seg) == n and seg.uid.is_unique
    assert verify_results(out) == []
    assert not [p for p in os.listdir(out / "segments") if p.startswith(".tmp-")]


def test_readable_by_duckdb_mid_run_and_after(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    sink = ParquetSink(tmp_path, row_group_rows=4)
    for i in range(10):
        sink.write(make_result("cam0", i))
    # Mid-run: the closed row groups, through a glob that skips the hidden temporaries.
    q = f"SELECT count(*), max(segment_index) FROM '{tmp_path}/segments/*.parquet'"
    assert duckdb.sql(q).fetchall() == [(8, 7)]
    sink.write(make_summary("cam0", 10))
    sink.close()
    assert duckdb.sql(q).fetchall() == [(10, 9)]
    top = duckdb.sql(
        f"SELECT labels[1] AS top, count(*) FROM '{tmp_path}/segments/*.parquet' GROUP BY top ORDER BY top"
    ).fetchall()
    assert top == [("running", 5), ("walking", 5)]
    assert duckdb.sql(f"SELECT segment_count FROM '{tmp_path}/summaries/*.parquet'").fetchall() == [(10,)]


def test_plain_readers_never_fail_while_parts_are_compacted(tmp_path):
    """pandas lists the part files, then opens them; compaction in between must not
    remove a listed file (it did: FileNotFoundError, 2 reads in 355)."""
    import threading

    d = tmp_path / "segments"
    sink = ParquetSink(tmp_path, row_group_rows=1, max_small_parts=3)
    sink.write(make_result("cam0", 0))
    failures: list[BaseException] = []
    reads = [0]
    done = threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen = set(pd.read_parquet(d).segment_index)
                # Rows go in as 0, 1, 2, ...: a reader opening the parts in name order
                # never misses one (it may see a merged row twice), so what it sees is
                # a prefix with no hole, and never empty (row 0 was written first).
                assert seen and seen == set(range(max(seen) + 1)), sorted(seen)
                reads[0] += 1
            except BaseException as e:  # noqa: BLE001 - every failure counts
                failures.append(e)

    threads = [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 120):
            sink.write(make_result("cam0", i))  # a part per row; a merge every 3
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    sink.close()
    assert not failures, f"{len(failures)} of {reads[0] + len(failures)} reads failed: {failures[0]!r}"
    assert reads[0] > 20
    assert sorted(pd.read_parquet(d).segment_index) == list(range(120))


def test_emptied_parts_are_removed_after_their_grace(tmp_path):
    d = tmp_path / "segments"
    sink = ParquetSink(tmp_path, row_group_rows=1, max_small_parts=3, stub_grace_s=0.3)
    for i in range(10):
        sink.write(make_result("cam0", i))
    sink.close()
    emptied = set(part_files(d, emptied=True)) - set(part_files(d))
    assert emptied and len(part_files(d)) == 1  # kept for readers that listed them
    time.sleep(0.4)
    ParquetSink(tmp_path, stub_grace_s=0.3).close()
    assert part_files(d, emptied=True) == part_files(d) and len(part_files(d)) == 1
    assert sorted(pd.read_parquet(d).segment_index) == list(range(10))
