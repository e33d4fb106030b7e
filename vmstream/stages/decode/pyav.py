"""The PyAV (FFmpeg) decoder: CPU, every codec FFmpeg has, files and live streams.

Speed comes from not doing work (measured in benchmarks/decode_speed.py):
- threaded decoding (`thread_type="AUTO"`);
- conversion and resize in one libswscale call straight to model size with swscale's
  own threads at 1 (its default threads fight the decoder's), one reused reformatter,
  so no full-resolution RGB frame is ever made;
- for sparse targets (fps, uniform, TSN) only what the wanted frames depend on is
  decoded (`packet_filter`): GOPs with nothing wanted are skipped, each GOP's tail
  after its last wanted frame is cut, H.264 non-reference pictures nobody wants are
  never fed, and the reader seeks when the next target lies past the next keyframe;
- keyframes-only mode feeds keyframes alone (approximate in time, see sampling.py).

`exact_mode` picks the strategy for sparse targets: "filter" (the above; the default
for H.264), "seek" (the same minus the H.264 NAL filter; the default for other
codecs), "full" (decode everything and pick on output: the readable reference the
others are tested against, bit for bit).
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Optional

import av
import av.error
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode.base import (
    Decoder,
    DecodedItem,
    FrameSize,
    InputNotFoundError,
    NotAVideoError,
    NoVideoTrackError,
    StreamInfo,
    VideoInputError,
    check_frames_args,
    end_event,
    probe_for_policy,
)
from vmstream.stages.decode.packet_filter import H264Inspector, feed_mask, wanted_in_window
from vmstream.stages.sampling import TIME_EPS, SamplingPolicy
from vmstream.stages.sources import Source

log = logging.getLogger(__name__)

EXACT_MODES = ("auto", "filter", "seek", "full")

# Codecs whose keyframes never let later frames reference earlier ones (no open GOPs):
# decoding may resume at their keyframes after skipped packets without a flush.
CLOSED_GOP_CODECS = frozenset({"vp8", "vp9", "mjpeg", "png", "prores", "dnxhd", "ffv1",
                               "rawvideo", "huffyuv", "utvideo"})

# Targets closer than this to the end of the last frame's display count as past the
# end (container durations are often rounded to the millisecond).
END_SLACK = 1e-3

# Container formats that hold one still picture, and "video" codecs FFmpeg uses for
# text art: opening these succeeds, but they are not videos.
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "gif_pipe", "webp_pipe",
                  "tiff_pipe", "ppm_pipe", "pgm_pipe", "pam_pipe", "svg_pipe", "jpegxl_pipe")
_TEXT_CODECS = ("ansi", "bintext", "xbin", "idf", "tty")


def _stream_time(ticks: int, tb) -> float:
    """Seconds from a timestamp in `tb` units: one rounding, exact integer product."""
    return (ticks * tb.numerator) / tb.denominator


def _ffmpeg_options(options: Optional[dict]) -> dict[str, str]:
    ff = (options or {}).get("ffmpeg") or {}
    return {str(k): str(v) for k, v in ff.items()}


def open_input(uri: str, options: Optional[dict] = None, *, timeout=None,
               extra_ffmpeg: Optional[dict] = None):
    """av.open with the source's FFmpeg options, mapping failures to VideoInputError."""
    opts = dict(extra_ffmpeg or {})
    opts.update(_ffmpeg_options(options))
    fmt = (options or {}).get("format")
    is_url = "://" in uri or uri.startswith("pipe:")
    if not is_url:
        if not os.path.exists(uri):
            raise InputNotFoundError(uri, "no such file")
        if os.path.isdir(uri):
            raise NotAVideoError(uri, "is a directory, not a video file")
        if not os.access(uri, os.R_OK):
            raise VideoInputError(uri, "permission denied")
        if os.path.getsize(uri) == 0:
            raise NotAVideoError(uri, "empty file (0 bytes)")
    try:
        return av.open(uri, mode="r", format=fmt, options=opts, timeout=timeout)
    except av.error.FileNotFoundError:
        raise InputNotFoundError(uri, "no such file") from None
    except av.error.PermissionError:
        raise VideoInputError(uri, "permission denied") from None
    except av.error.InvalidDataError:
        raise NotAVideoError(
            uri, "not a video: FFmpeg finds no container format it can read in it "
                 "(or the file is truncated before its header/index)") from None
    except (av.error.DemuxerNotFoundError, av.error.ProtocolNotFoundError) as e:
        raise NotAVideoError(uri, f"FFmpeg cannot open it: {e}") from None
    except av.error.FFmpegError as e:
        raise NotAVideoError(uri, f"FFmpeg cannot open it: {e}") from None
    except OSError as e:
        raise VideoInputError(uri, f"cannot open: {e}") from None


