"""Reading a file's video packets for the PyAV decoder: one GOP window at a time, with
the lookahead its planner needs (the next keyframe and its leading pictures), seeking,
and the ascending queue of target times it serves.

When an `AudioTap` rides along, the same demux pass carries the audio track's packets
to it (one open, one read of the file); forward seeks are then off, since the audio of
a skipped span is wanted (the segments cover it).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import av
import av.error

from vmstream.stages.decode.audio_tap import AudioTap
from vmstream.stages.decode.container import stream_time
from vmstream.stages.decode.packet_filter import H264Inspector
from vmstream.stages.media import TIME_EPS

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Packet:
    packet: Any
    pts: Optional[int]
    dts: Optional[int]
    t: Optional[float]
    key: bool
    ref: bool = True
    idr: bool = False


class TargetQueue:
    """A peekable ascending target stream (array or endless iterator)."""

    def __init__(self, targets: Iterable[float], start_time: float):
        self._it = iter(targets)
        self._next: Optional[float] = None
        self._lo = start_time - TIME_EPS
        self._fill()

    def _fill(self) -> None:
        self._next = None
        for t in self._it:
            t = float(t)
            if t >= self._lo:
                self._next = t
                return

    def peek(self) -> Optional[float]:
        return self._next

    def pop_below(self, bound: float) -> list[float]:
        """All targets x with x + eps < bound."""
        out = []
        while self._next is not None and self._next + TIME_EPS < bound:
            out.append(self._next)
            self._fill()
        return out

    def pop_until(self, limit: float) -> list[float]:
        """All targets x <= limit (end-of-stream rule)."""
        out = []
        while self._next is not None and self._next <= limit:
            out.append(self._next)
            self._fill()
        return out


class GopReader:
    """Video packets in decode order, one GOP window at a time, with the lookahead
    the planner needs (the next keyframe and its leading pictures), and seeking."""

    def __init__(
        self,
        container,
        stream,
        inspector: Optional[H264Inspector],
        stats: dict,
        use_refs: bool = True,
        audio: Optional[AudioTap] = None,
    ):
        self.c, self.s = container, stream
        self.audio = audio
        self.use_refs = use_refs  # False: read IDR-ness only, treat every picture as a reference
        self.tb = stream.time_base
        self.inspector = inspector
        self.stats = stats
        self._buf: deque[Packet] = deque()
        self._it = None
        self.eof = False
        self.demux_error: Optional[str] = None
        self.last_t: Optional[float] = None  # largest presentation time read
        self.gop_seconds = 0.0  # largest keyframe spacing seen
        self._last_key_t: Optional[float] = None
        self.pts_dts_offset = 0  # keyframe pts - dts (index is in dts for MP4)
        self._offset_known = False
        self.no_seek_until = -math.inf  # a seek that made no progress is not retried
        self.end_time: Optional[float] = None
        try:
            ents = stream.index_entries
            self.index = ents if len(ents) > 1 else None
        except Exception:  # older PyAV or a demuxer without an index
            self.index = None
        self._restart()

    def _restart(self) -> None:
        self._it = self.c.demux(self.s) if self.audio is None else self.c.demux(self.s, self.audio.stream)
        self._buf.clear()
        self.eof = False
        self._last_key_t = None
        if self.audio is not None:
            self.audio.rewound()  # keyframe spacing is only measured between neighbours

    def read(self) -> Optional[Packet]:
        if self._buf:
            return self._buf.popleft()
        if self.eof:
            return None
        while True:
            try:
                p = next(self._it)
            except StopIteration:
                self.eof = True
                return None
            except av.error.EOFError:
                self.eof = True
                return None
            except av.error.FFmpegError as e:
                # A read error mid-file: a truncated or damaged file. Keep what we have.
                self.demux_error = str(e)
                self.eof = True
                return None
            if self.audio is not None and p.stream.index == self.audio.stream.index:
                self.audio.feed(p)
                continue
            if p.size == 0:
                continue  # PyAV's end-of-stream flush packets; we drain ourselves
            self.stats["packets"] += 1
            if p.is_corrupt:
                self.stats["corrupt_packets"] += 1
            pts, dts = p.pts, p.dts
            t = stream_time(pts, self.tb) if pts is not None else None
            key = bool(p.is_keyframe)
            ref, idr = True, key
            if self.inspector is not None:
                kind = self.inspector.inspect(p)
                if kind is not None:
                    ref = kind.ref or not self.use_refs
                    idr = kind.idr
                    self.stats["inspected"] += 1
            if key and t is not None:
                if self._last_key_t is not None and t > self._last_key_t:
                    self.gop_seconds = max(self.gop_seconds, t - self._last_key_t)
                self._last_key_t = t
                if not self._offset_known and dts is not None:
                    self.pts_dts_offset = pts - dts
                    self._offset_known = True
            if t is not None and (self.last_t is None or t > self.last_t):
                self.last_t = t
            return Packet(p, pts, dts, t, key, ref, idr)

    def _unread(self, pkts: list[Packet]) -> None:
        self._buf.extendleft(reversed(pkts))

    def next_window(self) -> Optional[tuple[list[Packet], float, float]]:
        """(window packets, bound, next keyframe time).

        The window runs from a keyframe to just before the next one (decode order).
        `bound` is the earliest presentation time after the window: the next
        keyframe's, or that of its leading pictures (open GOP) if earlier; +inf at
        the end. Frames on screen at targets below `bound` are in this window.
        """
        first = self.read()
        if first is None:
            return None
        win = [first]
        nxt: Optional[Packet] = None
        while True:
            p = self.read()
            if p is None:
                break
            if p.key:
                nxt = p
                break
            win.append(p)
        if nxt is None:
            return win, math.inf, math.inf
        # Leading pictures of the next GOP come right after its keyframe in decode
        # order and are displayed before it.
        look = [nxt]
        while True:
            p = self.read()
            if p is None:
                break
            look.append(p)
            if p.key or p.t is None or nxt.t is None or p.t > nxt.t:
                break
        self._unread(look)
        ts = [q.t for q in look if q.t is not None and not (q.key and q is not nxt)]
        bound = min(ts) if ts else math.inf
        return win, bound, (nxt.t if nxt.t is not None else math.inf)

    def peek_next_key(self) -> Optional[Packet]:
        for p in self._buf:
            if p.key:
                return p
        return None

    def should_seek(self, target: float) -> bool:
        """Whether the keyframe the target needs lies past the next keyframe."""
        if self.audio is not None:
            return False  # the audio of the span a seek skips is wanted
        nk = self.peek_next_key()
        if nk is None or nk.t is None or target <= nk.t + TIME_EPS:
            return False
        if target <= self.no_seek_until or (self.end_time is not None and target >= self.end_time):
            return False
        if self.index is not None:
            ts = self._ticks(target) - self.pts_dts_offset
            try:
                i = self.index.search_timestamp(ts, backward=True)
            except Exception:
                return False
            if i < 0:
                return False
            e = self.index[i]
            nk_ts = nk.dts if nk.dts is not None else nk.pts
            return e.timestamp > nk_ts
        # No index: only when clearly far (reading forward costs demuxing only).
        return self.gop_seconds > 0 and target > nk.t + 2 * self.gop_seconds

    def _ticks(self, t: float) -> int:
        return int(math.floor(t * self.tb.denominator / self.tb.numerator))

    def seek_forward(self, target: float) -> None:
        """Seek towards `target` from a window boundary; if the landing keyframe is not
        past the next keyframe we would have read anyway (imprecise seeking, a target
        past the end), go back there and stop seeking for this target."""
        nk = self.peek_next_key()
        here = nk.t if nk is not None else None
        ok = self.seek(target)
        first = self._buf[0] if self._buf else None
        if here is not None and (not ok or first is None or first.t is None or first.t <= here + TIME_EPS):
            self.no_seek_until = target
            if first is None or first.t is None or abs(first.t - here) > TIME_EPS:
                self.seek(here)

    def seek(self, target: float) -> bool:
        """Position at a keyframe whose presentation time is <= target. False when
        seeking does not work here (the caller then reads on)."""
        back = max(self.gop_seconds, 1.0)
        ts = self._ticks(target) - self.pts_dts_offset
        for attempt in range(5):
            try:
                self.c.seek(ts, stream=self.s, backward=True, any_frame=False)
            except av.error.FFmpegError as e:
                log.debug("seek to %.3f failed (%s); reading on", target, e)
                return False
            self._restart()
            self.stats["seeks"] += 1
            # Skip to the first keyframe (some demuxers land between keyframes).
            while True:
                p = self.read()
                if p is None or p.key:
                    break
            if p is None:
                landed_ok = False
            else:
                landed_ok = p.t is not None and p.t <= target + TIME_EPS
                self._unread([p])
            if landed_ok:
                return True
            ts -= self._ticks(back * (2**attempt))
        # Give up seeking: start over from the beginning (always correct).
        return self.seek_start()

    def seek_start(self) -> bool:
        try:
            self.c.seek(0, backward=True)
        except av.error.FFmpegError:
            return False
        self._restart()
        self.stats["seeks"] += 1
        return True

    def read_audio_until(self, t: float) -> None:
        """After the video is done: read on (video packets are dropped) until the audio
        passes `t` or the file ends, so the last segments' audio is complete."""
        if self.audio is None:
            return
        while not self.eof and self.audio.covered_until() < t:
            self._buf.clear()
            if self.read() is None:
                break
        self.audio.finish(at_eof=self.eof and self.demux_error is None)
