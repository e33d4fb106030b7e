"""A stream starting over replaces what each sink holds of it (begin_stream)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.fixtures.sinks import make_event, make_result, make_summary
from vmstream.records import SEGMENT_SCHEMA
from vmstream.stages.sinks.faiss_store import FaissSink, VideoStore
from vmstream.stages.sinks.parquet import ParquetSink
from vmstream.store.results import read_table


def test_parquet_drops_a_restarted_streams_rows_in_every_table(tmp_path):
    with ParquetSink(tmp_path, row_group_rows=4) as sink:
        for i in range(15):
            sink.write(make_result("cam", i))
        for i in range(3):
            sink.write(make_result("other", i))
        sink.write(make_event("cam", "gap"))
        sink.write(make_summary("cam", 15))
        sink.write(make_summary("other", 3))
        sink.flush()
        for i in range(15, 17):  # still buffered when the stream starts over
            sink.write(make_result("cam", i))
        sink.begin_stream("cam", "v2", replace=True)
        for i in range(8):
            r = make_result("cam", i, seed=1)
            r.stream_version = "v2"
            sink.write(r)
        # Mid-run, before close: plain pandas already sees no old row of the stream.
        sink.flush()
        seg = pd.read_parquet(tmp_path / "segments")
        assert sorted(seg[seg.stream_id == "cam"].segment_index) == list(range(8))
        assert set(seg[seg.stream_id == "cam"].stream_version) == {"v2"}
        assert sorted(seg[seg.stream_id == "other"].segment_index) == [0, 1, 2]
        assert list(pd.read_parquet(tmp_path / "summaries").stream_id) == ["other"]
        assert len(pd.read_parquet(tmp_path / "events")) == 0
        # A resume (same version) keeps them.
        sink.begin_stream("cam", "v2", replace=False)
        sink.flush()
        assert len(read_table(tmp_path, "segments")) == 11
    assert len(pd.read_parquet(tmp_path / "segments")) == 11


def test_parquet_reads_and_rewrites_parts_written_before_versions(tmp_path):
    """Parts of schema version 1 (no stream_version column) stay readable and compact."""
    old_schema = pa.schema([f for f in SEGMENT_SCHEMA if f.name != "stream_version"])
    (tmp_path / "segments").mkdir()
    rows = [make_result("cam", i).to_row() for i in range(3)]
    for r in rows:
        del r["stream_version"]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=old_schema), tmp_path / "segments" / "part-000000000-aaaaaa.parquet"
    )
    with ParquetSink(tmp_path) as sink:
        sink.begin_stream("other", "v1", replace=True)
        sink.write(make_result("other", 0))
    seg = read_table(tmp_path, "segments").to_pandas()
    assert sorted(seg.stream_id) == ["cam", "cam", "cam", "other"]
    with ParquetSink(tmp_path) as sink:
        sink.begin_stream("cam", "v2", replace=True)
    assert list(read_table(tmp_path, "segments").to_pandas().stream_id) == ["other"]


def test_faiss_removes_a_restarted_streams_vectors(tmp_path):
    with FaissSink(tmp_path / "index", batch_size=4) as sink:
        for i in range(15):
            sink.write(make_result("cam", i))
        sink.write(make_result("other", 0))
        sink.begin_stream("cam", "v2", replace=True)
        for i in range(8):
            sink.write(make_result("cam", i, seed=1))
        sink.begin_stream("other", "w1", replace=False)
    store = VideoStore(tmp_path / "index", readonly=True)
    assert len(store) == 9
    assert sorted(store.ids.stream_rows("cam").column("segment_index").to_pylist()) == list(range(8))
    assert store.ids.stream_rows("other").num_rows == 1