def _video_stream(container, uri: str):
    vs = [s for s in container.streams.video]
    if not vs:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise NoVideoTrackError(uri, f"no video track (the file has streams of kind: {', '.join(kinds)})")
    # Prefer a real video over attached cover art (a one-picture "video" stream).
    real = [s for s in vs if not (s.disposition & av.stream.Disposition.attached_pic)] or vs
    return real[0]


def describe(container, stream, uri: str, live: bool = False) -> StreamInfo:
    """A StreamInfo from an open container; raises VideoInputError for non-videos."""
    fmt = container.format.name if container.format else ""
    cc = stream.codec_context
    codec = cc.name if cc is not None else ""
    if any(f in fmt.split(",") for f in _IMAGE_FORMATS):
        raise NotAVideoError(uri, f"a still image ({fmt}), not a video")
    if fmt == "tty" or codec in _TEXT_CODECS:
        raise NotAVideoError(uri, "not a video: FFmpeg reads it as a text file")
    if cc is None or not codec or cc.codec is None:
        raise NotAVideoError(uri, f"FFmpeg reads it as {fmt or 'an unknown format'} but finds no video "
                                  f"codec it can decode in it (damaged, or the wrong format forced?)")
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise NotAVideoError(uri, f"the video track ({codec}) has no picture size: corrupt header?")
    tb = stream.time_base
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else None
    if fps is not None and not (0 < fps < 10_000):
        fps = None
    start = None
    if stream.start_time is not None and tb is not None:
        start = _stream_time(stream.start_time, tb)
    elif container.start_time is not None:
        start = container.start_time / av.time_base
    duration = None
    if stream.duration and tb is not None:
        duration = _stream_time(stream.duration, tb)
    elif container.duration:
        duration = container.duration / av.time_base
        if container.start_time is not None and start is not None:
            # Container duration spans all streams from the container start.
            duration -= max(0.0, start - container.start_time / av.time_base)
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        duration = None
    n = int(stream.frames or 0)
    exact = n > 0
    if not exact:
        n = int(round(duration * fps)) if (duration and fps) else 0
    return StreamInfo(
        uri=uri, width=width, height=height, codec=codec, fps=fps, duration=duration,
        frame_count=n or None, frame_count_exact=exact, start_time=start or 0.0,
        has_audio=bool(container.streams.audio), container=fmt,
        pix_fmt=cc.format.name if cc.format is not None else "",
        bit_rate=int(cc.bit_rate or container.bit_rate or 0) or None, time_base=tb, live=live,
    )


def count_frames(uri: str, options: Optional[dict] = None) -> tuple[int, float, float]:
    """(frames, first pts, end time) by reading every video packet: exact where the
    container's header does not say (some TS, raw streams, VFR without an index)."""
    with open_input(uri, options) as c:
        s = _video_stream(c, uri)
        tb = s.time_base
        n, lo, hi, last_dur = 0, math.inf, -math.inf, 0.0
        try:
            for p in c.demux(s):
                if p.size == 0:
                    continue
                n += 1
                if p.pts is not None:
                    t = _stream_time(p.pts, tb)
                    lo = min(lo, t)
                    if t >= hi:
                        hi = t
                        last_dur = _stream_time(p.duration, tb) if p.duration else 0.0
        except av.error.FFmpegError:
            pass  # a truncated tail: count what is there
    if n == 0 or not math.isfinite(lo):
        raise NotAVideoError(uri, "the video track has no readable frames")
    return n, lo, hi + last_dur


# --------------------------------------------------------------------------- convert


