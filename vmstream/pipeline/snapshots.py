"""Stream snapshots: what a stream needs to resume on another worker after a crash.

A snapshot is the stream's model state (StreamState bytes), its summary accumulators,
the index of the next segment and the end time of the last processed segment (the
decode position: resume decoding just after it). It is taken only after every result
up to that segment is durable in the sinks, so resuming from it loses nothing and
repeats at most the segments since the snapshot (which sinks upsert by uid).

The byte format is self-describing and versioned so a worker of another version fails
loudly instead of misreading:

    b"VMSNAP" | u8 version | u32 header length | JSON header | state bytes | book bytes
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import urllib.parse
from pathlib import Path
from typing import Iterator, Optional, Protocol

MAGIC = b"VMSNAP"
VERSION = 1


class SnapshotError(ValueError):
    pass


def encode_snapshot(snap: dict) -> bytes:
    state = snap.get("state") or b""
    book = snap.get("book") or b""
    header = {
        "stream_id": snap["stream_id"],
        "next_index": int(snap["next_index"]),
        "t_end": float(snap["t_end"]),
        "state_len": len(state),
        "book_len": len(book),
        "extra": snap.get("extra") or {},
    }
    h = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<BI", VERSION, len(h)) + h + state + book


def decode_snapshot(data: bytes, where: str = "snapshot") -> dict:
    if not data.startswith(MAGIC):
        raise SnapshotError(f"{where}: not a vmstream snapshot (bad magic)")
    off = len(MAGIC)
    try:
        version, hlen = struct.unpack_from("<BI", data, off)
    except struct.error:
        raise SnapshotError(f"{where}: truncated header") from None
    if version != VERSION:
        raise SnapshotError(f"{where}: snapshot format v{version}, this vmstream reads v{VERSION}")
    off += struct.calcsize("<BI")
    try:
        header = json.loads(data[off:off + hlen])
    except ValueError as e:
        raise SnapshotError(f"{where}: corrupt header ({e})") from None
    off += hlen
    need = off + header["state_len"] + header["book_len"]
    if len(data) != need:
        raise SnapshotError(f"{where}: {len(data)} bytes, expected {need} (truncated or padded)")
    state = data[off:off + header["state_len"]]
    off += header["state_len"]
    book = data[off:off + header["book_len"]]
    return {
        "stream_id": header["stream_id"],
        "next_index": header["next_index"],
        "t_end": header["t_end"],
        "state": state,
        "book": book,
        "extra": header.get("extra") or {},
    }


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
