"""Live sources: reconnect with bounded exponential backoff.

A camera feed drops; the decoder notices (EOF, an error, or no data for `timeout`
seconds), waits `initial` seconds, tries again, doubling the wait up to `max_delay`,
and gives up after `max_tries` connection attempts in a row that bring no video
(0: never retry) or `give_up_after` seconds without video. The stream keeps its id
(so the model keeps its state) and the outage is reported: a "gap" StreamEvent and
`Frame.gap` on the first frame after it. Frame times are wall clock (`WallClock`).
"""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode.base import FrameSize, VideoInputError, end_event

if TYPE_CHECKING:
    from vmstream.stages.decode.pyav import PyAVDecoder
    from vmstream.stages.sampling import SamplingPolicy
    from vmstream.stages.sources import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconnectPolicy:
    initial: float = 0.5        # first wait, seconds
    max_delay: float = 10.0     # cap on one wait
    factor: float = 2.0         # growth per failed attempt
    jitter: float = 0.1         # +- fraction, so many cameras do not retry in lockstep
    max_tries: Optional[int] = None        # attempts in a row that bring no video, then give up
    give_up_after: Optional[float] = 300.0  # seconds without video before giving up

    def __post_init__(self) -> None:
        def pos(name, v, allow_zero=False):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (v == 0 and not allow_zero):
                raise ValueError(f"reconnect.{name} must be a finite number > 0, got {v!r}")

        pos("initial", self.initial)
        pos("max_delay", self.max_delay)
        if self.max_delay < self.initial:
            raise ValueError(f"reconnect.max_delay ({self.max_delay}) < initial ({self.initial})")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not self.factor >= 1:
            raise ValueError(f"reconnect.factor must be >= 1, got {self.factor!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f"reconnect.jitter must be in [0, 1), got {self.jitter!r}")
        if self.max_tries is not None and (isinstance(self.max_tries, bool)
                                           or not isinstance(self.max_tries, int) or self.max_tries < 0):
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


# --------------------------------------------------------------------------- reading

def low_latency_options(timeout: float) -> dict[str, str]:
    """FFmpeg options for live inputs: a small probe, low-delay decoding, and socket
    timeouts (microseconds) so a dead feed errors out instead of hanging. A source's
    own options.ffmpeg override these. Not "fflags=nobuffer": it throws away the
    packets read while probing (the first second of every connection)."""
    us = str(int(timeout * 1_000_000))
    return {
        "flags": "low_delay",
        "probesize": "500000",
        "analyzeduration": "1000000",
        "rw_timeout": us,
        "timeout": us,  # tcp/rtsp/http socket timeout
    }


class WallClock:
    """Wall-clock times for live frames: anchored at the first frame after (re)connect,
    advanced by the stream's own timestamps (smooth spacing, no network jitter),
    re-anchored when they drift from the real clock by more than `max_drift` seconds
    (a feed that jumps or a producer clock that runs fast), and never decreasing."""

    def __init__(self, max_drift: float = 2.0, now=time.time):
        self.max_drift = max_drift
        self.now = now
        self.last: Optional[float] = None
        self.reset()

    def reset(self) -> None:
        self._anchor: Optional[tuple[float, float]] = None  # (wall, stream seconds)

    def __call__(self, stream_t: Optional[float]) -> float:
        now = self.now()
        if stream_t is None:
            t = now
        else:
            if self._anchor is None:
                self._anchor = (now, stream_t)
            t = self._anchor[0] + (stream_t - self._anchor[1])
            if abs(t - now) > self.max_drift:
                self._anchor = (now, stream_t)
                t = now
        if self.last is not None and t <= self.last:
            t = self.last + 1e-6
        self.last = t
        return t


def live_frames(decoder: "PyAVDecoder", source: "Source", policy: "SamplingPolicy", size: FrameSize,
                *, stop: Optional[threading.Event] = None) -> Iterator:
    """Frames of a live source, reconnecting per `ReconnectPolicy` (see module doc).

    Yields Frame (t = wall clock), StreamEvent("gap") after each outage, and a final
    "end" (reason "stopped", "gave_up", or "eof" when a `pipe:` source closes: a pipe
    cannot be reopened)."""
    import av
    import av.error

    from vmstream.stages.decode.pyav import FrameConverter, _stream_time, _video_stream, open_input

    opts = dict(source.options or {})
    rp = ReconnectPolicy(**(opts.get("reconnect") or {}))
    timeout = float(opts.get("timeout") or decoder.live_timeout)
    ff = low_latency_options(timeout)
    selector = policy.online()
    convert = FrameConverter(size, threads=decoder.swscale_threads)
    clock = WallClock()
    stop = stop or threading.Event()
    sid, uri = source.stream_id, source.uri
    stats = dict(frames=0, broken_packets=0, reconnects=0, gaps=0, attempts=0)
    first_t = last_t = math.nan
    t_lost: Optional[float] = None      # stream time of the last frame before an outage
    lost_since: Optional[float] = None  # monotonic time the outage began
    failures = 0
    delays = rp.delays()
    reason, message = "stopped", "stopped by the caller"
    index = 0

    def give_up_now() -> bool:
        if rp.max_tries is not None and failures >= rp.max_tries:
            return True
        return (rp.give_up_after is not None and lost_since is not None
                and time.monotonic() - lost_since > rp.give_up_after)

    while not stop.is_set():
        stats["attempts"] += 1
        got_frame = False
        err: Optional[str] = None
        try:
            container = open_input(uri, {**opts, "ffmpeg": {**ff, **(opts.get("ffmpeg") or {})}},
                                   timeout=(timeout, timeout))
        except VideoInputError as e:
            container, err = None, str(e)
        if container is not None:
            try:
                stream = _video_stream(container, uri)
                cc = stream.codec_context
                cc.thread_type = "SLICE"  # frame threads add a frame of latency each
                cc.thread_count = decoder.threads
                if policy.keyframes_only:
                    cc.skip_frame = "NONKEY"
                tb = stream.time_base
                clock.reset()
                for packet in container.demux(stream):
                    if stop.is_set():
                        break
                    try:
                        frames = cc.decode(packet if packet.size else None)
                    except av.error.EOFError:
                        frames = []
                    except av.error.FFmpegError:
                        stats["broken_packets"] += 1
                        continue
                    for f in frames:
                        t = clock(_stream_time(f.pts, tb) if f.pts is not None else None)
                        if not selector.accept(t):
                            continue
                        gap = None
                        if t_lost is not None:
                            gap = (t_lost, t)
                            stats["gaps"] += 1
                            yield StreamEvent(sid, "gap", t_start=gap[0], t_end=gap[1],
                                              message=f"feed lost for {gap[1] - gap[0]:.1f}s",
                                              details={"reconnects": stats["reconnects"]}, uri=uri)
                            t_lost = None
                        if not got_frame:
                            got_frame, failures, lost_since = True, 0, None
                            delays = rp.delays()
                        if stats["frames"] == 0:
                            first_t = t
                        last_t = t
                        stats["frames"] += 1
                        yield Frame(stream_id=sid, index=index, t=t, image=convert(f), gap=gap)
                        index += 1
                err = "the feed ended"
            except VideoInputError as e:
                err = str(e)
            except av.error.FFmpegError as e:
                err = f"read failed: {e}"
            except OSError as e:
                err = f"read failed: {e}"
            finally:
                container.close()
        if stop.is_set():
            break
        if uri.startswith("pipe:") and got_frame and err == "the feed ended":
            # A pipe cannot be reopened: its end is the end of the stream.
            reason, message = "eof", "the pipe was closed"
            break
        # The feed is down. Remember when, then back off and try again.
        if t_lost is None and stats["frames"] > 0 and not math.isnan(last_t):
            t_lost = last_t
        if lost_since is None:
            lost_since = time.monotonic()
        if not got_frame:
            failures += 1
        if give_up_now():
            reason = "gave_up"
            message = (f"no video for {time.monotonic() - lost_since:.1f}s after {failures} "
                       f"failed attempt(s); last error: {err}")
            break
        wait = next(delays)
        log.info("%s: %s; reconnecting in %.1fs", sid, err, wait)
        stats["reconnects"] += 1
        if stop.wait(wait):
            break
    yield end_event(sid, uri, reason, frames=stats["frames"], broken_packets=stats["broken_packets"],
                    t_start=first_t, t_end=last_t, message=message,
                    **{k: v for k, v in stats.items() if k not in ("frames", "broken_packets")})

