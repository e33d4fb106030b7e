"""How vmstream's records look on Kafka: encoding, Parquet spill, decoding.

One message per record, keyed by stream id (UTF-8), so all of a stream's records land
in one partition in the order they were written. The value is the record's row
(`to_row()` of `vmstream.records`) as JSON (UTF-8; embeddings as float lists written
with the shortest decimals that give back the same float32, so they round-trip bit
for bit; non-finite floats as null, since JSON has no NaN). Headers:

    vmstream.schema_version   b"1"  (SCHEMA_VERSION; a reader refuses newer ones)
    vmstream.kind             b"segment" | b"event" | b"summary"
    vmstream.payload          b"inline" | b"parquet-ref"
    vmstream.uid              the segment uid in decimal (segments only), so a consumer
                              can de-duplicate without parsing the value
    content-type              b"application/json"

Each kind has its own topic (`DEFAULT_TOPICS`): a FAISS indexer reads segments only,
a dashboard reads summaries only, and neither has to skip the other kinds. The kind
header is there anyway so a consumer of several topics, or a user who points all
three names at one topic, can tell records apart.

A record whose message would exceed the broker's message size limit is written to a
Parquet file (one row, the record's Arrow schema) by the sink, and the message carries
the record's identity and a reference instead (payload `parquet-ref`):

    {"uid": ..., "stream_id": ..., "segment_index": ..., "t_start": ..., "t_end": ...,
     "$ref": {"format": "parquet", "uri": "file:///.../123.parquet", "bytes": N}}

`decode_message` resolves such references (the file must be readable where the
consumer runs: a shared directory in multi-machine deployments).

Delivery is at least once: after a broker outage or a resume a record can arrive twice
(same uid). A stream run again over changed content is a new version of it (the
records' `stream_version`): its records replace the old version's. `dedupe_by_uid`
(and the readers in `vmstream.kafka.readers`) keep, per stream, the records from its
last change of version on in the log, and of each segment its last copy: what the
Parquet sink keeps too.
"""

from __future__ import annotations

import math
import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from vmstream.records import (
    EVENT_SCHEMA,
    SCHEMA_VERSION,
    SEGMENT_SCHEMA,
    SUMMARY_SCHEMA,
    SegmentResult,
    StreamEvent,
    StreamSummary,
    rows_to_table,
)

Record = Union[SegmentResult, StreamEvent, StreamSummary]

H_SCHEMA = "vmstream.schema_version"
H_KIND = "vmstream.kind"
H_PAYLOAD = "vmstream.payload"
H_UID = "vmstream.uid"
H_CONTENT_TYPE = "content-type"

KIND_SEGMENT, KIND_EVENT, KIND_SUMMARY = "segment", "event", "summary"
PAYLOAD_INLINE, PAYLOAD_REF = "inline", "parquet-ref"

# Default topic per record kind (the admin step creates them; see vmstream.kafka.topics).
DEFAULT_TOPICS = {
    KIND_SEGMENT: "vmstream.segments",
    KIND_EVENT: "vmstream.events",
    KIND_SUMMARY: "vmstream.summaries",
}

_SCHEMAS = {KIND_SEGMENT: SEGMENT_SCHEMA, KIND_EVENT: EVENT_SCHEMA, KIND_SUMMARY: SUMMARY_SCHEMA}
_CLASSES = {KIND_SEGMENT: SegmentResult, KIND_EVENT: StreamEvent, KIND_SUMMARY: StreamSummary}
# Float fields that may legitimately be NaN (an event without a time); JSON carries
# them as null and the reader restores NaN.
_NAN_FIELDS = {KIND_EVENT: ("t_start", "t_end"), KIND_SUMMARY: ("duration", "t_start", "t_end")}


class RecordFormatError(ValueError):
    """A Kafka message that is not a vmstream record this version can read."""


def kind_of(record: Record) -> str:
    if isinstance(record, SegmentResult):
        return KIND_SEGMENT
    if isinstance(record, StreamEvent):
        return KIND_EVENT
    if isinstance(record, StreamSummary):
        return KIND_SUMMARY
    raise TypeError(f"not a vmstream record: {type(record).__name__}")


