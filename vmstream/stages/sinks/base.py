"""The sink interface. Every output (Parquet, FAISS, console, Kafka) is one `Sink`.

A sink receives the three record kinds of `vmstream.records` in stream order and keeps
what it cares about. The runner calls `write` for each record, `flush` at checkpoints
(after which everything written so far must be durable / delivered, so the runner may
snapshot stream state and commit offsets), and `close` once at the end (which flushes).
"""

from __future__ import annotations

import abc
from typing import Union

from vmstream.records import SegmentResult, StreamEvent, StreamSummary

SinkRecord = Union[SegmentResult, StreamEvent, StreamSummary]


class Sink(abc.ABC):
    name: str = "sink"

    @abc.abstractmethod
    def write(self, record: SinkRecord) -> None:
        """Take one record. May buffer; must not drop."""

    def begin_stream(self, stream_id: str, version: str, *, replace: bool) -> None:
        """A stream starts at `version` (its content identity), ahead of its records.
        `replace`: it starts from its first segment, so what this sink holds of the
        stream from before (another version, an unfinished run) must go; a resumed
        stream (`replace` False) continues the same version."""

    def flush(self) -> None:
        """Make everything written so far durable (a file row group, an index save,
        a broker ack). Raises if that is not possible."""

    def close(self) -> None:
        """Flush and release resources. Idempotent."""
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
