"""Live sources: reconnect with bounded exponential backoff.

A camera feed drops; the decoder notices (EOF, an error, or no data for `timeout`
seconds), waits `initial` seconds, tries again, doubling the wait up to `max_delay`,
and gives up after `max_tries` connection attempts in a row that bring no video
(0: never retry) or `give_up_after` seconds without video. The stream keeps its id
(so the model keeps its state) and the outage is reported: a "gap" StreamEvent and
`Frame.gap` on the first frame after it. Frame times are wall clock (`WallClock`).

An input FFmpeg finds to have a length (a file, an HLS playlist with #EXT-X-ENDLIST)
is not a feed, whatever the source said: its frames keep their own times and its end
is the stream's end ("eof"), never a drop to reconnect after (which would replay it
forever and hold a worker's slot).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Generator, Iterator, Optional

import av
import av.error

from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode.base import Decoder, end_event
from vmstream.stages.decode.container import FormatRefusedError, FrameConverter, open_input, stream_time, video_stream
from vmstream.stages.media import FrameSize, ReconnectPolicy, Source, VideoInputError
from vmstream.stages.sampling import SamplingPolicy

# ReconnectPolicy is a record of the media layer (a source's options name it); it stays
# importable from here, where it is used.
__all__ = ["ReconnectPolicy", "WallClock", "live_frames", "low_latency_options"]

log = logging.getLogger(__name__)


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


def live_frames(
    decoder: Decoder, source: Source, policy: SamplingPolicy, size: FrameSize, *, stop: Optional[threading.Event] = None
) -> Iterator:
    """Frames of a live source, reconnecting per `ReconnectPolicy` (see module doc).
    `decoder` gives the settings (`threads`, `swscale_threads`, `live_timeout`: a
    PyAVDecoder's).

    Yields Frame (t = wall clock), StreamEvent("gap") after each outage, and a final
    "end" (reason "stopped", "gave_up", or "eof" when a `pipe:` source closes: a pipe
    cannot be reopened)."""
    return _LiveStream(decoder, source, policy, size, stop).run()


class _LiveStream:
    """One live source's life: connections, outages between them, reconnects."""

    def __init__(
        self, decoder: Decoder, source: Source, policy: SamplingPolicy, size: FrameSize, stop: Optional[threading.Event]
    ):
        opts = dict(source.options or {})
        self.rp = ReconnectPolicy(**(opts.get("reconnect") or {}))
        self.timeout = float(opts.get("timeout") or decoder.live_timeout)
        # The source's own options.ffmpeg override the low-latency defaults.
        self.opts = {**opts, "ffmpeg": {**low_latency_options(self.timeout), **(opts.get("ffmpeg") or {})}}
        self.threads = decoder.threads
        self.keyframes_only = policy.keyframes_only
        self.selector = policy.online()
        self.convert = FrameConverter(size, threads=decoder.swscale_threads)
        self.clock = WallClock()
        self.stop = stop or threading.Event()
        self.sid, self.uri = source.stream_id, source.uri
        self.stats = dict(frames=0, broken_packets=0, reconnects=0, gaps=0, attempts=0)
        self.first_t = self.last_t = math.nan
        self.t_lost: Optional[float] = None  # stream time of the last frame before an outage
        self.lost_since: Optional[float] = None  # monotonic time the outage began
        self.failures = 0
        self.delays = self.rp.delays()
        self.index = 0
        self.got_frame = False
        self.finite = False  # the input has a length: a file or a finished playlist
        self.refused = False  # its format is not allowed (a job's kafka.jobs.formats): no retry

    def _give_up_now(self) -> bool:
        if self.rp.max_tries is not None and self.failures >= self.rp.max_tries:
            return True
        return (
            self.rp.give_up_after is not None
            and self.lost_since is not None
            and time.monotonic() - self.lost_since > self.rp.give_up_after
        )

    def run(self) -> Iterator:
        reason, message = "stopped", "stopped by the caller"
        while not self.stop.is_set():
            self.stats["attempts"] += 1
            self.got_frame = False
            err = yield from self._connection()
            if self.stop.is_set():
                break
            if self.refused:
                reason, message = "error", err
                break
            if self.uri.startswith("pipe:") and self.got_frame and err == "the feed ended":
                # A pipe cannot be reopened: its end is the end of the stream.
                reason, message = "eof", "the pipe was closed"
                break
            if self.finite and self.got_frame:
                # Read to its end (or failed part way): opening it again would start over.
                reason = "eof"
                message = (
                    "the input has a length (a file or a finished playlist), not a live feed: "
                    f"read once, to its end ({err})"
                )
                break
            # The feed is down. Remember when, then back off and try again.
            if self.t_lost is None and self.stats["frames"] > 0 and not math.isnan(self.last_t):
                self.t_lost = self.last_t
            if self.lost_since is None:
                self.lost_since = time.monotonic()
            if not self.got_frame:
                self.failures += 1
            if self._give_up_now():
                reason = "gave_up"
                message = (
                    f"no video for {time.monotonic() - self.lost_since:.1f}s after {self.failures} "
                    f"failed attempt(s); last error: {err}"
                )
                break
            wait = next(self.delays)
            log.info("%s: %s; reconnecting in %.1fs", self.sid, _without_uri(err, self.uri), wait)
            self.stats["reconnects"] += 1
            if self.stop.wait(wait):
                break
        st = self.stats
        yield end_event(
            self.sid,
            self.uri,
            reason,
            frames=st["frames"],
            broken_packets=st["broken_packets"],
            t_start=self.first_t,
            t_end=self.last_t,
            message=message,
            **{k: v for k, v in st.items() if k not in ("frames", "broken_packets")},
        )

    def _connection(self) -> Generator[object, None, str]:
        """One connection: its frames and gap events; returns why it ended."""
        try:
            container = open_input(self.uri, self.opts, timeout=(self.timeout, self.timeout))
        except FormatRefusedError as e:
            self.refused = True
            return str(e)
        except VideoInputError as e:
            return str(e)
        try:
            self.finite = bool(container.duration and container.duration > 0) and not self.uri.startswith("pipe:")
            stream = video_stream(container, self.uri)
            cc = stream.codec_context
            cc.thread_type = "SLICE"  # frame threads add a frame of latency each
            cc.thread_count = self.threads
            if self.keyframes_only:
                cc.skip_frame = "NONKEY"
            tb = stream.time_base
            self.clock.reset()
            for packet in container.demux(stream):
                if self.stop.is_set():
                    break
                try:
                    frames = cc.decode(packet if packet.size else None)
                except av.error.EOFError:
                    frames = []
                except av.error.FFmpegError:
                    self.stats["broken_packets"] += 1
                    continue
                for f in frames:
                    yield from self._frame(f, tb)
            return "the feed ended"
        except VideoInputError as e:
            return str(e)
        except av.error.FFmpegError as e:
            return f"read failed: {e}"
        except OSError as e:
            return f"read failed: {e}"
        finally:
            container.close()

    def _frame(self, f, tb) -> Iterator:
        if self.finite:
            # A file's own times: segments mean the same as the file read as a file.
            t = stream_time(f.pts, tb) if f.pts is not None else None
            if t is None or (not math.isnan(self.last_t) and t <= self.last_t):
                t = (0.0 if math.isnan(self.last_t) else self.last_t) + 1e-6
        else:
            t = self.clock(stream_time(f.pts, tb) if f.pts is not None else None)
        if not self.selector.accept(t):
            return
        gap = None
        if self.t_lost is not None:
            gap = (self.t_lost, t)
            self.stats["gaps"] += 1
            yield StreamEvent(
                self.sid,
                "gap",
                t_start=gap[0],
                t_end=gap[1],
                message=f"feed lost for {gap[1] - gap[0]:.1f}s",
                details={"reconnects": self.stats["reconnects"]},
                uri=self.uri,
            )
            self.t_lost = None
        if not self.got_frame:
            self.got_frame, self.failures, self.lost_since = True, 0, None
            self.delays = self.rp.delays()
        if self.stats["frames"] == 0:
            self.first_t = t
        self.last_t = t
        self.stats["frames"] += 1
        yield Frame(stream_id=self.sid, index=self.index, t=t, image=self.convert(f), gap=gap)
        self.index += 1


def _without_uri(err: str, uri: str) -> str:
    """FFmpeg's errors end with the file name (`Connection refused: 'tcp://...'`); the
    line already starts with the stream, so it is said once."""
    for quoted in (f": {uri!r}", f": '{uri}'", f": {uri}"):
        if err.endswith(quoted):
            return err[: -len(quoted)]
    return err
