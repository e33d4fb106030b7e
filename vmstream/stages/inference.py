"""The inference stage: segments of many streams in, results out, state kept per stream.

VideoMamba's recurrent mode carries each stream's SSM state from one segment to the
next. This stage owns those states: segments of different streams that happen to be
ready together are stacked into one forward (their states stacked likewise and split
again after), so many streams share one model. A stream's segments must arrive in
order; the runner guarantees it (one FIFO per stream).

When a finite stream ends (its "end" StreamEvent), the stage emits a StreamSummary:
the video-level labels from the last segment's logits (which have seen the whole
video through the carried state) or from the mean of all segments' logits.

A segment whose embedding or logits are not finite (NaN or Inf: numerical overflow;
the weights themselves are checked at load) is never a result: its slot is an "error"
StreamEvent with reason "non_finite", and the stream has failed. The carried state is
then poisoned, so the stream's later segments are not run (each slot an "error" event
saying it was skipped) and its summary has status "error" and no labels;
`failure(stream_id)` tells the caller, which owns the stream's final status.
"""

from __future__ import annotations

import io
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from vmstream.records import Segment, SegmentResult, StreamEvent, StreamSummary, end_reason, stream_status
from vmstream.redaction import redact_uri
from vmstream.stages.segmenter import group_by_shape, stack_segments

log = logging.getLogger(__name__)

InferenceOutput = Union[SegmentResult, StreamEvent, StreamSummary]


