"""Sampling policies: which frames of a stream the model sees.

A policy maps what is known about a stream (`StreamInfo`: start time, duration, fps,
frame count) to target times in seconds; a decoder then returns, for each target, the
frame on screen at that time (the largest presentation time <= target;
`frames_for_targets` is the reference rule every backend follows).

    FpsSampling(1.0)          targets start + k/fps: archives and live feeds
    UniformSampling(16)       N frames spread evenly from the first to the last frame
    TsnSampling(8, train=..)  one frame per equal chunk: random (seeded) in training,
                              the chunk centre in evaluation (TSN / the official loaders)
    AllFrames()               every frame
    FrameIndexSampling(ix)    given frame numbers (training loaders)

Any policy can be made `keyframes_only=True`: the decoder then looks at keyframes only
(`skip_frame="NONKEY"`), which is many times faster and APPROXIMATE IN TIME: a target
gets the last keyframe at or before it, which may be a whole GOP (seconds) early.

Live streams have no known end: they use the online form (`policy.online()`), which
decides frame by frame as frames arrive (only fps and all-frames policies have one).
"""

from __future__ import annotations

import abc
import hashlib
import math
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Optional, Union

import numpy as np

from vmstream.stages.media import TIME_EPS, StreamInfo
from vmstream.stages.sampling_kinds import SAMPLING_KINDS

__all__ = [
    "TIME_EPS",
    "AllFrames",
    "FpsSampling",
    "FrameIndexSampling",
    "OnlineSelector",
    "SamplingPolicy",
    "TsnSampling",
    "UniformSampling",
    "frames_for_targets",
    "make_policy",
    "parse_policy",
    "SAMPLING_KINDS",
    "stream_length",
]


def frames_for_targets(frame_times, targets, eps: float = TIME_EPS) -> np.ndarray:
    """Index of the frame on screen at each target time.

    `frame_times` ascending (presentation order). A target before the first frame gets
    the first frame. This is the reference selection rule; decoders must agree with it.
    """
    ft = np.asarray(frame_times, dtype=np.float64)
    if ft.size == 0:
        raise ValueError("no frames to choose from")
    if ft.size > 1 and np.any(np.diff(ft) < 0):
        raise ValueError("frame_times must be ascending")
    tg = np.asarray(targets, dtype=np.float64)
    idx = np.searchsorted(ft, tg + eps, side="right") - 1
    return np.clip(idx, 0, ft.size - 1)


def _check_positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


def stream_length(info: StreamInfo) -> tuple[int, float]:
    """(frame count, fps) of a finite stream, from whichever two of duration / fps /
    frame count the container gave. Raises ValueError naming the input otherwise."""
    n, fps, dur = info.frame_count, info.fps, info.duration
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        fps = None
    if dur is not None and not (dur > 0 and math.isfinite(dur)):
        dur = None
    if n is not None and n < 1:
        n = None
    if n is None and fps is not None and dur is not None:
        n = max(1, int(round(dur * fps)))
    if fps is None and n is not None and dur is not None:
        fps = n / dur
    if n is None or fps is None:
        raise ValueError(
            f"{info.uri}: this sampling policy needs the stream's length, and the container "
            f"gives neither a frame count nor duration+fps (count the frames when probing)"
        )
    return int(n), float(fps)


class OnlineSelector(abc.ABC):
    """Frame-by-frame decisions for streams with no known end (live feeds)."""

    @abc.abstractmethod
    def accept(self, t: float) -> bool:
        """Whether the frame at time `t` (non-decreasing across calls) is kept."""

    def reset(self) -> None:
        """Forget the phase (after a reconnect the clock may have jumped)."""


class _AcceptAll(OnlineSelector):
    def accept(self, t: float) -> bool:
        return True


class _FpsSelector(OnlineSelector):
    """Keeps the first frame of every 1/fps slot, slots counted from the first frame.

    Online there is no next frame to look at, so a slot's first frame is taken (the
    offline rule takes the frame on screen at the slot start; they agree whenever the
    slot boundaries fall on frame times).
    """

    def __init__(self, fps: float):
        self.period = 1.0 / fps
        self.reset()

    def reset(self) -> None:
        self.t0: Optional[float] = None
        self.last_slot = -1

    def accept(self, t: float) -> bool:
        if self.t0 is None:
            self.t0 = t
        slot = math.floor((t - self.t0) / self.period + TIME_EPS)
        if slot > self.last_slot:
            self.last_slot = slot
            return True
        return False


