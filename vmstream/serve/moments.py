"""Moments: the hits of one stream that are adjacent segments, merged into one span
scored by its best hit (what a person wants to watch, not four 2-second pieces)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Moment:
    stream: str
    start: float
    end: float
    score: float
    best: object  # the best SearchHit
    hits: list = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [h.uid for h in self.hits]


MAX_MOMENT_S = 30.0


def merge_moments(hits, *, max_gap_s: float = 0.5, max_span_s: float = MAX_MOMENT_S) -> list[Moment]:
    """Hits (any order) -> moments, best first. Two hits of a stream join when their
    segment indexes are consecutive or their spans touch (within `max_gap_s`), as long
    as the moment stays within `max_span_s` (a moment is something to watch, and its clip
    is bounded)."""
    by_stream: dict[str, list] = {}
    for h in hits:
        by_stream.setdefault(h.stream_id, []).append(h)
    out: list[Moment] = []
    for stream, hs in by_stream.items():
        hs.sort(key=lambda h: (h.t_start, h.segment_index))
        cur = None
        for h in hs:
            if (
                cur is not None
                and (h.segment_index == cur.hits[-1].segment_index + 1 or h.t_start <= cur.end + max_gap_s)
                and h.t_end - cur.start <= max_span_s
            ):
                cur.hits.append(h)
                cur.end = max(cur.end, h.t_end)
                if h.score > cur.score:
                    cur.score, cur.best = h.score, h
                continue
            cur = Moment(stream=stream, start=h.t_start, end=h.t_end, score=h.score, best=h, hits=[h])
            out.append(cur)
    out.sort(key=lambda m: -m.score)
    return out
