"""PyAV (FFmpeg) container access, shared by every reader of the media layer: the PyAV
and live decoders, DALI's index pass and the audio readers all open, probe and convert
through here, so an input fails the same way and a time means the same float wherever
it is read.

- `refuse_special_file`: a FIFO, socket or device is never opened as media;
- `open_input`: av.open with a source's FFmpeg options and timeouts, failures mapped to
  the `VideoInputError` kinds (each naming the input);
- `video_stream`, `audio_stream`, `describe`, `count_frames`: the probe;
- `stream_time`, `frame_rotation`: timestamps and display rotation, one rounding each;
- `FrameConverter`: a decoded frame to uint8 RGB at model size in one swscale call;
- `AudioDecoder`: an audio stream's packets to mono float32 PCM at a fixed rate.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from typing import Optional

import av
import av.error
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from vmstream.stages.media import (
    AudioFormat,
    FrameSize,
    InputNotFoundError,
    NotAVideoError,
    NoVideoTrackError,
    StreamInfo,
    VideoInputError,
)

log = logging.getLogger(__name__)

# Container formats that hold one still picture, and "video" codecs FFmpeg uses for
# text art: opening these succeeds, but they are not videos.
_IMAGE_FORMATS = (
    "image2",
    "png_pipe",
    "jpeg_pipe",
    "bmp_pipe",
    "gif_pipe",
    "webp_pipe",
    "tiff_pipe",
    "ppm_pipe",
    "pgm_pipe",
    "pam_pipe",
    "svg_pipe",
    "jpegxl_pipe",
)
_TEXT_CODECS = ("ansi", "bintext", "xbin", "idf", "tty")


class FormatRefusedError(NotAVideoError):
    """The input's container format is not on the source's `format_whitelist` (a job's
    `kafka.jobs.formats`): final, opening it again changes nothing."""


def stream_time(ticks: int, tb) -> float:
    """Seconds from a timestamp in `tb` units: one rounding, exact integer product."""
    return (ticks * tb.numerator) / tb.denominator


def ffmpeg_options(options: Optional[dict]) -> dict[str, str]:
    ff = (options or {}).get("ffmpeg") or {}
    return {str(k): str(v) for k, v in ff.items()}


# av.open runs FFmpeg's stream-info probe, which decodes a file's first pictures to learn
# their format (~30 ms at 1080p). skip_frame=all reaches only that probe's own decoder:
# the codec context PyAV gives us is made fresh from the stream's parameters afterwards
# and reads the picture format from the bitstream. For opens of a file already probed.
SKIP_PROBE_DECODE = {"skip_frame": "all"}


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def refuse_special_file(uri: str) -> None:
    """NotAVideoError for a local path that is a FIFO, socket or device: opening one
    blocks until a writer comes (a FIFO) or reads without end (/dev/zero), beyond the
    reach of a stop signal. A live feed is a URL (`pipe:`, `tcp://`), never such a path."""
    if "://" in uri or uri.startswith("pipe:"):
        return
    try:
        mode = os.stat(uri[5:] if uri.startswith("file:") else uri).st_mode
    except (OSError, ValueError):
        return  # missing or unreadable: the open says so
    for test, kind in _SPECIAL:
        if test(mode):
            raise NotAVideoError(uri, f"not a regular file ({kind}); only files and URLs are read as media")


def open_input(uri: str, options: Optional[dict] = None, *, timeout=None, extra_ffmpeg: Optional[dict] = None):
    """av.open with the source's FFmpeg options, mapping failures to VideoInputError."""
    opts = dict(extra_ffmpeg or {})
    opts.update(ffmpeg_options(options))
    fmt = (options or {}).get("format")
    is_url = "://" in uri or uri.startswith("pipe:")
    refuse_special_file(uri)
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
            uri,
            "not a video: FFmpeg finds no container format it can read in it "
            "(or the file is truncated before its header/index)",
        ) from None
    except av.error.EOFError:
        raise NotAVideoError(
            uri, "the data ends before FFmpeg could read the container's header (truncated, or not a video)"
        ) from None
    except av.error.ArgumentError as e:
        if "format_whitelist" in opts:
            # FFmpeg probed the data and refused its format before reading any of it.
            raise FormatRefusedError(
                uri,
                "its container format is not one this worker reads for jobs "
                "(kafka.jobs.formats; playlists such as HLS or concat are refused "
                "unless listed there)",
            ) from None
        raise NotAVideoError(uri, f"FFmpeg cannot open it: {e}") from None
    except (av.error.DemuxerNotFoundError, av.error.ProtocolNotFoundError) as e:
        raise NotAVideoError(uri, f"FFmpeg cannot open it: {e}") from None
    except av.error.FFmpegError as e:
        raise NotAVideoError(uri, f"FFmpeg cannot open it: {e}") from None
    except OSError as e:
        raise VideoInputError(uri, f"cannot open: {e}") from None


