"""The console timeline: what a person watching a run reads.

With few streams (at most `per_segment_streams`, default 4) every segment gets a line:

    cam0   00:01:04-00:01:12  walking             0.83   running 0.10
    cam0   00:01:12-00:01:20  walking             0.79   running 0.12
    cam0   GAP 00:01:20-00:01:31 (11.0 s)  reconnected
    cam1   ERROR  moov atom not found  (file:///videos/broken.mp4)

With more streams a line per segment would scroll faster than anyone reads, so lines
are collapsed to runs: a stream prints a line when its top label changes (the run that
just ended, with its length and mean score), and the whole console is rate-limited
(`max_lines_per_s`; a count of what was held back is printed instead). Gaps and errors
are always printed. `close()` prints the summary table of the StreamSummary records:

    stream  status  duration  segments  answer (mode)           top-3
    cam0    ok      0:10:00   75        cooking 0.71 (last)     cooking 0.71, ...

Times are media seconds for files (H:MM:SS) and wall-clock epochs for live streams
(printed as local clock time).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, TextIO

from vmstream.records import SegmentResult, StreamEvent, StreamSummary, end_reason, stream_status

from .base import Sink, SinkRecord

# Seconds above this are wall-clock epochs (live streams), not media time: 2001-09-09.
_EPOCH_THRESHOLD = 1e9


def fmt_time(t: float) -> str:
    """Media seconds as HH:MM:SS; wall-clock epochs (live streams) as local HH:MM:SS."""
    if t != t:  # NaN
        return "--:--:--"
    if t >= _EPOCH_THRESHOLD:
        return time.strftime("%H:%M:%S", time.localtime(t))
    t = max(0.0, t)
    h, rem = divmod(int(t), 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" if h < 100 else f"{h}:{m:02d}:{s:02d}"


def fmt_duration(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return fmt_time(seconds).lstrip("0").lstrip(":") if seconds < 3600 else fmt_time(seconds)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def short_name(stream_id: str, width: int) -> str:
    """A stream id in `width` characters that keeps what tells streams apart: the file
    name whole where it fits, the start of the path before it, an ellipsis between
    (`/home/me/vi…/one.mp4`)."""
    if len(stream_id) <= width:
        return stream_id
    cut = stream_id.rstrip("/").rfind("/")
    tail = stream_id[cut:] if cut >= 0 else ""
    if tail and len(tail) + 2 <= width:
        head = width - len(tail) - 1
        return stream_id[:head] + "…" + tail
    # No path, or a file name longer than the width: keep both ends of the file name
    # (where names differ, at the start or at a number before the extension).
    name = tail[1:] if tail else stream_id
    keep = width - 1
    front = keep // 2
    return name[:front] + "…" + name[len(name) - (keep - front) :]


class _Style:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text


@dataclass
class _Run:
    """A run of consecutive segments of one stream with the same top label."""

    label: str = ""
    t_start: float = 0.0
    t_end: float = 0.0
    count: int = 0
    score_sum: float = 0.0


@dataclass
class _StreamState:
    segments: int = 0
    gaps: int = 0
    errors: int = 0
    ended: bool = False
    status: str = ""  # from the "end" event's reason, through records.stream_status
    t_first: float = float("nan")
    t_last: float = float("nan")
    run: _Run = field(default_factory=_Run)


class ConsoleSink(Sink):
    """Prints the live timeline to `file` (default stdout).

    `writer`, if given, replaces printing (e.g. `tqdm.write`, so lines do not tear
    progress bars). `show` is how many labels a segment line shows (1-3)."""

    name = "console"

    def __init__(
        self,
        file: Optional[TextIO] = None,
        *,
        writer: Optional[Callable[[str], None]] = None,
        per_segment_streams: int = 4,
        max_lines_per_s: float = 20.0,
        show: int = 2,
        color: Optional[bool] = None,
        stream_width: Optional[int] = None,
        width: Optional[int] = None,
        before_table: Optional[Callable[[], None]] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.file = file or sys.stdout
        self._writer = writer
        self.per_segment_streams = per_segment_streams
        self.max_lines_per_s = max_lines_per_s
        self.show = max(1, min(3, show))
        if color is None:
            color = bool(getattr(self.file, "isatty", lambda: False)())
        self.style = _Style(color)
        # Lines fit the terminal they are printed on (`width`: its columns; None when the
        # output is a file or a pipe, where nothing wraps).
        if width is None:
            width = terminal_width(sys.stdout if writer is not None else self.file)
        self.width = width
        # A quarter of the terminal for the stream's name, within 16-40 characters.
        if stream_width is None:
            import shutil

            stream_width = max(16, min(40, (width or shutil.get_terminal_size((80, 24)).columns) // 4))
        self.stream_width = stream_width
        # Called once before the summary table (run: closes the progress bar, so its last
        # state stays above the table instead of being drawn again below it).
        self._before_table = before_table
        self._broken = False  # stdout's reader went away: the timeline stops, the run goes on
        self._clock = clock
        self.streams: dict[str, _StreamState] = {}
        self.summaries: list[StreamSummary] = []
        self._window_start = clock()
        self._window_lines = 0
        self._suppressed = 0
        self._closed = False
        self._sid_width = 4

    # -- output ----------------------------------------------------------------------
    def _emit(self, line: str, *, always: bool = False) -> None:
        now = self._clock()
        if now - self._window_start >= 1.0:
            if self._suppressed:
                self._out(self.style(f"… {self._suppressed} timeline lines held back (many streams)", "2"))
                self._suppressed = 0
            self._window_start, self._window_lines = now, 0
        if not always and self._window_lines >= self.max_lines_per_s:
            self._suppressed += 1
            return
        self._window_lines += 1
        self._out(line)

    def _out(self, line: str) -> None:
        if self._broken:
            return
        try:
            if self._writer is not None:
                self._writer(line)
            else:
                print(line, file=self.file, flush=True)
        except BrokenPipeError:
            # `vmstream run ... | head`: the reader is gone. Losing the timeline must not
            # lose the run: stop printing, and let sinks and snapshots finish.
            self._broken = True
            _detach_stdout(self.file)
            import logging

            logging.getLogger(__name__).warning(
                "the timeline's reader closed its end (broken pipe): no more timeline lines; the run goes on"
            )

    def _sid(self, stream_id: str) -> str:
        self._sid_width = max(self._sid_width, min(self.stream_width, len(stream_id)))
        return short_name(stream_id, self.stream_width).ljust(self._sid_width)

    @property
    def collapsed(self) -> bool:
        active = sum(1 for s in self.streams.values() if not s.ended)
        return active > self.per_segment_streams

    # -- formatting ------------------------------------------------------------------
    def _room(self, head: str) -> Optional[int]:
        """Characters left on the line after `head` (None: no limit)."""
        return None if not self.width else max(0, self.width - len(head))

    def format_segment(self, r: SegmentResult) -> str:
        head = f"{self._sid(r.stream_id)}  {fmt_time(r.t_start)}-{fmt_time(r.t_end)}  "
        room = self._room(head)
        if r.labels:
            lw = 24 if room is None else max(6, min(24, room - 5))
            top = f"{_fit(r.labels[0], lw):<{lw}} {r.scores[0]:.2f}" if r.scores else _fit(r.labels[0], lw)
        else:
            top = "(no label)"
        rest: list[str] = []
        for lab, sc in zip(r.labels[1 : self.show], r.scores[1 : self.show]):
            part = f"{_fit(lab, 18)} {sc:.2f}"
            # The other labels only where they fit whole: the top label is what a line is for.
            if room is not None and len(top) + 3 + len("  ".join([*rest, part])) > room:
                break
            rest.append(part)
        return f"{head}{self.style(top, '1')}" + (f"   {self.style('  '.join(rest), '2')}" if rest else "")

    def format_run(self, stream_id: str, run: _Run) -> str:
        head = f"{self._sid(stream_id)}  {fmt_time(run.t_start)}-{fmt_time(run.t_end)}  "
        mean = run.score_sum / max(1, run.count)
        tail = f" x{run.count:<4} mean {mean:.2f}"
        room = self._room(head)
        lw = 24 if room is None else max(6, min(24, room - len(tail)))
        return f"{head}{self.style(f'{_fit(run.label, lw):<{lw}}', '1')}{tail}"

    def format_gap(self, stream_id: str, t0: float, t1: float, message: str = "") -> str:
        head = f"{self._sid(stream_id)}  "
        text = f"GAP {fmt_time(t0)}-{fmt_time(t1)} ({fmt_duration(t1 - t0)})"
        room = self._room(head + text + "  ")
        if message and room is not None:
            message = _fit(message, max(room, 8))
        return f"{head}{self.style(text, '33')}  {message}".rstrip()

    def format_error(self, e: StreamEvent) -> str:
        # An error is printed whole, however long: it names the input and what is wrong.
        where = f"  ({e.uri})" if e.uri and e.uri not in e.message else ""
        at = f" at {fmt_time(e.t_start)}" if e.t_start == e.t_start else ""
        return f"{self._sid(e.stream_id)}  {self.style('ERROR' + at, '31;1')}  {e.message}{where}"

    # -- the sink --------------------------------------------------------------------
    def write(self, record: SinkRecord) -> None:
        if self._closed:
            raise RuntimeError("ConsoleSink is closed")
        if isinstance(record, SegmentResult):
            self._segment(record)
        elif isinstance(record, StreamEvent):
            self._event(record)
        elif isinstance(record, StreamSummary):
            self.summaries.append(record)
            st = self.streams.setdefault(record.stream_id, _StreamState())
            self._end_stream(record.stream_id, st)
        else:
            raise TypeError(f"ConsoleSink cannot write {type(record).__name__}")

    def _segment(self, r: SegmentResult) -> None:
        st = self.streams.setdefault(r.stream_id, _StreamState())
        st.ended = False
        st.segments += 1
        if st.t_first != st.t_first:
            st.t_first = r.t_start
        st.t_last = r.t_end
        for g0, g1 in r.gaps:  # gaps the source saw since the previous segment
            st.gaps += 1
            self._emit(self.format_gap(r.stream_id, g0, g1), always=True)
        label = r.labels[0] if r.labels else "(no label)"
        score = r.scores[0] if r.scores else 0.0
        if self.collapsed:
            run = st.run
            if run.count and run.label != label:
                self._emit(self.format_run(r.stream_id, run))
                st.run = run = _Run()
            if not run.count:
                run.label, run.t_start = label, r.t_start
            run.count += 1
            run.t_end = r.t_end
            run.score_sum += score
        else:
            if st.run.count:  # switched back from collapsed mode: close the open run
                self._emit(self.format_run(r.stream_id, st.run))
                st.run = _Run()
            self._emit(self.format_segment(r))

    def _event(self, e: StreamEvent) -> None:
        st = self.streams.setdefault(e.stream_id, _StreamState())
        if e.kind == "gap":
            st.gaps += 1
            self._emit(self.format_gap(e.stream_id, e.t_start, e.t_end, e.message), always=True)
        elif e.kind == "error":
            st.errors += 1
            self._emit(self.format_error(e), always=True)
        elif e.kind == "end":
            st.status = stream_status(end_reason(e))
            self._end_stream(e.stream_id, st)
        else:
            self._emit(f"{self._sid(e.stream_id)}  {e.kind.upper()}  {e.message}")

    def _end_stream(self, stream_id: str, st: _StreamState) -> None:
        if st.run.count:
            self._emit(self.format_run(stream_id, st.run), always=True)
            st.run = _Run()
        st.ended = True

    def flush(self) -> None:
        if self._writer is None and not self._broken:
            try:
                self.file.flush()
            except BrokenPipeError:
                self._broken = True
                _detach_stdout(self.file)

    def close(self) -> None:
        if self._closed:
            return
        for sid, st in self.streams.items():
            if st.run.count:
                self._emit(self.format_run(sid, st.run), always=True)
                st.run = _Run()
        if self._suppressed:
            self._out(f"… {self._suppressed} timeline lines held back (many streams)")
            self._suppressed = 0
        if self.summaries or self.streams:
            if self._before_table is not None:
                self._before_table()
            self._out("")
            for line in format_summary_table(self.summaries, self.streams, width=self.width).splitlines():
                self._out(line)
        self._closed = True
        self.flush()


def format_summary_table(
    summaries: Iterable[StreamSummary],
    streams: Optional[dict[str, _StreamState]] = None,
    *,
    width: Optional[int] = None,
) -> str:
    """The end-of-run table: one row per stream (a StreamSummary, or the counts of a
    stream that ended without one, e.g. after an error). With `width` (a terminal's
    columns) it fits: the top-3 column goes first, then gaps/errors where all are 0,
    then the stream name (to 24) and the answer's label are shortened."""
    table = _SummaryTable(list(summaries), streams or {})
    if width:
        table.fit(width)
    rows = table.rows
    total_seg = sum(int(r[3]) for r in rows)
    n_err = sum(1 for r in rows if r[1] == "error")
    n_stop = sum(1 for r in rows if r[1] == "stopped")
    w = table.widths()
    lines = ["  ".join(h.ljust(n) for h, n in zip(table.header, w)).rstrip(), "  ".join("-" * n for n in w)]
    for r in rows:
        lines.append("  ".join(c.ljust(n) for c, n in zip(r, w)).rstrip())
    lines.append(
        f"{len(rows)} streams, {total_seg} segments"
        + (f", {n_err} failed" if n_err else "")
        + (f", {n_stop} stopped (resumable)" if n_stop else "")
    )
    return "\n".join(lines)


