"""The Parquet sink: every record a run produces goes to the store's result tables
(`vmstream.store.results`: segments, events, summaries, each a directory of part files),
and each segment's thumbnail to `thumbs`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

from vmstream.records import SegmentResult, StreamEvent, StreamSummary
from vmstream.store.results import TABLES, PartTable

from .base import Sink, SinkRecord

PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)


class ParquetSink(Sink):
    """Writes SegmentResult, StreamEvent and StreamSummary rows under `out_dir`.

    `flush()` closes every open row group (durable on return); `close()` also compacts,
    leaving no duplicate uids. Options are `PartTable`'s: `row_group_rows` (rows per
    row group / part), `max_delay_s` (longest a row waits in memory; None = no limit),
    `target_file_rows` and `max_small_parts` (compaction).
    """

    name = "parquet"

    def __init__(self, out_dir: PathLike, **options):
        self.out_dir = Path(out_dir)
        self.tables: dict[str, PartTable] = {}
        try:
            for tname, (schema, key) in TABLES.items():
                self.tables[tname] = PartTable(self.out_dir / tname, schema, key, **options)
        except BaseException:
            for t in self.tables.values():
                t.close()
            raise
        self._closed = False

    def write(self, record: SinkRecord) -> None:
        if isinstance(record, SegmentResult):
            table, what = "segments", f"segment result (stream {record.stream_id!r}, segment {record.segment_index})"
        elif isinstance(record, StreamEvent):
            table, what = "events", f"{record.kind} event of stream {record.stream_id!r}"
        elif isinstance(record, StreamSummary):
            table, what = "summaries", f"summary of stream {record.stream_id!r}"
        else:
            raise TypeError(f"ParquetSink cannot write {type(record).__name__}")
        try:
            row = record.to_row()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what} is malformed: {e}") from e
        self.tables[table].append(row, what)
        if table == "segments" and record.thumb:
            self.tables["thumbs"].append(record.thumb_row(), f"thumbnail of {what}")

    def begin_stream(self, stream_id: str, version: str, *, replace: bool) -> None:
        # A stream starting over replaces its rows: none of the old ones stays readable,
        # not even to a plain pandas.read_parquet of the directory.
        if replace:
            dropped = [t.drop_stream(stream_id) for t in self.tables.values()]
            if any(dropped):  # a rerun of a finished stream: say so rather than recompute in silence
                log.info("%s: starts over from its first segment, replacing earlier results", stream_id)

    def flush(self) -> None:
        for t in self.tables.values():
            t.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        errors = []
        for t in self.tables.values():
            try:
                t.close()
            except Exception as e:  # close the others anyway; report the first
                errors.append(e)
        if errors:
            raise errors[0]

    def paths(self) -> dict[str, Path]:
        return {name: t.directory for name, t in self.tables.items()}