@dataclass
class _StreamBook:
    """Per-stream bookkeeping besides the model state: what the summary needs."""

    state: object = None  # StreamState, batch 1
    next_index: int = 0
    segments: int = 0
    t_start: float = math.nan
    t_end: float = math.nan
    uri: str = ""
    last_logits: Optional[torch.Tensor] = None
    sum_logits: Optional[torch.Tensor] = None
    failed: str = ""  # why the stream failed (non-finite output); "" while it is fine

    def to_bytes(self) -> bytes:
        """The summary accumulators (the model state is serialized separately)."""
        buf = io.BytesIO()
        torch.save(
            {
                "next_index": self.next_index,
                "segments": self.segments,
                "t_start": self.t_start,
                "t_end": self.t_end,
                "uri": redact_uri(self.uri),  # snapshots go to the state topic
                "last_logits": self.last_logits,
                "sum_logits": self.sum_logits,
                "failed": self.failed,  # a resumed failed stream stays failed
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "_StreamBook":
        d = torch.load(io.BytesIO(data), weights_only=True)
        return cls(**d)


@dataclass
class ModelMeta:
    name: str
    checkpoint_digest: str
    class_names: Optional[list[str]]
    num_frames: int
    img_size: int

    @classmethod
    def of(cls, model) -> "ModelMeta":
        card = model.card
        return cls(
            name=card.name,
            checkpoint_digest=card.checkpoint_digest,
            class_names=list(card.class_names) if card.class_names else None,
            num_frames=card.num_frames,
            img_size=card.img_size,
        )


@dataclass
class StageStats:
    segments: int = 0
    batches: int = 0
    busy_s: float = 0.0
    per_batch_size: dict = field(default_factory=dict)


class InferenceStage:
    """Run VideoMamba's recurrent mode over segments of any number of streams."""

    def __init__(
        self,
        model,
        *,
        device: Union[str, torch.device] = "cpu",
        top_k: int = 5,
        summary: str = "last",
        class_names: Optional[Sequence[str]] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        if summary not in ("last", "mean"):
            raise ValueError(f"summary must be 'last' or 'mean', got {summary!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta = ModelMeta.of(model)
        if class_names is not None:
            self.meta.class_names = list(class_names)
        self.top_k = int(top_k)
        self.summary_mode = summary
        self.dtype = dtype
        self._books: "OrderedDict[str, _StreamBook]" = OrderedDict()
        # Failed streams' reasons, kept past end_stream() for the caller's final status
        # (bounded: a long-running worker sees many streams).
        self._failures: "OrderedDict[str, str]" = OrderedDict()
        self.stats = StageStats()

    # ----------------------------------------------------------------- state

    def has_stream(self, stream_id: str) -> bool:
        return stream_id in self._books

    def active_streams(self) -> list[str]:
        return list(self._books)

    def snapshot(self, stream_id: str) -> dict:
        """Everything needed to continue `stream_id` elsewhere: model state bytes,
        summary accumulators, the next segment index and the last segment's end time."""
        book = self._books[stream_id]
        return {
            "stream_id": stream_id,
            "next_index": book.next_index,
            "t_end": book.t_end,
            "state": book.state.to_bytes() if book.state is not None else b"",
            "book": book.to_bytes(),
        }

    def restore(self, snap: dict) -> None:
        """Resume a stream from `snapshot()` output (possibly made by another process)."""
        book = self.read_snapshot(snap)
        self._books[snap["stream_id"]] = book
        if book.failed:
            self._failures[snap["stream_id"]] = book.failed

    def read_snapshot(self, snap: dict) -> "_StreamBook":
        """The stream's book and model state in `snap`, installed nowhere; raises when
        the snapshot is damaged or not one of this model (checked before a resume, so
        a bad one starts the stream over instead of failing the pipeline)."""
        from vmstream.models import StreamState

        book = _StreamBook.from_bytes(snap["book"])
        if snap.get("state"):
            book.state = StreamState.from_bytes(snap["state"], device=self.device, expect=self.model.state_spec())
        return book

    def drop(self, stream_id: str) -> None:
        self._books.pop(stream_id, None)

    def failure(self, stream_id: str) -> Optional[str]:
        """Why `stream_id` failed in this stage (its output was not finite), or None."""
        return self._failures.get(stream_id)

    def take_failure(self, stream_id: str) -> Optional[str]:
        """`failure`, forgotten: the stream has ended, and a later run of the same id
        starts clean."""
        return self._failures.pop(stream_id, None)

    # ----------------------------------------------------------------- compute

    def _book(self, seg: Segment) -> _StreamBook:
        book = self._books.get(seg.stream_id)
        if book is None:
            book = _StreamBook(next_index=seg.index, uri=seg.uri)
            self._books[seg.stream_id] = book
        if seg.index != book.next_index:
            raise ValueError(
                f"stream {seg.stream_id!r}: got segment {seg.index}, expected {book.next_index} "
                "(segments of a stream must arrive in order)"
            )
        return book

    def _topk(self, logits: torch.Tensor) -> tuple[list[str], list[float], list[int]]:
        probs = torch.softmax(logits.float(), dim=-1)
        k = min(self.top_k, probs.shape[-1])
        scores, ids = probs.topk(k)
        ids_l = ids.tolist()
        names = self.meta.class_names
        labels = [names[i] if names and i < len(names) else f"class_{i}" for i in ids_l]
        return labels, scores.tolist(), ids_l

    @torch.inference_mode()
    def process(self, segments: Sequence[Segment]) -> list[SegmentResult]:
        """One step: at most one segment per stream. Segments of equal shape run as one
        batch; their results come back in the order given."""
        ids = [s.stream_id for s in segments]
        if len(set(ids)) != len(ids):
            raise ValueError("process() takes at most one segment per stream per call")
        import time

        t0 = time.perf_counter()
        out: list[Optional[InferenceOutput]] = [None] * len(segments)
        live: list[Segment] = []
        for i, s in enumerate(segments):
            book = self._books.get(s.stream_id)
            if book is not None and book.failed:
                out[i] = self._skip(s, self._book(s))
            else:
                live.append(s)
        position = {s.stream_id: i for i, s in enumerate(segments)}  # one segment per stream
        for segs in group_by_shape(live):
            idxs = [position[s.stream_id] for s in segs]
            books = [self._book(s) for s in segs]
            clip = stack_segments(segs).to(self.device)
            if self.dtype is not None:
                clip = clip.to(self.dtype)
            states = [b.state if b.state is not None else self.model.init_state(1, device=self.device) for b in books]
            from vmstream.models import StreamState

            state = states[0] if len(states) == 1 else StreamState.stack(states)
            res = self.model.forward_segment(clip, state)
            new_states = [res.state] if len(segs) == 1 else res.state.split(1)
            feats = res.features.float().cpu()
            logits = res.logits.float().cpu()
            for j, (i, s, b) in enumerate(zip(idxs, segs, books)):
                b.next_index = s.index + 1
                bad = [
                    name
                    for name, t in (("embedding", feats[j]), ("logits", logits[j]))
                    if not bool(torch.isfinite(t).all())
                ]
                if bad:
                    out[i] = self._fail(s, b, bad)
                    continue
                b.state = new_states[j]
                b.segments += 1
                if math.isnan(b.t_start):
                    b.t_start = s.t_start
                b.t_end = s.t_end
                b.last_logits = logits[j].clone()
                b.sum_logits = logits[j].clone() if b.sum_logits is None else b.sum_logits + logits[j]
                labels, scores, label_ids = self._topk(logits[j])
                out[i] = SegmentResult(
                    stream_id=s.stream_id,
                    segment_index=s.index,
                    t_start=s.t_start,
                    t_end=s.t_end,
                    labels=labels,
                    scores=scores,
                    label_ids=label_ids,
                    embedding=feats[j].numpy().astype(np.float32, copy=False),
                    model=self.meta.name,
                    checkpoint_digest=self.meta.checkpoint_digest,
                    num_frames=s.num_frames,
                    gaps=list(s.gaps),
                    audio=s.audio,
                    uri=s.uri,
                    thumb=s.thumb,
                )
            self.stats.batches += 1
            self.stats.per_batch_size[len(segs)] = self.stats.per_batch_size.get(len(segs), 0) + 1
        self.stats.segments += len(segments)
        self.stats.busy_s += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def _fail(self, s: Segment, book: _StreamBook, bad: list[str]) -> StreamEvent:
        """The stream's output went non-finite: it fails here, its state is dropped."""
        book.failed = (
            f"segment {s.index} ({s.t_start:.2f}-{s.t_end:.2f} s): the model's output is not finite "
            f"(NaN or Inf in its {' and '.join(bad)}); the stream's later segments are not analysed"
        )
        book.state = None
        book.t_end = s.t_end  # a snapshot resumes after it, as after any segment
        self._failures[s.stream_id] = book.failed
        self._failures.move_to_end(s.stream_id)
        while len(self._failures) > 4096:
            self._failures.popitem(last=False)
        log.error("stream %s: %s", s.stream_id, book.failed)
        return StreamEvent(
            stream_id=s.stream_id,
            kind="error",
            t_start=s.t_start,
            t_end=s.t_end,
            message=book.failed,
            uri=s.uri,
            details={"reason": "non_finite", "segment_index": s.index, "outputs": bad},
        )

    def _skip(self, s: Segment, book: _StreamBook) -> StreamEvent:
        book.next_index = s.index + 1
        book.t_end = s.t_end
        return StreamEvent(
            stream_id=s.stream_id,
            kind="error",
            t_start=s.t_start,
            t_end=s.t_end,
            message=f"segment {s.index} not analysed: the stream failed at an earlier segment "
            "(non-finite model output)",
            uri=s.uri,
            details={"reason": "non_finite", "segment_index": s.index, "skipped": True},
        )

    def end_stream(self, event: StreamEvent) -> Optional[StreamSummary]:
        """The stream's "end" event arrived: its summary (None if it had no segments);
        its state is released. A stream that failed here gets a summary with status
        "error" and no labels (its logits are not finite)."""
        book = self._books.pop(event.stream_id, None)
        if book is not None and book.failed:
            return StreamSummary(
                stream_id=event.stream_id,
                labels=[],
                scores=[],
                label_ids=[],
                mode=self.summary_mode,
                duration=max(0.0, book.t_end - book.t_start) if book.segments else 0.0,
                segment_count=book.segments,
                t_start=book.t_start,
                t_end=book.t_end,
                status="error",
                model=self.meta.name,
                checkpoint_digest=self.meta.checkpoint_digest,
                uri=book.uri or event.uri,
            )
        if book is None or book.segments == 0:
            return None
        logits = book.last_logits if self.summary_mode == "last" else book.sum_logits / book.segments
        labels, scores, label_ids = self._topk(logits)
        return StreamSummary(
            stream_id=event.stream_id,
            labels=labels,
            scores=scores,
            label_ids=label_ids,
            mode=self.summary_mode,
            duration=max(0.0, book.t_end - book.t_start),
            segment_count=book.segments,
            t_start=book.t_start,
            t_end=book.t_end,
            status=stream_status(end_reason(event)),
            model=self.meta.name,
            checkpoint_digest=self.meta.checkpoint_digest,
            uri=book.uri or event.uri,
        )

    def run(self, items: Iterable[Union[Segment, StreamEvent]]) -> Iterator[InferenceOutput]:
        """Sequential form (one segment at a time, any streams interleaved): results,
        events passed through, and a summary after each stream's "end" event."""
        for item in items:
            if isinstance(item, Segment):
                yield from self.process([item])
            elif isinstance(item, StreamEvent):
                yield item
                if item.kind == "end":
                    summary = self.end_stream(item)
                    if summary is not None:
                        yield summary
            else:
                raise TypeError(f"inference stage got {type(item).__name__}, expected Segment or StreamEvent")