def video_stream(container, uri: str):
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
        raise NotAVideoError(
            uri,
            f"FFmpeg reads it as {fmt or 'an unknown format'} but finds no video "
            f"codec it can decode in it (damaged, or the wrong format forced?)",
        )
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
        start = stream_time(stream.start_time, tb)
    elif container.start_time is not None:
        start = container.start_time / av.time_base
    duration = None
    if stream.duration and tb is not None:
        duration = stream_time(stream.duration, tb)
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
        uri=uri,
        width=width,
        height=height,
        codec=codec,
        fps=fps,
        duration=duration,
        frame_count=n or None,
        frame_count_exact=exact,
        start_time=start or 0.0,
        has_audio=bool(container.streams.audio),
        container=fmt,
        pix_fmt=cc.format.name if cc.format is not None else "",
        bit_rate=int(cc.bit_rate or container.bit_rate or 0) or None,
        time_base=tb,
        live=live,
    )


def count_frames(uri: str, options: Optional[dict] = None) -> tuple[int, float, float]:
    """(frames, first pts, end time) by reading every video packet: exact where the
    container's header does not say (some TS, raw streams, VFR without an index)."""
    with open_input(uri, options) as c:
        s = video_stream(c, uri)
        tb = s.time_base
        n, lo, hi, last_dur = 0, math.inf, -math.inf, 0.0
        try:
            for p in c.demux(s):
                if p.size == 0:
                    continue
                n += 1
                if p.pts is not None:
                    t = stream_time(p.pts, tb)
                    lo = min(lo, t)
                    if t >= hi:
                        hi = t
                        last_dur = stream_time(p.duration, tb) if p.duration else 0.0
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
            frame,
            width=rw,
            height=rh,
            format="gbrp",
            interpolation=self._interp,
            src_color_range=frame.color_range or None,
            threads=self.threads,
        )

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        rot = self._fixed_rotation
        if rot is None:
            rot = frame_rotation(frame)
        rw, rh, x0, y0 = self._geometry(frame.width, frame.height, rot)
        out = self.scaled(frame, rw, rh)
        g, b, r = (np.frombuffer(pl, np.uint8).reshape(rh, pl.line_size)[:, :rw] for pl in out.planes)
        H, W = self.size.height, self.size.width
        if rot:
            g, b, r = (np.rot90(x, k=rot // 90) for x in (g, b, r))
        sl = (slice(y0, y0 + H), slice(x0, x0 + W))
        return np.stack([r[sl], g[sl], b[sl]], axis=-1)  # one copy, contiguous HWC


def frame_rotation(frame) -> int:
    """The display rotation of a decoded frame as np.rot90 quarter turns x 90
    (counter-clockwise, FFmpeg's convention), normalised to 0/90/180/270."""
    r = getattr(frame, "rotation", 0) or 0
    return int(round(r / 90.0)) * 90 % 360


# --------------------------------------------------------------------------- audio


def audio_stream(container):
    """The first audio stream of an open container, or None."""
    return container.streams.audio[0] if container.streams.audio else None


class AudioDecoder:
    """One audio stream's packets (demux order) to mono float32 PCM at `fmt`'s rate, as
    (samples, time of the first sample) chunks. Broken packets are counted and skipped:
    audio never fails a stream. Feed every packet of the stream, flush packets included
    (they drain the codec), then `flush()` for the resampler's tail."""

    def __init__(self, fmt: AudioFormat, uri: str = ""):
        self.format = fmt
        self.uri = uri
        self.broken_packets = 0
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=fmt.sample_rate)

    def decode(self, packet) -> list[tuple[np.ndarray, Optional[float]]]:
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            self.broken_packets += 1
            log.debug("%s: broken audio packet at pts %s: %s", self.uri, packet.pts, e)
            return []
        return [(out.to_ndarray().reshape(-1), out.time) for frame in frames for out in self._resampler.resample(frame)]

    def flush(self) -> list[tuple[np.ndarray, Optional[float]]]:
        return [(out.to_ndarray().reshape(-1), out.time) for out in self._resampler.resample(None)]
