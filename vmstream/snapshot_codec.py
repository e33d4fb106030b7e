"""The byte format of a stream snapshot (what a stream needs to resume elsewhere).

A snapshot is a dict: the stream's model state (StreamState bytes, "state"), its
summary accumulators ("book"), the index of the next segment ("next_index"), the end
time of the last processed segment ("t_end") and free-form "extra". The format is
self-describing and versioned so a worker of another version fails loudly instead of
misreading:

    b"VMSNAP" | u8 version | u32 header length | JSON header | state bytes | book bytes

Its own module because two layers store snapshots: the pipeline's local state store
(`vmstream.pipeline.snapshots`) and the Kafka state store (`vmstream.kafka.state`).
"""
from __future__ import annotations

import json
import struct

MAGIC = b"VMSNAP"
VERSION = 1


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this vmstream can read (says which and why)."""


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