@dataclass(frozen=True)
class SamplingPolicy(abc.ABC):
    """Base of all policies. Frozen and picklable: it travels in configs and jobs."""

    keyframes_only: bool = field(default=False, kw_only=True)

    # A frame may be returned for several targets (fixed-count policies on short
    # videos, so the count stays fixed) rather than once.
    repeats: ClassVar[bool] = False

    @property
    def needs_length(self) -> bool:
        """True when targets depend on the stream's length (duration / frame count)."""
        return False

    @property
    def every_frame(self) -> bool:
        return False

    @abc.abstractmethod
    def target_times(
        self, info: StreamInfo, rng: Optional[np.random.Generator] = None
    ) -> Union[np.ndarray, Iterator[float], None]:
        """Ascending target times (seconds), possibly an endless iterator (fps), or
        None for every frame."""

    def online(self) -> OnlineSelector:
        raise ValueError(
            f"{type(self).__name__} needs the stream's length and cannot sample a live "
            f"stream; use FpsSampling or AllFrames"
        )

    def check_for(self, info: StreamInfo) -> None:
        """Raise ValueError (naming the input) if this policy cannot sample `info`."""
        if self.needs_length:
            if info.live:
                self.online()  # raises with the reason
            stream_length(info)

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class AllFrames(SamplingPolicy):
    @property
    def every_frame(self) -> bool:
        return True

    def target_times(self, info, rng=None):
        return None

    def online(self) -> OnlineSelector:
        return _AcceptAll()

    def describe(self) -> str:
        return "all" + (" keyframes" if self.keyframes_only else "")


@dataclass(frozen=True)
class FpsSampling(SamplingPolicy):
    """`fps` frames per second of stream time: targets at start + k / fps."""

    fps: float = 1.0

    def __post_init__(self) -> None:
        f = self.fps
        if (
            isinstance(f, bool)
            or not isinstance(f, (int, float, np.floating, np.integer))
            or not math.isfinite(f)
            or f <= 0
        ):
            raise ValueError(f"fps must be a finite number > 0, got {f!r}")

    def target_times(self, info, rng=None) -> Iterator[float]:
        start, period = float(info.start_time), 1.0 / float(self.fps)
        end = info.end_time

        def gen():
            k = 0
            while True:
                t = start + k * period  # not accumulated: no drift over hours
                if end is not None and not info.live and t >= end + 1.0:
                    # Durations are estimates; the decoder stops at the real end. The
                    # slack lets a slightly short duration still reach the last frames.
                    return
                yield t
                k += 1

        return gen()

    def online(self) -> OnlineSelector:
        return _FpsSelector(float(self.fps))

    def describe(self) -> str:
        return f"fps={self.fps:g}" + (" keyframes" if self.keyframes_only else "")


