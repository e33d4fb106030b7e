"""Typed records that flow between the pipeline's stages.

Defined once here so every stage, sink and transport agrees on them:

    Frame ──▶ Segment ──▶ SegmentResult / StreamEvent / StreamSummary

`SEGMENT_SCHEMA` is the one Arrow schema that Parquet files, Kafka payloads and the
FAISS id map follow; `StreamSummary` and `StreamEvent` have their own small schemas.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from vmstream.redaction import redact_text, redact_uri

# Bump when a record's fields change meaning; readers check it (Kafka header, Parquet
# metadata) so an old consumer fails loudly instead of misreading.
# 2: every record carries its stream's `stream_version` (the content identity).
SCHEMA_VERSION = 2


def segment_uid(stream_id: str, segment_index: int) -> int:
    """Stable positive int64 id of a (stream, segment) pair.

    Derived, not assigned, so a re-run or another worker produces the same id and sinks
    upsert instead of duplicating. 63 bits of blake2b: collisions are negligible below
    ~10^8 vectors per store.
    """
    h = hashlib.blake2b(f"{stream_id}\x00{int(segment_index)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(slots=True)
class Frame:
    """One decoded, resized RGB frame.

    `image` is uint8 [H, W, 3] (numpy or torch), already at model resolution: decoders
    resize in libswscale / DALI, never handing out full-resolution RGB.
    `t` is seconds: the container's presentation time for files, wall clock for live.
    """

    stream_id: str
    index: int
    t: float
    image: Any
    # Set on the first frame after a live source reconnected: (t_lost, t_back).
    gap: Optional[tuple[float, float]] = None


@dataclass(slots=True)
class Segment:
    """T consecutive sampled frames of one stream, model-ready.

    `pixels` is float32 [3, T, H, W], normalised with the model's mean / std (its card).
    A stream's last segment may have fewer frames than the others (`num_frames`);
    the model resamples its temporal positions.
    """

    stream_id: str
    index: int
    t_start: float
    t_end: float
    pixels: Any
    frame_times: tuple[float, ...] = ()
    # Live feeds: the (start, end) of every outage since the previous segment.
    gaps: tuple[tuple[float, float], ...] = ()
    # Optional per-segment audio summary: log-mel mean and std, each [n_mels].
    audio: Optional[np.ndarray] = None
    is_last: bool = False
    uri: str = ""
    # A small JPEG of the middle frame (from the frames already decoded), for the
    # `thumbs` table: hits have a picture even when the source is a live feed or gone.
    thumb: bytes = b""

    @property
    def num_frames(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(slots=True)
class SegmentResult:
    """What the model says about one segment; one row of `SEGMENT_SCHEMA`."""

    stream_id: str
    segment_index: int
    t_start: float
    t_end: float
    labels: list[str]
    scores: list[float]
    label_ids: list[int]
    embedding: np.ndarray  # float32 [D]
    model: str = ""
    checkpoint_digest: str = ""
    num_frames: int = 0
    gaps: list[tuple[float, float]] = field(default_factory=list)
    audio: Optional[np.ndarray] = None  # float32 [2 * n_mels]: log-mel mean then std
    uri: str = ""
    # The content identity of the stream these results come from (see StreamStart).
    stream_version: str = ""
    # The segment's thumbnail (see Segment.thumb): its own table, not a segments column.
    thumb: bytes = b""

    def thumb_row(self) -> dict[str, Any]:
        """A row of `THUMB_SCHEMA` (the middle frame's time: the middle of the span)."""
        return {
            "uid": self.uid,
            "stream_id": self.stream_id,
            "segment_index": int(self.segment_index),
            "t": (float(self.t_start) + float(self.t_end)) / 2,
            "jpeg": bytes(self.thumb),
        }

    @property
    def uid(self) -> int:
        return segment_uid(self.stream_id, self.segment_index)

    def to_row(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "stream_id": self.stream_id,
            "segment_index": int(self.segment_index),
            "t_start": float(self.t_start),
            "t_end": float(self.t_end),
            "num_frames": int(self.num_frames),
            "labels": list(self.labels),
            "scores": [float(s) for s in self.scores],
            "label_ids": [int(i) for i in self.label_ids],
            "embedding": np.asarray(self.embedding, dtype=np.float32).tolist(),
            "audio": None if self.audio is None else np.asarray(self.audio, np.float32).tolist(),
            "gap_starts": [float(a) for a, _ in self.gaps],
            "gap_ends": [float(b) for _, b in self.gaps],
            "model": self.model,
            "checkpoint_digest": self.checkpoint_digest,
            "uri": redact_uri(self.uri),
            "stream_version": self.stream_version,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "SegmentResult":
        audio = row.get("audio")
        return cls(
            stream_id=row["stream_id"],
            segment_index=int(row["segment_index"]),
            t_start=float(row["t_start"]),
            t_end=float(row["t_end"]),
            labels=list(row["labels"]),
            scores=[float(s) for s in row["scores"]],
            label_ids=[int(i) for i in row["label_ids"]],
            embedding=np.asarray(row["embedding"], dtype=np.float32),
            model=row.get("model", "") or "",
            checkpoint_digest=row.get("checkpoint_digest", "") or "",
            num_frames=int(row.get("num_frames", 0) or 0),
            gaps=list(zip(row.get("gap_starts") or [], row.get("gap_ends") or [])),
            audio=None if audio is None else np.asarray(audio, dtype=np.float32),
            uri=row.get("uri", "") or "",
            stream_version=row.get("stream_version", "") or "",
        )


SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.int64(), nullable=False),
        pa.field("stream_id", pa.string(), nullable=False),
        pa.field("segment_index", pa.int64(), nullable=False),
        pa.field("t_start", pa.float64(), nullable=False),
        pa.field("t_end", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int32()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("label_ids", pa.list_(pa.int32())),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("audio", pa.list_(pa.float32())),
        pa.field("gap_starts", pa.list_(pa.float64())),
        pa.field("gap_ends", pa.list_(pa.float64())),
        pa.field("model", pa.string()),
        pa.field("checkpoint_digest", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stream_version", pa.string()),
    ],
    metadata={b"vmstream.record": b"SegmentResult", b"vmstream.schema_version": str(SCHEMA_VERSION).encode()},
)


@dataclass(slots=True)
class StreamEvent:
    """Something that happened to a stream that is not a segment: a live gap, a decode
    error, the end of a stream. Sinks store these too, so nothing is only a log line."""

    stream_id: str
    kind: str  # "gap" | "error" | "end"
    t_start: float = math.nan
    t_end: float = math.nan
    message: str = ""
    # e.g. {"broken_packets": 3, "frames": 1200, "reason": "truncated"}
    details: dict[str, Any] = field(default_factory=dict)
    uri: str = ""
    stream_version: str = ""

    KINDS = ("gap", "error", "end")

    def to_row(self) -> dict[str, Any]:
        import json

        return {
            "stream_id": self.stream_id,
            "kind": self.kind,
            "t_start": float(self.t_start),
            "t_end": float(self.t_end),
            "message": redact_text(self.message),
            "details": redact_text(json.dumps(self.details, sort_keys=True, default=str)),
            "uri": redact_uri(self.uri),
            "stream_version": self.stream_version,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "StreamEvent":
        import json

        return cls(
            stream_id=row["stream_id"],
            kind=row["kind"],
            t_start=float(row["t_start"]),
            t_end=float(row["t_end"]),
            message=row.get("message", "") or "",
            details=json.loads(row.get("details") or "{}"),
            uri=row.get("uri", "") or "",
            stream_version=row.get("stream_version", "") or "",
        )


class EndReason(str, Enum):
    """Why a stream ended (the "reason" of its "end" event)."""

    EOF = "eof"  # the input ended where it said it would
    TRUNCATED = "truncated"  # the data ended before the container's duration
    STOPPED = "stopped"  # the caller stopped it (Ctrl-C, a rebalance): resumable
    ERROR = "error"  # decoding failed
    GAVE_UP = "gave_up"  # a live source stopped reconnecting


# The one table from an end reason to a stream's status, shared by every report of a
# stream (summary records, the console table, the runner's report, job callbacks).
_STATUS_OF_END = {EndReason.EOF: "ok", EndReason.TRUNCATED: "truncated", EndReason.STOPPED: "stopped"}


def stream_status(reason: str | None) -> str:
    """A stream's status from its end reason: "ok", "truncated", "stopped" or "error"."""
    try:
        return _STATUS_OF_END.get(EndReason(reason or "eof"), "error")
    except ValueError:
        return "error"


def end_reason(event: "StreamEvent") -> str:
    return (event.details or {}).get("reason", EndReason.EOF.value)


# -- control records: a stream's lifecycle, beside its data ----------------------------
# They travel in the same queues as the data records, in stream order, so "restore the
# state before this segment" and "everything before this is written" need no side channel.


@dataclass(slots=True)
class StreamStart:
    """A stream begins (ahead of its records): `version` is its content identity (a
    file's size, mtime and a hash of its first and last MiB; a live feed's URI).
    `resumed`: it goes on from a snapshot of the same version; otherwise it starts from
    its first segment and its results replace whatever the sinks hold of the stream."""

    stream_id: str
    version: str
    resumed: bool = False


@dataclass(slots=True)
class Resume:
    """Restore the stream's model state from `snapshot` before its next segment."""

    stream_id: str
    snapshot: dict


@dataclass(slots=True)
class SaveSnapshot:
    """Save `snapshot` once every record of the stream before it is durable in the sinks."""

    stream_id: str
    snapshot: dict


@dataclass(slots=True)
class StreamDone:
    """Every record of the stream is ahead of this; `status` is its final status
    ("ok", "truncated", "stopped", "error", or "failed": unusable input)."""

    stream_id: str
    status: str
    error: Optional[str] = None


EVENT_SCHEMA = pa.schema(
    [
        pa.field("stream_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("t_start", pa.float64()),
        pa.field("t_end", pa.float64()),
        pa.field("message", pa.string()),
        pa.field("details", pa.string()),  # JSON object
        pa.field("uri", pa.string()),
        pa.field("stream_version", pa.string()),
    ],
    metadata={b"vmstream.record": b"StreamEvent", b"vmstream.schema_version": str(SCHEMA_VERSION).encode()},
)


@dataclass(slots=True)
class StreamSummary:
    """The video-level answer for a finite stream (long-form classification).

    `mode` says where the labels come from: "last" (the last segment's logits, which
    have seen the whole video through the carried state) or "mean" (mean of all
    segments' logits).
    """

    stream_id: str
    labels: list[str]
    scores: list[float]
    label_ids: list[int]
    mode: str
    duration: float
    segment_count: int
    t_start: float = 0.0
    t_end: float = 0.0
    status: str = "ok"  # "ok" | "error" | "truncated"
    model: str = ""
    checkpoint_digest: str = ""
    uri: str = ""
    stream_version: str = ""

    def to_row(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "labels": list(self.labels),
            "scores": [float(s) for s in self.scores],
            "label_ids": [int(i) for i in self.label_ids],
            "mode": self.mode,
            "duration": float(self.duration),
            "segment_count": int(self.segment_count),
            "t_start": float(self.t_start),
            "t_end": float(self.t_end),
            "status": self.status,
            "model": self.model,
            "checkpoint_digest": self.checkpoint_digest,
            "uri": redact_uri(self.uri),
            "stream_version": self.stream_version,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "StreamSummary":
        out = cls(**{k: row[k] for k in SUMMARY_SCHEMA.names if k != "stream_version"})
        out.stream_version = row.get("stream_version", "") or ""
        return out


# One small JPEG per segment, keyed like the segments table (OUT/thumbs/).
THUMB_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.int64(), nullable=False),
        pa.field("stream_id", pa.string(), nullable=False),
        pa.field("segment_index", pa.int64(), nullable=False),
        pa.field("t", pa.float64()),
        pa.field("jpeg", pa.binary()),
    ],
    metadata={b"vmstream.record": b"SegmentThumb", b"vmstream.schema_version": str(SCHEMA_VERSION).encode()},
)

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("stream_id", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("label_ids", pa.list_(pa.int32())),
        pa.field("mode", pa.string()),
        pa.field("duration", pa.float64()),
        pa.field("segment_count", pa.int64()),
        pa.field("t_start", pa.float64()),
        pa.field("t_end", pa.float64()),
        pa.field("status", pa.string()),
        pa.field("model", pa.string()),
        pa.field("checkpoint_digest", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stream_version", pa.string()),
    ],
    metadata={b"vmstream.record": b"StreamSummary", b"vmstream.schema_version": str(SCHEMA_VERSION).encode()},
)


def rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (from `to_row`) as an Arrow table of exactly `schema`."""
    return pa.Table.from_pylist(list(rows), schema=schema)
