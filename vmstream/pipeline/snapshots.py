"""Stream snapshots: what a stream needs to resume on another worker after a crash.

A snapshot is the stream's model state (StreamState bytes), its summary accumulators,
the index of the next segment and the end time of the last processed segment (the
decode position: resume decoding just after it). It is taken only after every result
up to that segment is durable in the sinks, so resuming from it loses nothing and
repeats at most the segments since the snapshot (which sinks upsert by uid).

The byte format is `vmstream.snapshot_codec`'s.
"""
from __future__ import annotations

import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Iterator, Optional, Protocol

from vmstream.snapshot_codec import decode_snapshot, encode_snapshot

__all__ = ["StateStore", "LocalStateStore"]


class StateStore(Protocol):
    """Where snapshots live: a local directory (embedded mode) or a compacted Kafka topic."""

    def load(self, stream_id: str) -> Optional[dict]: ...

    def save(self, snap: dict) -> None: ...

    def delete(self, stream_id: str) -> None: ...


class LocalStateStore:
    """One file per stream in a directory, written atomically (temp, fsync, rename)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, stream_id: str) -> Path:
        # Stream ids are paths or URLs: quote them into one safe file name.
        return self.root / (urllib.parse.quote(stream_id, safe="") + ".snap")

    def load(self, stream_id: str) -> Optional[dict]:
        p = self._path(stream_id)
        if not p.exists():
            return None
        return decode_snapshot(p.read_bytes(), where=str(p))

    def save(self, snap: dict) -> None:
        p = self._path(snap["stream_id"])
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".snap")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode_snapshot(snap))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def delete(self, stream_id: str) -> None:
        self._path(stream_id).unlink(missing_ok=True)

    def stream_ids(self) -> Iterator[str]:
        for p in sorted(self.root.glob("*.snap")):
            yield urllib.parse.unquote(p.name[: -len(".snap")])
