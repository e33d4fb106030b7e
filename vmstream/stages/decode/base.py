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
from typing import Iterator, Optional, Union

from vmstream.records import Frame, StreamEvent
from vmstream.stages.media import (
    INTERPOLATIONS,
    PATCH_SIZE,
    RESIZE_MODES,
    AudioChunk,
    AudioFormat,
    AudioTrack,
    FrameSize,
    InputNotFoundError,
    NotAVideoError,
    NoVideoTrackError,
    Source,
    StreamInfo,
    UnsupportedVideoError,
    VideoInputError,
)
from vmstream.stages.sampling import SamplingPolicy, stream_length

# The media records are re-exported here: callers have imported them from this module.
__all__ = [
    "END_REASONS",
    "INTERPOLATIONS",
    "PATCH_SIZE",
    "RESIZE_MODES",
    "AudioChunk",
    "AudioFormat",
    "AudioTrack",
    "DecodedItem",
    "Decoder",
    "FrameSize",
    "InputNotFoundError",
    "NotAVideoError",
    "NoVideoTrackError",
    "StreamInfo",
    "UnsupportedVideoError",
    "VideoInputError",
    "check_frames_args",
    "end_event",
    "no_frame_reason",
    "probe_for_policy",
]

# Audio records come only when the caller asked for audio (`frames(..., audio=)`).
DecodedItem = Union[Frame, StreamEvent, AudioTrack, AudioChunk]

END_REASONS = ("eof", "truncated", "error", "stopped", "gave_up")


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
        source: Source,
        policy: SamplingPolicy,
        size: FrameSize,
        start_time: float = 0.0,
        *,
        stop: Optional[threading.Event] = None,
        info: Optional[StreamInfo] = None,
        audio: Optional[AudioFormat] = None,
    ) -> Iterator[DecodedItem]:
        """Frames of `source` chosen by `policy`, at `size`, then one "end" event.

        Raises VideoInputError before the first item if the input is unusable;
        after that, trouble becomes "error"/"end" events (a corrupt file fails its
        stream, never the caller). `start_time` (seconds, the stream's own clock)
        resumes a stream: no frame before it is returned. `stop` ends a (live)
        stream early with reason "stopped". `info` (from `probe_for_policy`) saves a
        second probe of a file. Closing the generator releases the input.
        `audio`: a backend that can demux the audio track in the same pass yields
        an `AudioTrack` before the first frame, then `AudioChunk`s in this format
        among the frames (files with an audio track only); others ignore it, and the
        audio stage then reads the file itself.
        """

    def supports(self, info: StreamInfo) -> bool:
        """Whether this backend can decode `info`'s codec (the factory falls back)."""
        return True

    def close(self) -> None:
        """Release shared resources (pipelines, threads). Idempotent."""


def check_frames_args(source, policy, size, start_time) -> None:
    """The argument checks every backend's `frames()` makes before any work."""
    if not isinstance(source, Source):
        raise TypeError(f"source must be a Source, got {type(source).__name__}")
    if not isinstance(policy, SamplingPolicy):
        raise TypeError(f"policy must be a SamplingPolicy, got {type(policy).__name__}")
    if not isinstance(size, FrameSize):
        raise TypeError(f"size must be a FrameSize, got {type(size).__name__}")
    if (
        isinstance(start_time, bool)
        or not isinstance(start_time, (int, float))
        or not math.isfinite(start_time)
        or start_time < 0
    ):
        raise ValueError(f"start_time must be seconds >= 0, got {start_time!r}")


def probe_for_policy(
    decoder: Decoder, uri: str, options: Optional[dict], policy: SamplingPolicy, info: Optional[StreamInfo] = None
) -> StreamInfo:
    """What `policy` needs to know about a (file) input: the probe (or `info`, a probe
    the caller already made), probed again with an exact frame count when the policy
    needs the stream's length and the container does not say it. Raises
    VideoInputError / ValueError (naming the input) when the policy cannot sample it."""
    if info is None:
        info = decoder.probe(uri, options)
    if policy.needs_length and not info.live:
        try:
            stream_length(info)
        except ValueError:
            info = decoder.probe(uri, options, count=True)
    policy.check_for(info)
    return info


def no_frame_reason(reason: str, message: str, frames: int, start_time: float) -> tuple[str, str]:
    """A file that yields no frame at all failed, whatever its packets said ("eof" or
    "truncated"): it probed as a video but nothing in it decodes. A resumed stream
    (start_time > 0) may rightly have nothing left."""
    if frames == 0 and start_time <= 0 and reason in ("eof", "truncated"):
        # "decoded what could be decoded" (of a truncated stream) is nothing here.
        detail = (message or "").replace("; decoded what could be decoded", "")
        why = f" ({detail})" if detail and detail != reason else ""
        return "error", f"no frame could be decoded{why}"
    return reason, message


def end_event(
    stream_id: str,
    uri: str,
    reason: str,
    *,
    frames: int,
    broken_packets: int = 0,
    t_start: float = math.nan,
    t_end: float = math.nan,
    message: str = "",
    **details,
) -> StreamEvent:
    """The "end" event every decoder finishes with (one shape for all backends)."""
    if reason not in END_REASONS:
        raise ValueError(f"unknown end reason {reason!r}; expected one of {END_REASONS}")
    d = {"frames": int(frames), "broken_packets": int(broken_packets), "reason": reason}
    d.update(details)
    return StreamEvent(
        stream_id=stream_id, kind="end", t_start=t_start, t_end=t_end, message=message or reason, details=d, uri=uri
    )
