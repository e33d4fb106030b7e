"""The FAISS sink: segment embeddings into a `VideoStore` (upsert by uid).

    sink = FaissSink("out/index")              # creates, or loads and continues
    sink.write(result) ...; sink.flush()       # flush = add buffered + durable commit
    sink.close()                               # compacts the store into one generation

A damaged store (a file that fails its checksum, a missing log file) is refused on
open with a `StoreCorruptError` naming the file: a run never appends to it.

Events and summaries carry no embedding and are ignored here (the Parquet sink keeps
them). Search with `VideoStore(path, readonly=True)` (see `store/video_store.py`).
"""

from __future__ import annotations

import os
from typing import Union

from vmstream.records import SegmentResult
from vmstream.store import SearchHit, VideoStore

from .base import Sink, SinkRecord

__all__ = ["FaissSink", "SearchHit", "VideoStore"]


class FaissSink(Sink):
    """Adds SegmentResult embeddings to the store in batches of `batch_size` (adding one
    at a time would pay faiss's per-call overhead); `flush` adds the rest and saves.
    Store options (`dim`, `kind`, `train_at`, `nlist`, `pq_m`, `hnsw_m`, `use_gpu`)
    pass through to `VideoStore`."""

    name = "faiss"

    def __init__(self, path: Union[str, os.PathLike], *, batch_size: int = 256, store=None, **store_options):
        # `store`: an open store of either backend (vmstream.store.open_store).
        self.store = store if store is not None else VideoStore(path, **store_options)
        self.batch_size = int(batch_size)
        self._buffer: list[SegmentResult] = []
        self._closed = False

    def write(self, record: SinkRecord) -> None:
        if self._closed:
            raise RuntimeError(f"FaissSink for {self.store.path} is closed")
        if not isinstance(record, SegmentResult):
            return
        if record.embedding is None:
            raise ValueError(f"segment {record.segment_index} of stream {record.stream_id!r} has no embedding")
        self._buffer.append(record)
        if len(self._buffer) >= self.batch_size:
            self._add_buffer()

    def begin_stream(self, stream_id: str, version: str, *, replace: bool) -> None:
        # A stream starting over replaces its vectors: those of segments the new version
        # does not reach must not stay searchable.
        if replace:
            self._add_buffer()
            self.store.remove_stream(stream_id)

    def _add_buffer(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            try:
                self.store.add_results(batch)
            except ValueError as batch_error:
                # Find the culprit so its error names it; add the rest, refuse it alone.
                bad = None
                for r in batch:
                    try:
                        self.store.add_results([r])
                    except ValueError as e:
                        bad = bad or e
                if bad is not None:
                    raise bad from batch_error

    def flush(self) -> None:
        self._add_buffer()
        self.store.commit()  # a log file of the changes; a whole generation when due

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._add_buffer()
        finally:
            self.store.close()
