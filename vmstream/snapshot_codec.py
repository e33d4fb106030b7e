"""The byte format of a stream snapshot (what a stream needs to resume elsewhere).

A snapshot is a dict: the stream's id ("stream_id"), its model state (StreamState
bytes, "state"), its summary accumulators ("book"), the index of the next segment
("next_index"), the end time of the last processed segment ("t_end") and free-form
"extra" (the stream's version, the model that made it). The format is self-describing,
versioned and checksummed, so a worker of another version fails loudly instead of
misreading, and a damaged snapshot is told from a sound one:

    v2: b"VMSNAP" | u8 2 | u32 header length | JSON header | state | book | sha256 of all before
    v1: b"VMSNAP" | u8 1 | u32 header length | JSON header | state | book   (read, never written)

v1 snapshots (before the checksum) are still read, so a stream stopped by an older
vmstream resumes; the next snapshot of it is written as v2.

Its own module because two layers store snapshots: the pipeline's local state store
(`vmstream.pipeline.snapshots`) and the Kafka state store (`vmstream.kafka.state`).
"""

from __future__ import annotations

import hashlib
import json
import struct

MAGIC = b"VMSNAP"
VERSION = 2
READS = (1, 2)
_DIGEST = 32  # sha256

# Upper bound on the JSON header: a real one is a few hundred bytes.
_MAX_HEADER = 1 << 20


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
    body = MAGIC + struct.pack("<BI", VERSION, len(h)) + h + state + book
    return body + hashlib.sha256(body).digest()


def _header(raw: bytes, where: str) -> dict:
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise SnapshotError(f"{where}: corrupt header ({type(e).__name__})") from None
    ok = (
        isinstance(header, dict)
        and isinstance(header.get("stream_id"), str)
        and all(
            isinstance(header.get(k), int) and not isinstance(header.get(k), bool) and header[k] >= 0
            for k in ("next_index", "state_len", "book_len")
        )
        and isinstance(header.get("t_end"), (int, float))
        and isinstance(header.get("extra", {}), dict)
    )
    if not ok:
        raise SnapshotError(f"{where}: corrupt header (fields missing or of the wrong type)")
    return header


def decode_snapshot(data: bytes, where: str = "snapshot") -> dict:
    if not data:
        raise SnapshotError(f"{where}: empty (0 bytes)")
    if not data.startswith(MAGIC):
        raise SnapshotError(f"{where}: not a vmstream snapshot (bad magic)")
    off = len(MAGIC)
    try:
        version, hlen = struct.unpack_from("<BI", data, off)
    except struct.error:
        raise SnapshotError(f"{where}: truncated header") from None
    if version not in READS:
        raise SnapshotError(f"{where}: snapshot format v{version}, this vmstream reads v{READS[0]}-v{READS[-1]}")
    if version >= 2:
        if len(data) < off + 5 + _DIGEST:
            raise SnapshotError(f"{where}: truncated ({len(data)} bytes)")
        body, digest = data[:-_DIGEST], data[-_DIGEST:]
        if hashlib.sha256(body).digest() != digest:
            raise SnapshotError(
                f"{where}: damaged: its checksum does not match its content (truncated, padded or bytes changed)"
            )
        data = body
    off += struct.calcsize("<BI")
    if hlen > min(_MAX_HEADER, len(data) - off):
        raise SnapshotError(f"{where}: truncated header")
    header = _header(data[off : off + hlen], where)
    off += hlen
    need = off + header["state_len"] + header["book_len"]
    if len(data) != need:
        raise SnapshotError(f"{where}: {len(data)} bytes, expected {need} (truncated or padded)")
    state = data[off : off + header["state_len"]]
    off += header["state_len"]
    book = data[off : off + header["book_len"]]
    return {
        "stream_id": header["stream_id"],
        "next_index": header["next_index"],
        "t_end": header["t_end"],
        "state": state,
        "book": book,
        "extra": header.get("extra") or {},
    }
