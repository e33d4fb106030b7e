"""Timeline plots of labels over a whole video (`vmstream run --plot`): PNG or HTML.

People would rather look at an hour of labels than read them. One picture per stream:

  - time on x (HH:MM:SS; live streams in clock time);
  - a "top label" strip: every segment coloured by its top label, opacity = score;
  - one track per label (the labels with the most score mass over the video, at most
    `max_tracks`; the rest summed into "other"): a bar wherever the label is among the
    segment's top-k, opacity = its score, so a label's presence and confidence read at
    a glance across hundreds of segments;
  - gaps (live outages) as grey hatched spans, errors as red lines.

PNG uses matplotlib (the `plot` extra; imported only when a PNG is asked for, with the
object API and the Agg canvas, so no display and no global pyplot state). HTML needs
nothing: one self-contained file with inline SVG and a tooltip per bar.

    plot_timeline(results_or_parquet_dir, "out/timeline.png")   -> [Path, ...]
    PlotSink("out/timeline.html")   # collects while the run goes, draws on close()
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import re
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from vmstream.records import SegmentResult, StreamEvent, StreamSummary

from .base import Sink, SinkRecord
from .console import fmt_time

PathLike = Union[str, os.PathLike]

# matplotlib's tab20, reordered so the first ten are the strong tones; HTML uses it
# without importing matplotlib.
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
]
OTHER_COLOR = "#b0b0b0"
MIN_ALPHA = 0.12  # a score of 0.01 must still be visible as "there"


@dataclass(frozen=True)
class _Seg:
    t_start: float
    t_end: float
    labels: tuple[str, ...]
    scores: tuple[float, ...]
    num_frames: int = 0  # frames sampled in the segment (0: unknown)


@dataclass
class Timeline:
    """What one stream's plot shows (light: no embeddings)."""

    stream_id: str
    segments: list[_Seg]
    gaps: list[tuple[float, float]]
    errors: list[tuple[float, str]]
    summary: Optional[StreamSummary] = None

    @property
    def t0(self) -> float:
        starts = [s.t_start for s in self.segments] + [g[0] for g in self.gaps]
        return min(starts) if starts else 0.0

    @property
    def t1(self) -> float:
        ends = [s.t_end for s in self.segments] + [g[1] for g in self.gaps]
        return max(ends) if ends else 1.0


def _alpha(score: float) -> float:
    return MIN_ALPHA + (1.0 - MIN_ALPHA) * min(1.0, max(0.0, float(score)))


def choose_tracks(segments: Sequence[_Seg], top_k: int, max_tracks: int) -> list[str]:
    """Labels ordered by total score over the video (ties: first appearance)."""
    mass: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for i, s in enumerate(segments):
        for lab, sc in zip(s.labels[:top_k], s.scores[:top_k]):
            mass[lab] += float(sc)
            first.setdefault(lab, i)
    return sorted(mass, key=lambda lab: (-mass[lab], first[lab]))[:max_tracks]