def _dumps(obj: Any) -> bytes:
    # orjson rather than the json module: a segment's embedding is hundreds of floats and
    # json spends ~1.5 us on each (float repr); orjson is ~10x faster, writes float32
    # arrays with float32's shortest round-trip decimals (half the bytes of float64's),
    # and writes NaN/inf as null, which keeps the output strict JSON.
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _row(record: Record) -> dict[str, Any]:
    row = record.to_row()
    if isinstance(record, SegmentResult):
        # float32 arrays instead of to_row's float lists: see _dumps.
        row["embedding"] = np.ascontiguousarray(record.embedding, dtype=np.float32)
        if record.audio is not None:
            row["audio"] = np.ascontiguousarray(record.audio, dtype=np.float32)
    return row


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready for the producer."""

    kind: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    row: dict[str, Any]

    @property
    def size(self) -> int:
        """Bytes the record occupies in a batch, near enough for the size limit."""
        return len(self.key) + len(self.value) + sum(len(k) + len(v) for k, v in self.headers)


def _headers(kind: str, payload: str, row: dict[str, Any]) -> list[tuple[str, bytes]]:
    h = [
        (H_SCHEMA, str(SCHEMA_VERSION).encode()),
        (H_KIND, kind.encode()),
        (H_PAYLOAD, payload.encode()),
        (H_CONTENT_TYPE, b"application/json"),
    ]
    if kind == KIND_SEGMENT:
        h.append((H_UID, str(row["uid"]).encode()))
    return h


def encode_record(record: Record) -> EncodedRecord:
    kind = kind_of(record)
    row = _row(record)
    return EncodedRecord(kind, record.stream_id.encode(), _dumps(row), _headers(kind, PAYLOAD_INLINE, row), row)


def spill_to_parquet(enc: EncodedRecord, spill_dir: Union[str, Path]) -> EncodedRecord:
    """Write the record to its own Parquet file and return the reference message.

    The file is complete (written, fsynced, renamed into place) before the reference
    exists, so a reference never points at a half-written file. Segment files are
    named by uid, so a re-sent segment overwrites its own file with the same content.
    """
    base = Path(spill_dir).absolute() / enc.kind
    base.mkdir(parents=True, exist_ok=True)
    if enc.kind == KIND_SEGMENT:
        name = f"{enc.row['uid']}.parquet"
    else:
        # Events and summaries have no uid; time and pid keep names unique per writer.
        name = f"{abs(hash(enc.row['stream_id'])):x}-{time.time_ns()}-{os.getpid()}.parquet"
    path = base / name
    tmp = base / f".{name}.tmp-{os.getpid()}"
    row = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in enc.row.items()}
    pq.write_table(rows_to_table([row], _SCHEMAS[enc.kind]), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    ref_row = {k: enc.row[k] for k in ("uid", "stream_id", "segment_index", "t_start", "t_end") if k in enc.row}
    ref_row["$ref"] = {"format": "parquet", "uri": path.as_uri(), "bytes": path.stat().st_size}
    return EncodedRecord(enc.kind, enc.key, _dumps(ref_row), _headers(enc.kind, PAYLOAD_REF, enc.row), enc.row)


def _header_map(headers: Optional[Sequence[tuple[str, bytes]]]) -> dict[str, bytes]:
    return {k: v for k, v in (headers or [])}


def _where(topic: Any, partition: Any, offset: Any) -> str:
    return f"{topic}[{partition}]@{offset}"


def _load_ref(ref: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    uri = ref.get("uri", "")
    parsed = urllib.parse.urlparse(uri)
    if ref.get("format") != "parquet" or parsed.scheme != "file":
        raise RecordFormatError(f"message {where}: unsupported payload reference {ref!r}")
    path = urllib.request.url2pathname(parsed.path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise RecordFormatError(f"message {where}: cannot read referenced Parquet file {path}: {e}") from e
    if table.num_rows != 1:
        raise RecordFormatError(f"message {where}: {path} has {table.num_rows} rows, expected 1")
    return table.to_pylist()[0]


def decode_message(
    value: bytes,
    headers: Optional[Sequence[tuple[str, bytes]]],
    *,
    topic: Any = "?",
    partition: Any = "?",
    offset: Any = "?",
    resolve_refs: bool = True,
) -> Record:
    """The record in one message. Raises RecordFormatError, naming the message, for
    anything that is not a vmstream record or comes from a newer schema."""
    where = _where(topic, partition, offset)
    h = _header_map(headers)
    if H_SCHEMA not in h or H_KIND not in h:
        raise RecordFormatError(
            f"message {where} has no vmstream headers ({H_SCHEMA}, {H_KIND}): not a vmstream record"
        )
    try:
        version = int(h[H_SCHEMA])
    except ValueError:
        raise RecordFormatError(f"message {where}: bad {H_SCHEMA} header {h[H_SCHEMA]!r}") from None
    if version > SCHEMA_VERSION:
        raise RecordFormatError(
            f"message {where} has schema version {version}, newer than this vmstream's {SCHEMA_VERSION}: upgrade the reader"
        )
    kind = h[H_KIND].decode()
    if kind not in _CLASSES:
        raise RecordFormatError(f"message {where}: unknown record kind {kind!r}")
    try:
        row = orjson.loads(value)
    except (orjson.JSONDecodeError, TypeError) as e:
        raise RecordFormatError(f"message {where}: value is not JSON: {e}") from e
    if not isinstance(row, dict):
        raise RecordFormatError(f"message {where}: value is not a JSON object")
    if h.get(H_PAYLOAD, b"inline").decode() == PAYLOAD_REF or "$ref" in row:
        if not resolve_refs:
            raise RecordFormatError(f"message {where} is a Parquet reference and resolve_refs is off")
        row = _load_ref(row["$ref"], kind, where)
    for name in _NAN_FIELDS.get(kind, ()):
        if row.get(name) is None:
            row[name] = math.nan
    try:
        return _CLASSES[kind].from_row(row)
    except (KeyError, TypeError, ValueError) as e:
        raise RecordFormatError(f"message {where}: not a valid {kind} row: {e!r}") from e


def dedupe_by_uid(records: Iterable[Record]) -> list[Record]:
    """The records that stand, in order (the records as read from the log, in log order
    within each partition; see the module doc):

    - a stream's records of one kind from its last change of `stream_version` on: a
      version that starts replaces what came before it, as it does in the Parquet sink
      (a rerun of an earlier content after another one counts as starting again);
    - its events and summaries only of the version its segments stand at (a summary of
      the replaced version goes, even before the new version has one);
    - of each segment (by uid) the last copy, at the place of its first; events and
      summaries carry no uid: a duplicate of one is identical in content, so they are
      de-duplicated by their full row.
    """
    records = list(records)
    cut: dict[tuple[str, str], int] = {}  # (stream, kind) -> index where its last version starts
    last: dict[tuple[str, str], str] = {}
    for i, r in enumerate(records):
        k = (r.stream_id, kind_of(r))
        if k not in last or last[k] != r.stream_version:
            cut[k], last[k] = i, r.stream_version
    segment_version = {sid: v for (sid, kind), v in last.items() if kind == KIND_SEGMENT}
    where: dict[Any, int] = {}
    out: list[Record] = []
    for i, r in enumerate(records):
        if i < cut[(r.stream_id, kind_of(r))]:
            continue
        if isinstance(r, SegmentResult):
            key: Any = ("s", r.uid)
        else:
            if segment_version.get(r.stream_id, r.stream_version) != r.stream_version:
                continue
            key = (kind_of(r), orjson.dumps(r.to_row(), option=orjson.OPT_SORT_KEYS))
        if key in where:
            out[where[key]] = r
        else:
            where[key] = len(out)
            out.append(r)
    return out
