"""The decoder interface: one contract, two backends (PyAV here, DALI in `dali.py`).

A decoder turns a `Source` into frames already at model size, chosen by a
`SamplingPolicy` (`vmstream.stages.sampling`):

    info = decoder.probe(source.uri)          # raises VideoInputError before any work
    for item in decoder.frames(source, policy, FrameSize(224, 224)):
        Frame       uint8 [H, W, 3] at model size, t in seconds, increasing (repeated
                    only by fixed-count policies on short videos); index counts the
                    frames this call handed out (0, 1, 2, ...)
        StreamEvent "gap" (live outage), "error" (recoverable trouble), and exactly one
                    "end" as the last item, with details
                    {"frames": n, "broken_packets": k, "reason": r}

Which frame a target time gets (both backends must agree): the frame on screen at
that time, i.e. the one with the largest presentation time <= target (the first frame
for targets before it). `sampling.frames_for_targets` is the reference for that rule.

End reasons: "eof" (finished), "truncated" (input ended early or had broken packets;
what could be decoded was), "error" (could not go on), "stopped" (the caller's stop
event), "gave_up" (a live source that did not come back within its reconnect policy).
"""
from __future__ import annotations

import abc
import math
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Iterator, Optional, Union

from vmstream.records import Frame, StreamEvent

if TYPE_CHECKING:  # imported lazily to keep the module graph acyclic
    from vmstream.stages.sampling import SamplingPolicy
    from vmstream.stages.sources import Source

DecodedItem = Union[Frame, StreamEvent]

# The VideoMamba patch embedding is 1x16x16: frame sides must be multiples of it.
PATCH_SIZE = 16

END_REASONS = ("eof", "truncated", "error", "stopped", "gave_up")


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


# --------------------------------------------------------------------------- size


RESIZE_MODES = ("short_side_crop", "direct")
# libswscale scalers (PyAV's Interpolation names). BILINEAR is the default; AREA and
# FAST_BILINEAR cost about 0.7x and 0.5x of it per 1080p frame here.
INTERPOLATIONS = ("BILINEAR", "FAST_BILINEAR", "AREA", "BICUBIC", "POINT", "LANCZOS", "SPLINE",
                  "GAUSS", "SINC", "BICUBLIN", "X")


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
                raise ValueError(
                    f"FrameSize.{name}={v} is not a multiple of the patch size {PATCH_SIZE}"
                )
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


# --------------------------------------------------------------------------- decoder


class Decoder(abc.ABC):
    """Decodes a source into model-size frames for a sampling policy.

    Implementations: `pyav.PyAVDecoder` (CPU, everywhere), `dali.DALIDecoder` (NVDEC).
    Thread-safety: one decoder object may serve several threads; each `frames()` call
    owns its own container/pipeline.
    """

    name: str = "decoder"

    @abc.abstractmethod
    def probe(self, uri: str, options: Optional[dict] = None, *, count: bool = False) -> StreamInfo:
        """Open the input just enough to describe it; `count=True` also reads every
        packet for an exact frame count and duration where the header lacks them.

        Raises InputNotFoundError / NotAVideoError / NoVideoTrackError (all
        VideoInputError, naming `uri`) when it cannot be decoded at all.
        """

    @abc.abstractmethod
    def frames(
        self,
        source: "Source",
        policy: "SamplingPolicy",
        size: FrameSize,
        start_time: float = 0.0,
        *,
        stop: Optional[threading.Event] = None,
        info: Optional[StreamInfo] = None,
    ) -> Iterator[DecodedItem]:
        """Frames of `source` chosen by `policy`, at `size`, then one "end" event.

        Raises VideoInputError before the first item if the input is unusable;
        after that, trouble becomes "error"/"end" events (a corrupt file fails its
        stream, never the caller). `start_time` (seconds, the stream's own clock)
        resumes a stream: no frame before it is returned. `stop` ends a (live)
        stream early with reason "stopped". `info` (from `probe_for_policy`) saves a
        second probe of a file. Closing the generator releases the input.
        """

    def supports(self, info: StreamInfo) -> bool:
        """Whether this backend can decode `info`'s codec (the factory falls back)."""
        return True

    def close(self) -> None:
        """Release shared resources (pipelines, threads). Idempotent."""


def check_frames_args(source, policy, size, start_time) -> None:
    """The argument checks every backend's `frames()` makes before any work."""
    from vmstream.stages.sampling import SamplingPolicy
    from vmstream.stages.sources import Source

    if not isinstance(source, Source):
        raise TypeError(f"source must be a Source, got {type(source).__name__}")
    if not isinstance(policy, SamplingPolicy):
        raise TypeError(f"policy must be a SamplingPolicy, got {type(policy).__name__}")
    if not isinstance(size, FrameSize):
        raise TypeError(f"size must be a FrameSize, got {type(size).__name__}")
    if isinstance(start_time, bool) or not isinstance(start_time, (int, float)) \
            or not math.isfinite(start_time) or start_time < 0:
        raise ValueError(f"start_time must be seconds >= 0, got {start_time!r}")


def probe_for_policy(decoder: Decoder, uri: str, options: Optional[dict], policy: "SamplingPolicy",
                     info: Optional[StreamInfo] = None) -> StreamInfo:
    """What `policy` needs to know about a (file) input: the probe (or `info`, a probe
    the caller already made), probed again with an exact frame count when the policy
    needs the stream's length and the container does not say it. Raises
    VideoInputError / ValueError (naming the input) when the policy cannot sample it."""
    from vmstream.stages.sampling import stream_length

    if info is None:
        info = decoder.probe(uri, options)
    if policy.needs_length and not info.live:
        try:
            stream_length(info)
        except ValueError:
            info = decoder.probe(uri, options, count=True)
    policy.check_for(info)
    return info


def end_event(stream_id: str, uri: str, reason: str, *, frames: int, broken_packets: int = 0,
              t_start: float = math.nan, t_end: float = math.nan, message: str = "",
              **details) -> StreamEvent:
    """The "end" event every decoder finishes with (one shape for all backends)."""
    if reason not in END_REASONS:
        raise ValueError(f"unknown end reason {reason!r}; expected one of {END_REASONS}")
    d = {"frames": int(frames), "broken_packets": int(broken_packets), "reason": reason}
    d.update(details)
    return StreamEvent(stream_id=stream_id, kind="end", t_start=t_start, t_end=t_end,
                       message=message or reason, details=d, uri=uri)