def _label_colors(tracks: Sequence[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(tracks)}


def build_timelines(source) -> dict[str, Timeline]:
    """Timelines per stream from SegmentResults/StreamEvents/StreamSummaries, dict rows
    (SEGMENT_SCHEMA), or a Parquet sink directory (segments, events, summaries)."""
    if isinstance(source, (str, os.PathLike)):
        from vmstream.store.results import read_table

        out = Path(source)
        records: list = [SegmentResult.from_row(r) for r in read_table(out, "segments").to_pylist()]
        if (out / "events").is_dir():
            records += [StreamEvent.from_row(r) for r in read_table(out, "events").to_pylist()]
        if (out / "summaries").is_dir():
            records += [StreamSummary.from_row(r) for r in read_table(out, "summaries").to_pylist()]
        source = records
    timelines: dict[str, Timeline] = {}

    def tl(sid: str) -> Timeline:
        return timelines.setdefault(sid, Timeline(sid, [], [], []))

    for rec in source:
        if isinstance(rec, dict):
            rec = SegmentResult.from_row(rec)
        if isinstance(rec, SegmentResult):
            t = tl(rec.stream_id)
            t.segments.append(
                _Seg(
                    float(rec.t_start),
                    float(rec.t_end),
                    tuple(rec.labels),
                    tuple(float(s) for s in rec.scores),
                    int(rec.num_frames or 0),
                )
            )
            t.gaps.extend((float(a), float(b)) for a, b in rec.gaps)
        elif isinstance(rec, StreamEvent):
            if rec.kind == "gap":
                tl(rec.stream_id).gaps.append((rec.t_start, rec.t_end))
            elif rec.kind == "error":
                tl(rec.stream_id).errors.append((rec.t_start, rec.message))
        elif isinstance(rec, StreamSummary):
            tl(rec.stream_id).summary = rec
        else:
            raise TypeError(f"cannot plot {type(rec).__name__}")
    for t in timelines.values():
        t.segments.sort(key=lambda s: s.t_start)
        t.gaps = sorted(set(t.gaps))
        t.segments = _close_sampling_gaps(t.segments)
    return timelines


def _close_sampling_gaps(segs: list[_Seg]) -> list[_Seg]:
    """A segment's times are its first and last frame; the video between its last frame
    and the next segment's first (one sampling step) belongs to it too. Drawn as is,
    every segment boundary would look like an outage, so bars reach the next segment
    when the space between them is about one sampling step (the segment's span over its
    frames less one), or a small fraction of the segment when its frame count is unknown;
    real gaps are longer and are drawn separately."""
    out = list(segs)
    for i in range(len(out) - 1):
        cur, nxt = out[i], out[i + 1]
        space = nxt.t_start - cur.t_end
        span = max(cur.t_end - cur.t_start, 0.0)
        # 1.5 steps: timestamps are rounded to the stream's time base
        limit = 1.5 * span / (cur.num_frames - 1) if cur.num_frames > 1 else 0.25 * span
        if 0 < space <= limit:
            out[i] = dataclasses.replace(cur, t_end=nxt.t_start)
    return out


def _safe_name(stream_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stream_id).strip("_")[:80] or "stream"


def plot_timeline(
    source,
    out_path: PathLike,
    *,
    stream_id: Optional[str] = None,
    top_k: int = 3,
    max_tracks: int = 12,
    title: Optional[str] = None,
) -> list[Path]:
    """Draw the timeline(s) of `source` (see `build_timelines`) to `out_path`.

    The format follows the suffix (.png or .html). With several streams (and no
    `stream_id`), one file per stream: OUT-<stream>.png. Returns the paths written."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lower()
    if fmt not in (".png", ".html", ".htm"):
        raise ValueError(f"plot output {out_path} must end in .png or .html")
    timelines = build_timelines(source)
    if stream_id is None:  # a stream that failed before its first segment has no timeline
        timelines = {sid: t for sid, t in timelines.items() if t.segments}
    else:
        if stream_id not in timelines:
            raise KeyError(f"no results for stream {stream_id!r} (have: {', '.join(sorted(timelines)) or 'none'})")
        timelines = {stream_id: timelines[stream_id]}
    if not timelines:
        raise ValueError("nothing to plot: no segment results")
    # A video-text model run without --labels gives embeddings only: a chart of no labels
    # is an empty frame, so such streams are not drawn.
    labelled = {sid: t for sid, t in timelines.items() if any(seg.labels for seg in t.segments)}
    if not labelled:
        raise ValueError(
            'nothing to plot: the segments have no labels (a video-text model gives labels with --labels "a,b,c")'
        )
    timelines = labelled
    out_path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for sid, t in sorted(timelines.items()):
        path = (
            out_path
            if len(timelines) == 1
            else out_path.with_name(f"{out_path.stem}-{_safe_name(sid)}{out_path.suffix}")
        )
        if fmt == ".png":
            _draw_png(t, path, top_k=top_k, max_tracks=max_tracks, title=title)
        else:
            path.write_text(_draw_html(t, top_k=top_k, max_tracks=max_tracks, title=title), encoding="utf-8")
        paths.append(path)
    return paths


def _title(t: Timeline, title: Optional[str]) -> str:
    if title:
        return title
    dur = t.t1 - t.t0
    head = f"{t.stream_id} — {len(t.segments)} segments, {fmt_time(dur) if dur < 1e9 else '-'}"
    if t.summary and t.summary.labels:
        s = t.summary
        head += f" — video: {s.labels[0]} {s.scores[0]:.2f} ({s.mode})"
    return head


def _nice_ticks(t0: float, t1: float, target: int = 10) -> list[float]:
    span = max(t1 - t0, 1e-6)
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400):
        if span / step <= target:
            break
    start = math.ceil(t0 / step) * step
    return [start + i * step for i in range(int((t1 - start) // step) + 1)]


# -- PNG (matplotlib) ------------------------------------------------------------------
def _draw_png(t: Timeline, path: Path, *, top_k: int, max_tracks: int, title: Optional[str]) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import to_rgba
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, FuncFormatter
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "PNG timeline plots need matplotlib: pip install 'vmstream[plot]' (or write .html, which needs nothing)"
        ) from e

    tracks = choose_tracks(t.segments, top_k, max_tracks)
    colors = _label_colors(tracks)
    has_other = any(lab not in colors for s in t.segments for lab in s.labels[:top_k])
    rows = ["top label", *tracks] + (["other"] if has_other else [])
    n = len(rows)
    fig = Figure(figsize=(14, 1.3 + 0.32 * n), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def y(i: int) -> float:
        return n - 1 - i

    per_row: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    other_sum = []
    for s in t.segments:
        w = max(s.t_end - s.t_start, 1e-3)
        if s.labels:
            c = colors.get(s.labels[0], OTHER_COLOR)
            per_row[0][0].append((s.t_start, w))
            per_row[0][1].append(to_rgba(c, _alpha(s.scores[0] if s.scores else 1.0)))
        rest = 0.0
        for lab, sc in zip(s.labels[:top_k], s.scores[:top_k]):
            if lab in colors:
                i = 1 + tracks.index(lab)
                per_row[i][0].append((s.t_start, w))
                per_row[i][1].append(to_rgba(colors[lab], _alpha(sc)))
            else:
                rest += sc
        if has_other and rest > 0:
            other_sum.append(((s.t_start, w), to_rgba(OTHER_COLOR, _alpha(rest))))
    if other_sum:
        per_row[n - 1] = ([a for a, _ in other_sum], [c for _, c in other_sum])
    for i, (spans, cols) in per_row.items():
        ax.broken_barh(spans, (y(i) - 0.4, 0.8), facecolors=cols, edgecolors="none")
    ax.axhline(y(0) - 0.5, color="#444444", lw=0.8)  # the strip above, the tracks below

    for g0, g1 in t.gaps:
        ax.axvspan(g0, g1, facecolor="#dddddd", edgecolor="#888888", hatch="///", lw=0.0, zorder=0)
    for te, _msg in t.errors:
        if te == te:
            ax.axvline(te, color="#d62728", lw=1.5)
            ax.annotate(
                "error", (te, n - 0.45), color="#d62728", fontsize=8, ha="left", va="bottom", annotation_clip=False
            )

    ax.set_yticks([y(i) for i in range(n)])
    ax.set_yticklabels(rows, fontsize=9)
    for lab, tick in zip(rows, ax.get_yticklabels()):
        if lab in colors:
            tick.set_color(colors[lab])
        elif lab == "top label":
            tick.set_fontweight("bold")
    ax.set_ylim(-0.6, n - 0.4)
    t0, t1 = t.t0, t.t1
    ax.set_xlim(t0, t1)
    ax.xaxis.set_major_locator(FixedLocator(_nice_ticks(t0, t1)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_time(v)))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#e5e5e5", lw=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(_title(t, title), fontsize=10, loc="left")
    ax.set_xlabel(f"time (opacity = score; bars = the label is in a segment's top {top_k})", fontsize=8)
    fig.savefig(path, format="png")


# -- HTML (inline SVG) -----------------------------------------------------------------
def _draw_html(t: Timeline, *, top_k: int, max_tracks: int, title: Optional[str]) -> str:
    tracks = choose_tracks(t.segments, top_k, max_tracks)
    colors = _label_colors(tracks)
    rows = ["top label", *tracks]
    left, width, row_h, top = 170, 1100, 22, 10
    height = top + row_h * len(rows) + 40
    t0, t1 = t.t0, t.t1
    span = max(t1 - t0, 1e-6)

    def x(v: float) -> float:
        return left + (v - t0) / span * width

    e = html.escape
    parts = []
    for g0, g1 in t.gaps:
        parts.append(
            f'<rect x="{x(g0):.1f}" y="{top}" width="{max(1.0, x(g1) - x(g0)):.1f}" '
            f'height="{row_h * len(rows)}" fill="url(#hatch)"><title>gap {fmt_time(g0)}–{fmt_time(g1)}</title></rect>'
        )
    for i, lab in enumerate(rows):
        yy = top + i * row_h
        color = colors.get(lab, "#222")
        weight = "bold" if i == 0 else "normal"
        parts.append(
            f'<text x="{left - 8}" y="{yy + row_h * 0.68:.1f}" text-anchor="end" fill="{color}" '
            f'font-weight="{weight}">{e(lab[:24])}</text>'
        )
    for s in t.segments:
        xs, w = x(s.t_start), max(0.6, x(s.t_end) - x(s.t_start))
        when = f"{fmt_time(s.t_start)}–{fmt_time(s.t_end)}"
        tip = e(when + "\n" + "\n".join(f"{lab} {sc:.2f}" for lab, sc in zip(s.labels[:top_k], s.scores[:top_k])))
        if s.labels:
            c = colors.get(s.labels[0], OTHER_COLOR)
            parts.append(
                f'<rect x="{xs:.1f}" y="{top + 2}" width="{w:.1f}" height="{row_h - 4}" fill="{c}" '
                f'fill-opacity="{_alpha(s.scores[0] if s.scores else 1.0):.2f}"><title>{tip}</title></rect>'
            )
        for lab, sc in zip(s.labels[:top_k], s.scores[:top_k]):
            if lab in colors:
                yy = top + (1 + tracks.index(lab)) * row_h
                parts.append(
                    f'<rect x="{xs:.1f}" y="{yy + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{colors[lab]}" '
                    f'fill-opacity="{_alpha(sc):.2f}"><title>{tip}</title></rect>'
                )
    axis_y = top + row_h * len(rows) + 4
    parts.append(f'<line x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#444"/>')
    for tick in _nice_ticks(t0, t1):
        parts.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{axis_y + 4}" stroke="#e5e5e5"/>'
            f'<text x="{x(tick):.1f}" y="{axis_y + 18}" text-anchor="middle" font-size="11">{fmt_time(tick)}</text>'
        )
    for te, msg in t.errors:
        if te == te:
            parts.append(
                f'<line x1="{x(te):.1f}" x2="{x(te):.1f}" y1="{top}" y2="{axis_y}" stroke="#d62728" '
                f'stroke-width="2"><title>error: {e(msg)}</title></line>'
            )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{height}" '
        f'font-family="sans-serif" font-size="12"><defs><pattern id="hatch" width="6" height="6" '
        f'patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="#999" stroke-width="2"/></pattern></defs>'
        + "".join(parts)
        + "</svg>"
    )
    errors = "".join(f"<li>{e(fmt_time(te))}: {e(msg)}</li>" for te, msg in t.errors)
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{e(_title(t, title))}</title>'
        f"<style>body{{font-family:sans-serif;margin:16px}} h1{{font-size:15px}} p{{color:#555;font-size:12px}}</style>"
        f"</head><body><h1>{e(_title(t, title))}</h1>{svg}"
        f"<p>Opacity is the score; a bar means the label is in the segment's top {top_k}. "
        f"Hover a bar for its time and scores. Hatched: gaps in the stream.</p>"
        + (f"<ul>{errors}</ul>" if errors else "")
        + "</body></html>\n"
    )


class PlotSink(Sink):
    """Collects labels and times while a run goes (no embeddings, bounded per stream)
    and draws the timeline plot(s) at `close()` (PNG or HTML by `out_path`'s suffix)."""

    name = "plot"

    def __init__(
        self, out_path: PathLike, *, top_k: int = 3, max_tracks: int = 12, max_segments_per_stream: int = 200_000
    ):
        self.out_path = Path(out_path)
        if self.out_path.suffix.lower() not in (".png", ".html", ".htm"):
            raise ValueError(f"plot output {self.out_path} must end in .png or .html")
        self.top_k, self.max_tracks = top_k, max_tracks
        self._records: dict[str, deque] = defaultdict(lambda: deque(maxlen=max_segments_per_stream))
        self._other: list = []
        self.paths: list[Path] = []
        self._closed = False

    def write(self, record: SinkRecord) -> None:
        if isinstance(record, SegmentResult):
            # Keep a light copy: the embedding is not plotted.
            self._records[record.stream_id].append(
                SegmentResult(
                    record.stream_id,
                    record.segment_index,
                    record.t_start,
                    record.t_end,
                    list(record.labels),
                    list(record.scores),
                    [],
                    embedding=None,
                    gaps=list(record.gaps),
                )
            )
        elif isinstance(record, (StreamEvent, StreamSummary)):
            self._other.append(record)
        else:
            raise TypeError(f"PlotSink cannot write {type(record).__name__}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        records = [r for q in self._records.values() for r in q] + self._other
        if any(isinstance(r, SegmentResult) for r in records):
            self.paths = plot_timeline(records, self.out_path, top_k=self.top_k, max_tracks=self.max_tracks)