class _SummaryTable:
    """The summary table's cells, and how they shrink to a width."""

    def __init__(self, summaries: list[StreamSummary], streams: dict[str, _StreamState]):
        latest = {s.stream_id: s for s in summaries}  # a re-sent summary replaces the old
        modes = {s.mode for s in latest.values()}
        one_mode = modes.pop() if len(modes) == 1 else None  # said once, in the header
        self.header = [
            "stream",
            "status",
            "duration",
            "segments",
            f"answer ({one_mode})" if one_mode else "answer",
            "top-3",
            "gaps",
            "errors",
        ]
        self.rows: list[list[str]] = []
        self.answers: list[tuple[str, str]] = []  # (label, the rest), so a cut keeps the score
        for sid in sorted(set(latest) | set(streams)):
            s = latest.get(sid)
            st = streams.get(sid, _StreamState())
            if s is not None:
                rest = f" {s.scores[0]:.2f}" + ("" if one_mode else f" ({s.mode})") if s.labels and s.scores else ""
                self.answers.append((s.labels[0], rest) if rest else ("-", ""))
                top3 = ", ".join(f"{lab} {sc:.2f}" for lab, sc in list(zip(s.labels, s.scores))[:3]) or "-"
                self.rows.append(
                    [
                        sid,
                        s.status,
                        fmt_time(s.duration),
                        str(s.segment_count),
                        "",
                        _fit(top3, 48),
                        str(st.gaps),
                        str(st.errors),
                    ]
                )
            else:
                status = st.status or ("error" if st.errors else ("running" if not st.ended else "ok"))
                done = st.t_last - st.t_first
                duration = fmt_time(done) if done == done and done < _EPOCH_THRESHOLD else "-"
                self.answers.append(("-", ""))
                self.rows.append([sid, status, duration, str(st.segments), "", "-", str(st.gaps), str(st.errors)])
        self.ids = [r[0] for r in self.rows]
        self.stream_w, self.label_w = 40, 36
        self._shape()

    def _shape(self) -> None:
        # The stream column keeps what tells streams apart (the file name); others are cut.
        for r, sid, (label, rest) in zip(self.rows, self.ids, self.answers):
            r[0] = short_name(sid, self.stream_w)
            r[4] = _fit(label, self.label_w) + rest

    def widths(self) -> list[int]:
        return [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h) for i, h in enumerate(self.header)
        ]

    def _total(self) -> int:
        return sum(self.widths()) + 2 * (len(self.header) - 1)

    def _drop(self, name: str) -> None:
        i = self.header.index(name)
        del self.header[i]
        for r in self.rows:
            del r[i]

    def fit(self, width: int) -> None:
        if self._total() <= width:
            return
        self._drop("top-3")
        for name in ("gaps", "errors"):
            if self._total() > width and all(r[self.header.index(name)] == "0" for r in self.rows):
                self._drop(name)
        if self._total() > width:
            self.header[3] = "segs"
        for col, floor in ((0, 24), (4, 8), (0, 12)):
            over = self._total() - width
            if over <= 0:
                break
            if col == 0:
                self.stream_w = max(floor, min(self.stream_w, self.widths()[0]) - over)
            else:
                longest = max((len(a[0]) for a in self.answers), default=1)
                self.label_w = max(floor, min(self.label_w, longest) - over)
            self._shape()


def terminal_width(file) -> Optional[int]:
    """The columns of the terminal `file` is, or None (a file, a pipe)."""
    import os

    try:
        if not file.isatty():
            return None
        cols = os.get_terminal_size(file.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None
    env = os.environ.get("COLUMNS", "")
    return int(env) if env.isdigit() and int(env) > 0 else cols  # $COLUMNS wins where set, as for shutil


def _detach_stdout(file) -> None:
    """Point a closed stdout at /dev/null, so later writes and the interpreter's final
    flush do not raise again."""
    import os

    target = file if file is not None else sys.stdout
    try:
        if target is sys.stdout or target is sys.__stdout__:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
