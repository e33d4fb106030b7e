"""Records of the media layer: what every reader, sampler and stage of the front half
imports, and which imports none of them.

- `Source`: one stream to read (and `ReconnectPolicy`, the live part of its options);
- `StreamInfo`: what a probe knows about an input before decoding it;
- `FrameSize`: the model-side frame size and how to get there;
- the input errors (`VideoInputError` and its kinds, `SourceSpecError`);
- `TIME_EPS`: the tolerance every time comparison uses;
- `AudioFormat`, `AudioTrack`, `AudioChunk`: audio demuxed in the video's pass, as it
  travels beside the frames to the audio stage.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import urlsplit

import numpy as np

# Presentation times are compared with this slack (seconds): float rounding of
# pts * time_base must not move a target to the previous frame.
TIME_EPS = 1e-6

# The VideoMamba patch embedding is 1x16x16: frame sides must be multiples of it.
PATCH_SIZE = 16

_STREAM_ID_RE = re.compile(r"^[^\x00-\x1f]{1,1024}$")


# --------------------------------------------------------------------------- errors


class VideoInputError(ValueError):
    """An input that cannot be decoded at all, raised before any work starts on it.

    `uri` names the input, `reason` is a short machine-readable kind; the message says
    what is wrong in words. The runner reports and skips such an input in a directory
    run; a Kafka worker sends its job to the dead-letter topic.
    """

    reason = "bad_input"

    def __init__(self, uri: str, message: str):
        self.uri = str(uri)
        super().__init__(f"{self.uri}: {message}")


class InputNotFoundError(VideoInputError, FileNotFoundError):
    reason = "not_found"


class NotAVideoError(VideoInputError):
    reason = "not_a_video"


class NoVideoTrackError(VideoInputError):
    reason = "no_video_track"


class UnsupportedVideoError(VideoInputError):
    """Decodable by FFmpeg in principle, but not by this backend (e.g. H.264 on DALI's
    CPU variant). The factory falls back to PyAV on this."""

    reason = "unsupported"


class SourceSpecError(ValueError):
    """An input spec (path pattern, URL or job dict) that cannot become a Source."""


# --------------------------------------------------------------------------- size


RESIZE_MODES = ("short_side_crop", "direct")
# libswscale scalers (PyAV's Interpolation names). BILINEAR is the default; AREA and
# FAST_BILINEAR cost about 0.7x and 0.5x of it per 1080p frame here.
INTERPOLATIONS = (
    "BILINEAR",
    "FAST_BILINEAR",
    "AREA",
    "BICUBIC",
    "POINT",
    "LANCZOS",
    "SPLINE",
    "GAUSS",
    "SINC",
    "BICUBLIN",
    "X",
)


@dataclass(frozen=True)
class FrameSize:
    """The model-side frame size and how to get there from the source.

    "short_side_crop": scale so the frame covers height x width keeping its aspect
    (the short side lands on the target), then centre-crop; the official evaluation
    transform (short-side resize, centre crop). "direct": scale straight to
    height x width, distorting the aspect.
    """

    height: int = 224
    width: int = 224
    mode: str = "short_side_crop"
    # libswscale algorithm name (as PyAV's Interpolation): bilinear matches the
    # official transforms; "area" is kinder to big downscales.
    interpolation: str = "BILINEAR"

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"FrameSize.{name} must be a positive int, got {v!r}")
            if v % PATCH_SIZE:
                raise ValueError(f"FrameSize.{name}={v} is not a multiple of the patch size {PATCH_SIZE}")
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"FrameSize.mode={self.mode!r}; expected one of {RESIZE_MODES}")
        if not isinstance(self.interpolation, str) or self.interpolation.upper() not in INTERPOLATIONS:
            raise ValueError(f"FrameSize.interpolation={self.interpolation!r}; expected one of {INTERPOLATIONS}")

    @classmethod
    def square(cls, side: int = 224, mode: str = "short_side_crop") -> "FrameSize":
        return cls(side, side, mode)

    def scaled_size(self, src_width: int, src_height: int) -> tuple[int, int]:
        """(width, height) to resize the source to before the centre crop."""
        if src_width <= 0 or src_height <= 0:
            raise ValueError(f"bad source size {src_width}x{src_height}")
        if self.mode == "direct":
            return self.width, self.height
        scale = max(self.width / src_width, self.height / src_height)
        # Round, but never below the target (the crop needs the full target area).
        w = max(self.width, int(round(src_width * scale)))
        h = max(self.height, int(round(src_height * scale)))
        return w, h

    def crop_box(self, scaled_width: int, scaled_height: int) -> tuple[int, int]:
        """(x0, y0) of the centre crop inside the scaled frame."""
        return (scaled_width - self.width) // 2, (scaled_height - self.height) // 2


# --------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class StreamInfo:
    """What a decoder knows about an input before decoding it.

    Times are seconds. `duration`, `fps` and `frame_count` are None when the container
    does not say (live streams, some raw/TS files); `frame_count_exact` says whether
    `frame_count` came from the container's index rather than duration x fps.
    """

    uri: str
    width: int
    height: int
    codec: str
    fps: Optional[float] = None
    duration: Optional[float] = None
    frame_count: Optional[int] = None
    frame_count_exact: bool = False
    start_time: float = 0.0
    has_audio: bool = False
    container: str = ""
    pix_fmt: str = ""
    bit_rate: Optional[int] = None
    time_base: Optional[Fraction] = None
    # Display rotation in degrees (counter-clockwise, FFmpeg's convention) when the probe
    # can tell; 0 when none or unknown. Decoders apply each frame's own rotation anyway.
    rotation: int = 0
    live: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def end_time(self) -> Optional[float]:
        return None if self.duration is None else self.start_time + self.duration

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after rotation."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height


# --------------------------------------------------------------------------- sources


def valid_stream_id(stream_id: Any) -> bool:
    """A non-empty string without control characters, at most 1024 characters."""
    return isinstance(stream_id, str) and bool(_STREAM_ID_RE.match(stream_id))


def uri_scheme(uri: str) -> str:
    """The lower-case URL scheme of `uri` ("" for a local path, "pipe" for pipe:N)."""
    if uri.startswith("pipe:"):
        return "pipe"
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    if not m or len(m.group(1)) == 1:  # "C://" style drive letters are paths
        return ""
    return m.group(1).lower()


@dataclass(frozen=True)
class ReconnectPolicy:
    initial: float = 0.5  # first wait, seconds
    max_delay: float = 10.0  # cap on one wait
    factor: float = 2.0  # growth per failed attempt
    jitter: float = 0.1  # +- fraction, so many cameras do not retry in lockstep
    max_tries: Optional[int] = None  # attempts in a row that bring no video, then give up
    give_up_after: Optional[float] = 300.0  # seconds without video before giving up

    def __post_init__(self) -> None:
        def pos(name, v, allow_zero=False):
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
                or (v == 0 and not allow_zero)
            ):
                raise ValueError(f"reconnect.{name} must be a finite number > 0, got {v!r}")

        pos("initial", self.initial)
        pos("max_delay", self.max_delay)
        if self.max_delay < self.initial:
            raise ValueError(f"reconnect.max_delay ({self.max_delay}) < initial ({self.initial})")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not self.factor >= 1:
            raise ValueError(f"reconnect.factor must be >= 1, got {self.factor!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f"reconnect.jitter must be in [0, 1), got {self.jitter!r}")
        if self.max_tries is not None and (
            isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or self.max_tries < 0
        ):
            raise ValueError(f"reconnect.max_tries must be an int >= 0 or None, got {self.max_tries!r}")
        if self.give_up_after is not None:
            pos("give_up_after", self.give_up_after)

    def delays(self, rng: Optional[random.Random] = None) -> Iterator[float]:
        """The waits before attempt 1, 2, ... (unbounded; the caller counts tries/time)."""
        rng = rng or random.Random()
        d = float(self.initial)
        while True:
            j = 1.0 + self.jitter * (2.0 * rng.random() - 1.0) if self.jitter else 1.0
            yield min(self.max_delay, d * j)
            d = min(self.max_delay, d * self.factor)


def check_source_options(options: Any, where: str) -> None:
    if not isinstance(options, Mapping):
        raise SourceSpecError(f"{where}: options must be a dict, got {type(options).__name__}")
    for k in options:
        if not isinstance(k, str):
            raise SourceSpecError(f"{where}: option keys must be strings, got {k!r}")
    ff = options.get("ffmpeg", {})
    if not isinstance(ff, Mapping) or not all(isinstance(k, str) for k in ff):
        raise SourceSpecError(f"{where}: options.ffmpeg must be a dict of FFmpeg option names to values")
    rc = options.get("reconnect")
    if rc is not None:
        if not isinstance(rc, Mapping):
            raise SourceSpecError(f"{where}: options.reconnect must be a dict")
        try:
            ReconnectPolicy(**rc)
        except (TypeError, ValueError) as e:
            raise SourceSpecError(f"{where}: options.reconnect: {e}") from None
    to = options.get("timeout")
    if to is not None and (isinstance(to, bool) or not isinstance(to, (int, float)) or not to > 0):
        raise SourceSpecError(f"{where}: options.timeout must be seconds > 0, got {to!r}")
    fmt = options.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise SourceSpecError(f"{where}: options.format must be a string, got {fmt!r}")


@dataclass(frozen=True)
class Source:
    """One stream to decode. `options` may hold:
    "ffmpeg":    dict of FFmpeg (format/protocol) options, e.g. {"rtsp_transport": "tcp"}
    "format":    force the container format (e.g. "mpegts" for pipe:)
    "reconnect": dict of `ReconnectPolicy` fields (live sources)
    "timeout":   seconds to wait for data before a live source counts as dropped
    """

    stream_id: str
    uri: str
    live: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not valid_stream_id(self.stream_id):
            raise ValueError(f"bad stream_id {self.stream_id!r}: a non-empty string without control characters")
        if not isinstance(self.uri, str) or not self.uri:
            raise ValueError(f"stream {self.stream_id!r}: uri must be a non-empty string")
        check_source_options(self.options, where=f"stream {self.stream_id!r}")

    @property
    def is_file(self) -> bool:
        return uri_scheme(self.uri) in ("", "file")

    @property
    def path(self) -> Optional[str]:
        """The local path of a file source, else None."""
        if uri_scheme(self.uri) == "file":
            return urlsplit(self.uri).path
        return self.uri if self.is_file else None


# --------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class AudioFormat:
    """The PCM an audio consumer wants from the decoder's pass: mono float32 at
    `sample_rate` (the resampler's output, whatever the track's own format)."""

    sample_rate: int = 16000

    def __post_init__(self) -> None:
        sr = self.sample_rate
        if isinstance(sr, bool) or not isinstance(sr, int) or sr <= 0:
            raise ValueError(f"AudioFormat.sample_rate must be an int > 0, got {sr!r}")


@dataclass(frozen=True)
class AudioTrack:
    """Announces, before the stream's first frame, that its audio comes in this pass
    as `AudioChunk`s (until the stream's "end" event): an audio stage that sees it reads
    no file of its own."""

    stream_id: str
    format: AudioFormat
    codec: str = ""


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """Mono float32 PCM of one stream at its track's `AudioFormat`; `t` is the time of
    the first sample (seconds, the stream's clock; None: right after the last chunk).
    Chunks come in the order of the track, interleaved with frames as demuxed."""

    stream_id: str
    samples: np.ndarray
    t: Optional[float]