class FrameConverter:
    """av.VideoFrame -> uint8 [H, W, 3] RGB at model size: one swscale call (colour
    conversion and resize to the scaled size), then the centre crop and the display
    rotation in numpy.

    swscale writes planar RGB ("gbrp"): with FFmpeg 8 its packed-rgb24 path costs
    about 1.5-2.5x more per frame and strays further from an exact antialiased bilinear
    resize (tests hold the output to a float reference made in torch)."""

    def __init__(self, size: FrameSize, rotation: Optional[int] = None, threads: int = 1):
        self.size = size
        self.threads = threads
        self._fixed_rotation = None if rotation is None else int(rotation) % 360
        self._interp = Interpolation[size.interpolation.upper()]
        self._reformatter = VideoReformatter()
        self._geom_key = None
        self._geom = None

    def _geometry(self, w: int, h: int, rot: int):
        key = (w, h, rot)
        if key != self._geom_key:
            dw, dh = (h, w) if rot in (90, 270) else (w, h)
            sw, sh = self.size.scaled_size(dw, dh)
            x0, y0 = self.size.crop_box(sw, sh)
            rw, rh = (sh, sw) if rot in (90, 270) else (sw, sh)
            self._geom_key, self._geom = key, (rw, rh, x0, y0)
        return self._geom

    def scaled(self, frame: av.VideoFrame, rw: int, rh: int) -> av.VideoFrame:
        return self._reformatter.reformat(
            frame, width=rw, height=rh, format="gbrp", interpolation=self._interp,
            src_color_range=frame.color_range or None, threads=self.threads,
        )

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        rot = self._fixed_rotation
        if rot is None:
            rot = _frame_rotation(frame)
        rw, rh, x0, y0 = self._geometry(frame.width, frame.height, rot)
        out = self.scaled(frame, rw, rh)
        g, b, r = (np.frombuffer(pl, np.uint8).reshape(rh, pl.line_size)[:, :rw] for pl in out.planes)
        H, W = self.size.height, self.size.width
        if rot:
            g, b, r = (np.rot90(x, k=rot // 90) for x in (g, b, r))
        sl = (slice(y0, y0 + H), slice(x0, x0 + W))
        return np.stack([r[sl], g[sl], b[sl]], axis=-1)  # one copy, contiguous HWC


def _frame_rotation(frame) -> int:
    """The display rotation of a decoded frame as np.rot90 quarter turns x 90
    (counter-clockwise, FFmpeg's convention), normalised to 0/90/180/270."""
    r = getattr(frame, "rotation", 0) or 0
    return int(round(r / 90.0)) * 90 % 360


# --------------------------------------------------------------------------- reading


@dataclass(slots=True)
class _Pkt:
    packet: Any
    pts: Optional[int]
    dts: Optional[int]
    t: Optional[float]
    key: bool
    ref: bool = True
    idr: bool = False


class _Targets:
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


class _GopReader:
    """Video packets in decode order, one GOP window at a time, with the lookahead
    the planner needs (the next keyframe and its leading pictures), and seeking."""

    def __init__(self, container, stream, inspector: Optional[H264Inspector], stats: dict,
                 use_refs: bool = True):
        self.c, self.s = container, stream
        self.use_refs = use_refs  # False: read IDR-ness only, treat every picture as a reference
        self.tb = stream.time_base
        self.inspector = inspector
        self.stats = stats
        self._buf: deque[_Pkt] = deque()
        self._it = None
        self.eof = False
        self.demux_error: Optional[str] = None
        self.last_t: Optional[float] = None      # largest presentation time read
        self.gop_seconds = 0.0                   # largest keyframe spacing seen
        self._last_key_t: Optional[float] = None
        self.pts_dts_offset = 0                  # keyframe pts - dts (index is in dts for MP4)
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
        self._it = self.c.demux(self.s)
        self._buf.clear()
        self.eof = False
        self._last_key_t = None  # keyframe spacing is only measured between neighbours

    def read(self) -> Optional[_Pkt]:
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
            if p.size == 0:
                continue  # PyAV's end-of-stream flush packets; we drain ourselves
            self.stats["packets"] += 1
            if p.is_corrupt:
                self.stats["corrupt_packets"] += 1
            pts, dts = p.pts, p.dts
            t = _stream_time(pts, self.tb) if pts is not None else None
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
            return _Pkt(p, pts, dts, t, key, ref, idr)

    def _unread(self, pkts: list[_Pkt]) -> None:
        self._buf.extendleft(reversed(pkts))

    def next_window(self) -> Optional[tuple[list[_Pkt], float, float]]:
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
        nxt: Optional[_Pkt] = None
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

    def peek_next_key(self) -> Optional[_Pkt]:
        for p in self._buf:
            if p.key:
                return p
        return None

    def should_seek(self, target: float) -> bool:
        """Whether the keyframe the target needs lies past the next keyframe."""
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
            ts -= self._ticks(back * (2 ** attempt))
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


# --------------------------------------------------------------------------- decoder


class PyAVDecoder(Decoder):
    """FFmpeg through PyAV. Thread-safe: every `frames()` call opens its own input.

    threads:     decoder threads (0 = FFmpeg's choice, one per core + 1)
    thread_type: "AUTO" (frame + slice threading), "FRAME", "SLICE" or "NONE"
    exact_mode:  "auto", "filter", "seek" or "full" (see the module doc)
    live_timeout: seconds without data before a live feed counts as dropped
    """

    name = "pyav"

    def __init__(self, *, threads: int = 0, thread_type: str = "AUTO", exact_mode: str = "auto",
                 live_timeout: float = 5.0, swscale_threads: int = 1):
        if exact_mode not in EXACT_MODES:
            raise ValueError(f"exact_mode={exact_mode!r}; expected one of {EXACT_MODES}")
        if thread_type not in ("AUTO", "FRAME", "SLICE", "NONE"):
            raise ValueError(f"thread_type={thread_type!r}; expected AUTO, FRAME, SLICE or NONE")
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {threads!r}")
        if not (isinstance(live_timeout, (int, float)) and live_timeout > 0):
            raise ValueError(f"live_timeout must be seconds > 0, got {live_timeout!r}")
        self.threads = threads
        self.thread_type = thread_type
        self.exact_mode = exact_mode
        self.live_timeout = float(live_timeout)
        self.swscale_threads = swscale_threads

    # ------------------------------------------------------------------ probe

    def probe(self, uri: str, options: Optional[dict] = None, *, count: bool = False) -> StreamInfo:
        """Describe `uri` (see base.Decoder.probe). `count=True` also reads every
        packet to get an exact frame count and duration where the header lacks them."""
        live = "://" in uri and not uri.startswith("file://")
        timeout = (options or {}).get("timeout", self.live_timeout) if live else None
        with open_input(uri, options, timeout=timeout) as c:
            info = describe(c, _video_stream(c, uri), uri)
        if count:
            n, lo, end = count_frames(uri, options)
            dur = max(end - lo, 1e-6)
            fps = info.fps or (n / dur if n > 1 else None)
            info = replace(info, frame_count=n, frame_count_exact=True, start_time=lo, duration=dur,
                           fps=fps)
        return info

    # ------------------------------------------------------------------ frames

    def frames(self, source: Source, policy: SamplingPolicy, size: FrameSize,
               start_time: float = 0.0, *, stop: Optional[threading.Event] = None,
               info: Optional[StreamInfo] = None) -> Iterator[DecodedItem]:
        """See base.Decoder.frames. Validates and probes now (errors raise here, before
        any work); the decoding itself runs lazily in the returned iterator.
        `info` skips the probe when the caller already has it."""
        check_frames_args(source, policy, size, start_time)
        if source.live:
            from vmstream.stages.decode.live import live_frames

            policy.online()  # raises for policies that need a known length
            return live_frames(self, source, policy, size, stop=stop)
        info = probe_for_policy(self, source.uri, source.options, policy, info)
        return self._file_frames(source, info, policy, size, float(start_time), stop)

    def _open_stream(self, source: Source, keyframes_only: bool):
        c = open_input(source.uri, source.options)
        try:
            s = _video_stream(c, source.uri)
            cc = s.codec_context
            cc.thread_type = self.thread_type
            cc.thread_count = self.threads
            if keyframes_only:
                cc.skip_frame = "NONKEY"
            # Other streams' packets are read and dropped by the demuxer, not queued.
            for other in c.streams:
                if other.index != s.index:
                    other.discard = av.stream.Discard.all
        except BaseException:
            c.close()
            raise
        return c, s

    def _file_frames(self, source: Source, info: StreamInfo, policy: SamplingPolicy,
                     size: FrameSize, start_time: float, stop) -> Iterator[DecodedItem]:
        stats = dict(packets=0, corrupt_packets=0, decode_errors=0, decoded=0, fed=0, seeks=0,
                     inspected=0, frames=0, missed_targets=0, flushes=0)
        sid, uri = source.stream_id, source.uri
        run = _FileRun(self, source, info, policy, size, start_time, stop, stats)
        first_t = last_t = math.nan
        reason, message = "eof", ""
        try:
            c, s = self._open_stream(source, policy.keyframes_only)
        except VideoInputError as e:  # it probed fine a moment ago: changed under us
            yield StreamEvent(sid, "error", message=str(e), details={"error": type(e).__name__}, uri=uri)
            yield end_event(sid, uri, "error", frames=0, message=str(e))
            return
        try:
            for fr in run.run(c, s):
                if stats["frames"] == 0:
                    first_t = fr.t
                last_t = fr.t
                stats["frames"] += 1
                yield fr
            if run.stopped:
                reason, message = "stopped", "stopped by the caller"
            else:
                reason, message = run.end_reason()
        except Exception as e:  # a bad file fails its stream, never the caller's loop
            log.warning("%s: decoding failed: %s", uri, e, exc_info=not isinstance(e, av.error.FFmpegError))
            yield StreamEvent(sid, "error", t_start=last_t, message=f"decoding failed: {e}",
                              details={"error": type(e).__name__}, uri=uri)
            reason, message = "error", f"decoding failed: {e}"
        finally:
            c.close()
        broken = stats["decode_errors"] + stats["corrupt_packets"]
        yield end_event(sid, uri, reason, frames=stats["frames"], broken_packets=broken,
                        t_start=first_t, t_end=last_t, message=message,
                        **{k: v for k, v in stats.items() if k not in ("frames",)},
                        mode=run.mode)


class _FileRun:
    """One pass over a file: the strategies share frame output and counters."""

    def __init__(self, dec: PyAVDecoder, source: Source, info: StreamInfo, policy: SamplingPolicy,
                 size: FrameSize, start_time: float, stop, stats: dict):
        self.dec, self.source, self.info, self.policy = dec, source, info, policy
        self.size, self.start_time, self.stop, self.stats = size, start_time, stop, stats
        self.convert = FrameConverter(size, threads=dec.swscale_threads)  # rotation per frame
        self.stopped = False
        self.reader: Optional[_GopReader] = None
        self.index = 0
        self.mode = ""
        self.frame_dur = 1.0 / info.fps if info.fps else 0.0

    # -- shared

    def end_reason(self) -> tuple[str, str]:
        st, info = self.stats, self.info
        r = self.reader
        broken = st["decode_errors"] + st["corrupt_packets"]
        if r is not None and r.demux_error:
            return "truncated", f"reading stopped early: {r.demux_error}"
        if broken:
            return "truncated", f"{broken} broken packet(s); decoded what could be decoded"
        if r is not None and r.eof and info.end_time is not None and r.last_t is not None:
            # With an exact frame index the container's end is trusted to a frame or two;
            # otherwise (webm, TS: a header duration or a bitrate estimate) only a clear
            # shortfall counts, so an estimate a few percent off is not called truncation.
            slack = (2 * max(self.frame_dur, 0.02) + 0.5 if info.frame_count_exact
                     else 0.1 * (info.duration or 0.0) + 1.0)
            if r.last_t < info.end_time - slack:
                return "truncated", (f"the data ends at {r.last_t:.2f}s but the container says "
                                     f"{info.end_time:.2f}s")
        return "eof", ""

    def _emit(self, avf, t: float, count: int) -> Iterator[Frame]:
        img = self.convert(avf)
        n = count if self.policy.repeats else 1
        for _ in range(n):
            yield Frame(stream_id=self.source.stream_id, index=self.index, t=t, image=img)
            self.index += 1

    def _decode(self, cc, pkt) -> list:
        """Feed one packet (None drains); broken packets are counted, not fatal."""
        try:
            out = cc.decode(pkt)
        except av.error.EOFError:
            return []
        except av.error.FFmpegError as e:
            self.stats["decode_errors"] += 1
            log.debug("%s: broken packet: %s", self.source.uri, e)
            return []
        if pkt is not None:
            self.stats["fed"] += 1
        self.stats["decoded"] += len(out)
        return out

    def _time(self, avf, tb, last: Optional[float]) -> float:
        if avf.pts is not None:
            return _stream_time(avf.pts, tb)
        # No timestamp (raw streams): continue from the last one at the nominal rate.
        return (last + (self.frame_dur or 0.04)) if last is not None else self.info.start_time

    def _should_stop(self) -> bool:
        if self.stop is not None and self.stop.is_set():
            self.stopped = True
        return self.stopped

    def run(self, c, s) -> Iterator[Frame]:
        pol = self.policy
        targets_src = pol.target_times(self.info)
        if pol.keyframes_only:
            mode = "keyframes"
        elif targets_src is None:
            mode = "all"
        else:
            mode = self.dec.exact_mode
            if mode == "auto" or (mode == "filter" and self.info.codec != "h264"):
                mode = "filter" if self.info.codec == "h264" else "seek"
        self.mode = mode
        # H.264 packets are always inspected for IDR-ness (resuming after skipped
        # references needs no decoder flush at an IDR); "filter" also uses nal_ref_idc.
        planned = mode in ("filter", "seek", "keyframes")
        inspector = H264Inspector(s.codec_context.extradata) if planned and self.info.codec == "h264" else None
        self.reader = _GopReader(c, s, inspector, self.stats, use_refs=(mode == "filter"))
        self.reader.end_time = self.info.end_time
        if self.start_time > 0 and not self.reader.seek(self.start_time):
            log.debug("%s: cannot seek; reading from the start", self.source.uri)
        if mode == "all":
            yield from self._all(s)
        elif mode == "full":
            yield from self._full(s, targets_src)
        else:
            try:
                yield from self._planned(s, targets_src, keyframes=(mode == "keyframes"))
            except _NoTimestamps:
                # Nothing planned or emitted yet: decode everything instead.
                log.info("%s: packets without timestamps; decoding everything", self.source.uri)
                self.mode = "full"
                self.reader.seek_start()
                yield from self._full(s, pol.target_times(self.info))

    # -- every frame

    def _all(self, s) -> Iterator[Frame]:
        cc, tb, r = s.codec_context, s.time_base, self.reader
        lo = self.start_time - TIME_EPS
        last_t = None
        while not self._should_stop():
            p = r.read()
            for f in self._decode(cc, p.packet if p is not None else None):
                t = self._time(f, tb, last_t)
                if last_t is not None and t <= last_t:
                    continue  # a decoder that repeats or reorders after an error
                last_t = t
                if t >= lo:
                    yield from self._emit(f, t, 1)
            if p is None:
                break

    # -- the reference: decode everything, choose on output

    def _full(self, s, targets_src) -> Iterator[Frame]:
        """Every packet decoded; each target gets the output frame on screen at it."""
        cc, tb, r = s.codec_context, s.time_base, self.reader
        targets = _Targets(targets_src, self.start_time)
        lo = self.start_time - TIME_EPS
        prev = None  # [t, frame, targets served]
        last_t = None
        done = targets.peek() is None
        while not done and not self._should_stop():
            p = r.read()
            for f in self._decode(cc, p.packet if p is not None else None):
                t = self._time(f, tb, last_t)
                if last_t is not None and t <= last_t:
                    continue
                last_t = t
                if prev is None:  # targets before the first frame get the first frame
                    prev = [t, f, len(targets.pop_below(t))]
                    continue
                prev[2] += len(targets.pop_below(t))
                if prev[2] and prev[0] >= lo:
                    yield from self._emit(prev[1], prev[0], prev[2])
                prev = [t, f, 0]
                if targets.peek() is None:
                    done = True
                    break
            if p is None:
                break
        if prev is not None and not done and not self.stopped:
            limit = math.inf if self.policy.repeats else prev[0] + self.frame_dur - END_SLACK
            prev[2] += len(targets.pop_until(limit))
            if prev[2] and prev[0] >= lo:
                yield from self._emit(prev[1], prev[0], prev[2])

    # -- planned: skip GOPs, cut tails, drop unwanted non-reference pictures

    def _planned(self, s, targets_src, *, keyframes: bool) -> Iterator[Frame]:
        cc, tb, r = s.codec_context, s.time_base, self.reader
        every = targets_src is None  # keyframes-only AllFrames: every keyframe
        targets = None if every else _Targets(targets_src, self.start_time)
        lo = self.start_time - TIME_EPS
        wanted_pts: dict[int, int] = {}
        planned_any = False
        last_out_t = None
        cut_before = False  # packets were left out since the decoder last started clean

        def out(frames):
            nonlocal last_out_t
            for f in frames:
                k = wanted_pts.pop(f.pts, 0) if f.pts is not None else 0
                if not k:
                    continue
                t = _stream_time(f.pts, tb)
                if t < lo or (last_out_t is not None and t <= last_out_t):
                    continue
                last_out_t = t
                yield from self._emit(f, t, k)

        while not self._should_stop():
            if not every:
                nt = targets.peek()
                if nt is None:
                    break
                if r.should_seek(nt):
                    yield from out(self._decode(cc, None))
                    r.seek_forward(nt)  # flushes the decoder
                    cut_before = False
            w = r.next_window()
            if w is None:
                break
            pkts, bound, next_key_t = w
            if any(p.t is None for p in pkts):
                if not planned_any:
                    raise _NoTimestamps()
                # Mid-stream packets without timestamps: nothing can be matched to
                # them; keep the decoder's references whole and go on.
                for p in pkts:
                    self._decode(cc, p.packet)
                continue
            if keyframes:
                cand = [i for i, p in enumerate(pkts) if p.key] or [0]
                if every:
                    ts = [pkts[cand[0]].t]
                elif math.isfinite(next_key_t):
                    ts = targets.pop_below(next_key_t)
                else:
                    ts = self._eof_targets(targets, pkts)
                sub = wanted_in_window([pkts[i].t for i in cand], ts)
                wanted = {cand[i]: n for i, n in sub.items()}
                mask = [i in wanted for i in range(len(pkts))]
            else:
                ts = targets.pop_below(bound) if math.isfinite(bound) else self._eof_targets(targets, pkts)
                wanted = wanted_in_window([p.t for p in pkts], ts)
                nt2 = targets.peek()
                # The next GOP's leading pictures (open GOP) reference this one.
                lead_wanted = nt2 is not None and nt2 + TIME_EPS < next_key_t
                mask = feed_mask([p.ref for p in pkts], list(wanted), keep_refs_to_end=lead_wanted)
            planned_any = True
            for i, n in wanted.items():
                wanted_pts[pkts[i].pts] = wanted_pts.get(pkts[i].pts, 0) + n
            if any(mask):
                clean = pkts[0].key and (pkts[0].idr if r.inspector is not None
                                         else self.info.codec in CLOSED_GOP_CODECS)
                if cut_before and not clean:
                    # Resuming at a keyframe that is not an H.264 IDR (open GOP, or a
                    # codec we do not inspect) after skipped packets: the decoder would
                    # see a gap in its references (FFmpeg's H.264 gap handling then
                    # reorders and drops output). Start it fresh, as a seek would.
                    yield from out(self._decode(cc, None))
                    cc.flush_buffers()
                    self.stats["flushes"] += 1
                for p, feed in zip(pkts, mask):
                    if feed:
                        yield from out(self._decode(cc, p.packet))
            # Only left-out references leave gaps; unfed non-reference pictures do not.
            cut_before = any(p.ref and not f for p, f in zip(pkts, mask))
        if not self.stopped:
            yield from out(self._decode(cc, None))
        self.stats["missed_targets"] += sum(1 for v in wanted_pts.values() if v)

    def _eof_targets(self, targets: _Targets, pkts: list[_Pkt]) -> list[float]:
        """Targets resolved by the last window: up to the end of its last frame, or
        all of them for fixed-count policies (the last frame repeats)."""
        if self.policy.repeats:
            return targets.pop_until(math.inf)
        last = max(p.t for p in pkts)
        return targets.pop_until(last + self.frame_dur - END_SLACK)


class _NoTimestamps(Exception):
    """Packets without presentation times: planning is impossible."""