@dataclass(frozen=True)
class UniformSampling(SamplingPolicy):
    """`num_frames` frames evenly spaced from the first frame to the last."""

    num_frames: int = 16
    repeats: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_positive_int("num_frames", self.num_frames)

    @property
    def needs_length(self) -> bool:
        return True

    def frame_indices(self, n: int) -> np.ndarray:
        if self.num_frames == 1:
            return np.array([(n - 1) // 2], dtype=np.int64)
        return np.round(np.linspace(0, n - 1, self.num_frames)).astype(np.int64)

    def target_times(self, info, rng=None) -> np.ndarray:
        n, fps = stream_length(info)
        return info.start_time + self.frame_indices(n) / fps

    def describe(self) -> str:
        return f"uniform={self.num_frames}" + (" keyframes" if self.keyframes_only else "")


@dataclass(frozen=True)
class TsnSampling(SamplingPolicy):
    """TSN-style sparse sampling: the stream cut into `num_frames` equal chunks, one
    frame from each; a seeded random frame of the chunk in training, its centre in
    evaluation (as the official VideoMamba/UniFormer loaders do)."""

    num_frames: int = 8
    train: bool = False
    seed: Optional[int] = None
    repeats: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_positive_int("num_frames", self.num_frames)

    @property
    def needs_length(self) -> bool:
        return True

    def frame_indices(self, n: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        chunk = (n - 1) / self.num_frames
        k = np.arange(self.num_frames)
        lo = np.round(chunk * k).astype(np.int64)
        hi = np.round(chunk * (k + 1)).astype(np.int64)
        if not self.train:
            return (lo + hi) // 2
        if rng is None:
            rng = np.random.default_rng(self.seed)
        return rng.integers(lo, hi + 1)  # inclusive chunk ends, like randint(lo, hi)

    def target_times(self, info, rng=None) -> np.ndarray:
        n, fps = stream_length(info)
        if self.train and rng is None:
            # Reproducible per (seed, input) and different between inputs.
            h = int.from_bytes(hashlib.blake2b(info.uri.encode(), digest_size=8).digest(), "little")
            rng = np.random.default_rng([0 if self.seed is None else self.seed, h])
        return info.start_time + self.frame_indices(n, rng) / fps

    def describe(self) -> str:
        mode = "train" if self.train else "eval"
        return f"tsn={self.num_frames} {mode}" + (" keyframes" if self.keyframes_only else "")


@dataclass(frozen=True)
class FrameIndexSampling(SamplingPolicy):
    """Explicit 0-based frame numbers (presentation order), as training loaders pick
    them; repeats allowed, numbers past the end get the last frame. Frames come out in
    time order (sorted). Frame numbers map to times with the average rate: exact for
    constant-frame-rate files, approximate for variable ones."""

    indices: tuple = ()
    repeats: ClassVar[bool] = True

    def __post_init__(self) -> None:
        try:
            idx = tuple(int(i) for i in self.indices)
        except (TypeError, ValueError):
            raise ValueError(f"indices must be a sequence of ints, got {self.indices!r}") from None
        if not idx:
            raise ValueError("indices must not be empty")
        if min(idx) < 0 or any(isinstance(i, bool) for i in self.indices):
            raise ValueError(f"indices must be ints >= 0, got {self.indices!r}")
        object.__setattr__(self, "indices", tuple(sorted(idx)))

    @property
    def needs_length(self) -> bool:
        return True

    def target_times(self, info, rng=None) -> np.ndarray:
        n, fps = stream_length(info)
        idx = np.minimum(np.asarray(self.indices, dtype=np.int64), n - 1)
        return info.start_time + idx / fps

    def describe(self) -> str:
        return f"indices[{len(self.indices)}]" + (" keyframes" if self.keyframes_only else "")


def make_policy(
    kind: str,
    *,
    fps: float = 1.0,
    num_frames: int = 16,
    keyframes_only: bool = False,
    train: bool = False,
    seed: Optional[int] = None,
) -> SamplingPolicy:
    """The one factory from a sampling name (`SAMPLING_KINDS`) to a policy: "fps" (`fps`
    frames a second), "uniform" and "tsn" (`num_frames` over the stream; tsn's `train`
    picks a seeded random frame per chunk), "keyframes" (every keyframe), "all"."""
    if kind == "fps":
        return FpsSampling(fps=float(fps), keyframes_only=keyframes_only)
    if kind == "uniform":
        return UniformSampling(num_frames=num_frames, keyframes_only=keyframes_only)
    if kind == "tsn":
        return TsnSampling(num_frames=num_frames, train=train, seed=seed, keyframes_only=keyframes_only)
    if kind == "keyframes":
        return AllFrames(keyframes_only=True)
    if kind == "all":
        return AllFrames(keyframes_only=keyframes_only)
    raise ValueError(f"sampling kind {kind!r}; expected one of {', '.join(SAMPLING_KINDS)}")


def parse_policy(spec: Union[str, SamplingPolicy, dict]) -> SamplingPolicy:
    """A policy from a short string or dict, through `make_policy`.

    "fps:1", "fps:0.5:keyframes", "uniform:16", "tsn:8", "tsn:8:train", "all",
    "keyframes" (every keyframe), or {"kind": "fps", "fps": 1, "keyframes_only": true}.
    """
    if isinstance(spec, SamplingPolicy):
        return spec
    if isinstance(spec, dict):
        d = dict(spec)
        kind = d.pop("kind", None)
        if kind not in SAMPLING_KINDS:
            raise ValueError(f"sampling kind {kind!r}; expected one of {', '.join(SAMPLING_KINDS)}")
        try:
            return make_policy(kind, **d)
        except TypeError as e:
            raise ValueError(f"bad options for sampling {kind!r}: {e}") from None
    if not isinstance(spec, str):
        raise ValueError(f"sampling policy must be a string, dict or SamplingPolicy, got {spec!r}")
    parts = [p.strip() for p in spec.strip().lower().split(":") if p.strip()]
    if not parts:
        raise ValueError("empty sampling policy")
    head, flags = parts[0], set(parts[1:])
    kf = "keyframes" in flags
    try:
        if head in ("all", "keyframes"):
            return make_policy(head, keyframes_only=kf)
        if head not in SAMPLING_KINDS:
            raise ValueError(f"unknown sampling policy {spec!r}; expected fps:F, uniform:N, tsn:N, all, keyframes")
        if len(parts) < 2:
            raise ValueError(f"sampling {spec!r} needs a number, e.g. '{head}:8'")
        if head == "fps":
            return make_policy("fps", fps=float(parts[1]), keyframes_only=kf)
        return make_policy(head, num_frames=int(parts[1]), train="train" in flags, keyframes_only=kf)
    except ValueError as e:
        if str(e).startswith("unknown sampling policy"):
            raise
        raise ValueError(f"bad sampling policy {spec!r}: {e}") from None
