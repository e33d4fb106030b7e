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
- keyframes-only mode feeds keyframes alone (approximate in time, see sampling.py);
- H.264 files: runs of GOPs that start at an IDR (or on a flushed decoder) are decoded
  `gop_workers` at a time, each on its own decoder that also converts its frames
  (`gop_pool`): one decoder's frame threads stall on a GOP's reference chain (I, P,
  P, ...) and leave cores idle; independent runs do not.

`exact_mode` picks the strategy for sparse targets: "filter" (the above; the default
for H.264), "seek" (the same minus the H.264 NAL filter; the default for other
codecs), "full" (decode everything and pick on output: the readable reference the
others are tested against, bit for bit).

Asked for audio (`frames(..., audio=AudioFormat)`), a file's audio track is demuxed in
the same pass (`audio_tap`): an `AudioTrack` comes before the first frame and
`AudioChunk`s among the frames, so the audio stage reads no file of its own. Forward
seeks are then off (the skipped span's audio is wanted); GOP skipping and the packet
filter still spare the video decoder.

Layout: `container` opens, probes and converts; `gop_reader` reads packets a GOP at a
time; `packet_filter` plans which of them to feed; `gop_pool` decodes the planned runs
(on several decoders, or in order on one); `live` runs live sources; this module picks
the strategy and runs it over a file.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import replace
from typing import Iterator, Optional

import av
import av.error

from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode.audio_tap import AudioTap
from vmstream.stages.decode.base import (
    DecodedItem,
    Decoder,
    check_frames_args,
    end_event,
    no_frame_reason,
    probe_for_policy,
)
from vmstream.stages.decode.container import (
    SKIP_PROBE_DECODE,
    FrameConverter,
    audio_stream,
    count_frames,
    describe,
    open_input,
    refuse_special_file,
    stream_time,
    video_stream,
)
from vmstream.stages.decode.frame_bound import MAX_FRAME_PIXELS, check_frame_size, y4m_frame_size
from vmstream.stages.decode.gop_pool import Decoded, GopPool, RunCounts, SerialDecoder, pool_decoder_threads
from vmstream.stages.decode.gop_reader import GopReader, Packet, TargetQueue
from vmstream.stages.decode.live import live_frames
from vmstream.stages.decode.packet_filter import H264Inspector, feed_mask, wanted_in_window
from vmstream.stages.media import TIME_EPS, AudioFormat, FrameSize, Source, StreamInfo, VideoInputError
from vmstream.stages.sampling import SamplingPolicy

# Container access lives in `container`; these stay importable from here.
__all__ = [
    "CLOSED_GOP_CODECS",
    "END_SLACK",
    "EXACT_MODES",
    "FrameConverter",
    "PyAVDecoder",
    "count_frames",
    "describe",
    "open_input",
]

log = logging.getLogger(__name__)

EXACT_MODES = ("auto", "filter", "seek", "full")

# Codecs whose keyframes never let later frames reference earlier ones (no open GOPs):
# decoding may resume at their keyframes after skipped packets without a flush.
CLOSED_GOP_CODECS = frozenset(
    {"vp8", "vp9", "mjpeg", "png", "prores", "dnxhd", "ffv1", "rawvideo", "huffyuv", "utvideo"}
)

# Targets closer than this to the end of the last frame's display count as past the
# end (container durations are often rounded to the millisecond).
END_SLACK = 1e-3


# --------------------------------------------------------------------------- decoder


class PyAVDecoder(Decoder):
    """FFmpeg through PyAV. Thread-safe: every `frames()` call opens its own input.

    threads:     decoder threads (0 = FFmpeg's choice, one per core + 1; a GOP-pool
                 worker's decoder then gets cores / gop_workers, see pool_decoder_threads)
    thread_type: "AUTO" (frame + slice threading), "FRAME", "SLICE" or "NONE"
    exact_mode:  "auto", "filter", "seek" or "full" (see the module doc)
    live_timeout: seconds without data before a live feed counts as dropped
    max_frame_pixels: inputs declaring larger frames are refused at probe time
    gop_workers: H.264 files: runs of GOPs that start at an IDR are decoded this many at
                 a time, each on its own decoder (`gop_pool`; the same frames, bit for
                 bit); 1 decodes in order on one decoder
    """

    name = "pyav"

    def __init__(
        self,
        *,
        threads: int = 0,
        thread_type: str = "AUTO",
        exact_mode: str = "auto",
        live_timeout: float = 5.0,
        swscale_threads: int = 1,
        max_frame_pixels: int = MAX_FRAME_PIXELS,
        gop_workers: int = 2,
    ):
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
        if isinstance(max_frame_pixels, bool) or not isinstance(max_frame_pixels, int) or max_frame_pixels < 1:
            raise ValueError(f"max_frame_pixels must be an int >= 1, got {max_frame_pixels!r}")
        self.max_frame_pixels = max_frame_pixels
        if isinstance(gop_workers, bool) or not isinstance(gop_workers, int) or gop_workers < 1:
            raise ValueError(f"gop_workers must be an int >= 1, got {gop_workers!r}")
        self.gop_workers = gop_workers

    # ------------------------------------------------------------------ probe

    def probe(self, uri: str, options: Optional[dict] = None, *, count: bool = False) -> StreamInfo:
        """Describe `uri` (see base.Decoder.probe). `count=True` also reads every
        packet to get an exact frame count and duration where the header lacks them."""
        live = "://" in uri and not uri.startswith("file://")
        timeout = (options or {}).get("timeout", self.live_timeout) if live else None
        refuse_special_file(uri)
        declared = y4m_frame_size(uri, options)
        if declared is not None:
            check_frame_size(uri, *declared, self.max_frame_pixels)
        with open_input(uri, options, timeout=timeout) as c:
            info = describe(c, video_stream(c, uri), uri)
        check_frame_size(uri, info.width, info.height, self.max_frame_pixels)
        if count:
            n, lo, end = count_frames(uri, options)
            dur = max(end - lo, 1e-6)
            fps = info.fps or (n / dur if n > 1 else None)
            info = replace(info, frame_count=n, frame_count_exact=True, start_time=lo, duration=dur, fps=fps)
        return info

    # ------------------------------------------------------------------ frames

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
        """See base.Decoder.frames. Validates and probes now (errors raise here, before
        any work); the decoding itself runs lazily in the returned iterator.
        `info` skips the probe when the caller already has it. `audio`: a file's audio
        track comes in the same pass (an `AudioTrack`, then `AudioChunk`s); live
        sources ignore it."""
        check_frames_args(source, policy, size, start_time)
        if audio is not None and not isinstance(audio, AudioFormat):
            raise TypeError(f"audio must be an AudioFormat or None, got {type(audio).__name__}")
        if source.live:
            policy.online()  # raises for policies that need a known length
            return live_frames(self, source, policy, size, stop=stop)
        info = probe_for_policy(self, source.uri, source.options, policy, info)
        return self._file_frames(source, info, policy, size, float(start_time), stop, audio)

    def _open_stream(self, source: Source, keyframes_only: bool, audio: Optional[AudioFormat]):
        """(container, video stream, audio tap or None). The file was probed a moment
        ago (`probe`, a full open that decodes its first pictures); this open skips that
        decode (see `_open_decoder`): the stream's decoder is a fresh one either way."""
        c = open_input(source.uri, source.options, extra_ffmpeg=SKIP_PROBE_DECODE)
        try:
            s = video_stream(c, source.uri)
            cc = s.codec_context
            cc.thread_type = self.thread_type
            cc.thread_count = self.threads
            if keyframes_only:
                cc.skip_frame = "NONKEY"
            a = audio_stream(c) if audio is not None else None
            tap = AudioTap(source.stream_id, a, audio, source.uri) if a is not None else None
            # Other streams' packets are read and dropped by the demuxer, not queued.
            for other in c.streams:
                if other.index != s.index and (a is None or other.index != a.index):
                    other.discard = av.stream.Discard.all
        except BaseException:
            c.close()
            raise
        return c, s, tap

    def _file_frames(
        self,
        source: Source,
        info: StreamInfo,
        policy: SamplingPolicy,
        size: FrameSize,
        start_time: float,
        stop,
        audio: Optional[AudioFormat],
    ) -> Iterator[DecodedItem]:
        stats = dict(
            packets=0,
            corrupt_packets=0,
            decode_errors=0,
            decoded=0,
            fed=0,
            seeks=0,
            inspected=0,
            frames=0,
            missed_targets=0,
            flushes=0,
            runs=0,
        )
        sid, uri = source.stream_id, source.uri
        try:
            c, s, tap = self._open_stream(source, policy.keyframes_only, audio)
        except VideoInputError as e:  # it probed fine a moment ago: changed under us
            yield StreamEvent(sid, "error", message=str(e), details={"error": type(e).__name__}, uri=uri)
            yield end_event(sid, uri, "error", frames=0, message=str(e))
            return
        run = _FileRun(self, source, info, policy, size, start_time, stop, stats, tap)
        first_t = last_t = math.nan
        reason, message = "eof", ""
        try:
            if tap is not None:
                yield tap.track
            for fr in run.run(c, s):
                if tap is not None:
                    yield from tap.take()
                if stats["frames"] == 0:
                    first_t = fr.t
                last_t = fr.t
                stats["frames"] += 1
                yield fr
            if run.stopped:
                reason, message = "stopped", "stopped by the caller"
            else:
                reason, message = run.end_reason()
                if tap is not None:
                    # The last segments' audio runs a little past their last frame.
                    run.reader.read_audio_until(max(run.reader.last_t or -math.inf, last_t) + 1.0)
        except Exception as e:  # a bad file fails its stream, never the caller's loop
            log.warning("%s: decoding failed: %s", uri, e, exc_info=not isinstance(e, av.error.FFmpegError))
            yield StreamEvent(
                sid,
                "error",
                t_start=last_t,
                message=f"decoding failed: {e}",
                details={"error": type(e).__name__},
                uri=uri,
            )
            reason, message = "error", f"decoding failed: {e}"
        finally:
            c.close()
        extra = {}
        if tap is not None:
            yield from tap.take()
            extra["audio_broken_packets"] = tap.broken_packets
        broken = stats["decode_errors"] + stats["corrupt_packets"]
        reason, message = no_frame_reason(reason, message, stats["frames"], start_time)
        yield end_event(
            sid,
            uri,
            reason,
            frames=stats["frames"],
            broken_packets=broken,
            t_start=first_t,
            t_end=last_t,
            message=message,
            **{k: v for k, v in stats.items() if k not in ("frames",)},
            mode=run.mode,
            **extra,
        )


class _FileRun:
    """One pass over a file: the strategies share frame output and counters."""

    def __init__(
        self,
        dec: PyAVDecoder,
        source: Source,
        info: StreamInfo,
        policy: SamplingPolicy,
        size: FrameSize,
        start_time: float,
        stop,
        stats: dict,
        tap: Optional[AudioTap] = None,
    ):
        self.dec, self.source, self.info, self.policy = dec, source, info, policy
        self.tap = tap
        self.size, self.start_time, self.stop, self.stats = size, start_time, stop, stats
        self.convert = FrameConverter(size, threads=dec.swscale_threads)  # rotation per frame
        self.stopped = False
        self.reader: Optional[GopReader] = None
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
            slack = (
                2 * max(self.frame_dur, 0.02) + 0.5 if info.frame_count_exact else 0.1 * (info.duration or 0.0) + 1.0
            )
            if r.last_t < info.end_time - slack:
                return "truncated", (f"the data ends at {r.last_t:.2f}s but the container says {info.end_time:.2f}s")
        return "eof", ""

    def _emit(self, avf, t: float, count: int) -> Iterator[Frame]:
        yield from self._emit_image(self.convert(avf), t, count)

    def _emit_image(self, img, t: float, count: int) -> Iterator[Frame]:
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
        return self._time_of(avf.pts, tb, last)

    def _time_of(self, pts: Optional[int], tb, last: Optional[float]) -> float:
        if pts is not None:
            return stream_time(pts, tb)
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
        # Runs of GOPs go to several decoders at once where IDRs can be found (H.264).
        # Each pool decoder opens the file for its codec parameters: local files only,
        # and not when the audio rides along (then the file is opened once, on purpose).
        pooled = (
            self.dec.gop_workers > 1
            and self.info.codec == "h264"
            and mode in ("all", "filter", "seek")
            and os.path.isfile(self.source.uri)
            and self.tap is None
        )
        planned = mode in ("filter", "seek", "keyframes")
        inspector = (
            H264Inspector(s.codec_context.extradata) if (planned or pooled) and self.info.codec == "h264" else None
        )
        self.reader = GopReader(c, s, inspector, self.stats, use_refs=(mode == "filter"), audio=self.tap)
        self.reader.end_time = self.info.end_time
        if self.start_time > 0 and not self.reader.seek(self.start_time):
            log.debug("%s: cannot seek; reading from the start", self.source.uri)
        if mode == "all" and pooled:
            yield from self._all_runs(s)
        elif mode == "all":
            yield from self._all(s)
        elif mode == "full":
            yield from self._full(s, targets_src)
        else:
            try:
                yield from self._planned(s, targets_src, keyframes=(mode == "keyframes"), pooled=pooled)
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
        targets = TargetQueue(targets_src, self.start_time)
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

    def _decoders(self, s, counts: RunCounts, pooled: bool):
        """Where the planned packets go: a pool of decoders (runs of GOPs at once) or
        the stream's own decoder, in order (see gop_pool)."""
        if not pooled:
            return SerialDecoder(s.codec_context, self.convert, counts, self.source.uri)
        size, sws = self.size, self.dec.swscale_threads
        return GopPool(
            self._open_decoder,
            lambda: FrameConverter(size, threads=sws),
            counts,
            workers=self.dec.gop_workers,
            depth=2 * self.dec.gop_workers,
            uri=self.source.uri,
        )

    def _open_decoder(self):
        """A decoder of this file's video for a pool worker: opened like the main one,
        so it gets the same parameters and side data (rotation). The worker only decodes
        packets the planner read, so the decode FFmpeg runs while opening a file (to
        learn the picture format; ~30 ms of a 1080p run's critical path) is skipped:
        skip_frame=all reaches only that probe's decoder, and the worker's own decoder,
        fresh from the stream's parameters, takes the format from the bitstream."""
        c = open_input(self.source.uri, self.source.options, extra_ffmpeg=SKIP_PROBE_DECODE)
        try:
            cc = video_stream(c, self.source.uri).codec_context
            cc.thread_type = self.dec.thread_type
            cc.thread_count = pool_decoder_threads(self.dec.threads, self.dec.gop_workers)
        except BaseException:
            c.close()
            raise
        return c, cc

    def _merge(self, counts: RunCounts) -> None:
        st = self.stats
        st["fed"] += counts.fed
        st["decoded"] += counts.decoded
        st["decode_errors"] += counts.decode_errors
        st["missed_targets"] += counts.missed
        st["runs"] += counts.runs

    # -- every frame, runs of GOPs on several decoders

    def _all_runs(self, s) -> Iterator[Frame]:
        """`_all` with each run of GOPs from an IDR on a pool decoder."""
        tb, r = s.time_base, self.reader
        lo = self.start_time - TIME_EPS
        last_t = None
        counts = RunCounts()
        ex = self._decoders(s, counts, pooled=True)

        def out(decoded: Iterator[Decoded]) -> Iterator[Frame]:
            nonlocal last_t
            for d in decoded:
                if self._should_stop():
                    return
                t = self._time_of(d.pts, tb, last_t)
                if last_t is not None and t <= last_t:
                    continue
                last_t = t
                if t >= lo:
                    yield from self._emit_image(d.image, t, 1)

        try:
            while not self._should_stop():
                w = r.next_window()
                if w is None:
                    break
                pkts = w[0]
                if pkts[0].key and pkts[0].idr:
                    yield from out(ex.idr())
                yield from out(ex.submit([p.packet for p in pkts], None))
            if not self.stopped:
                yield from out(ex.finish())
        finally:
            ex.close()
            self._merge(counts)

    # -- planned: skip GOPs, cut tails, drop unwanted non-reference pictures

    def _planned(self, s, targets_src, *, keyframes: bool, pooled: bool = False) -> Iterator[Frame]:
        tb, r = s.time_base, self.reader
        every = targets_src is None  # keyframes-only AllFrames: every keyframe
        targets = None if every else TargetQueue(targets_src, self.start_time)
        lo = self.start_time - TIME_EPS
        planned_any = False
        last_out_t = None
        cut_before = False  # packets were left out since the decoder last started clean
        counts = RunCounts()
        ex = self._decoders(s, counts, pooled)

        def out(decoded: Iterator[Decoded]) -> Iterator[Frame]:
            nonlocal last_out_t
            for d in decoded:
                if self._should_stop():
                    return
                t = stream_time(d.pts, tb)
                if t < lo or (last_out_t is not None and t <= last_out_t):
                    continue
                last_out_t = t
                yield from self._emit_image(d.image, t, d.count)

        try:
            while not self._should_stop():
                if not every:
                    nt = targets.peek()
                    if nt is None:
                        break
                    if r.should_seek(nt):
                        yield from out(ex.new_run())
                        r.seek_forward(nt)
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
                    yield from out(ex.submit([p.packet for p in pkts], {}))
                    continue
                wanted, mask = self._plan_window(pkts, bound, next_key_t, targets, keyframes)
                planned_any = True
                if any(mask):
                    idr = pkts[0].key and pkts[0].idr and r.inspector is not None
                    clean = idr or (pkts[0].key and r.inspector is None and self.info.codec in CLOSED_GOP_CODECS)
                    if cut_before and not clean:
                        # Resuming at a keyframe that is not an H.264 IDR (open GOP, or a
                        # codec we do not inspect) after skipped packets: the decoder would
                        # see a gap in its references (FFmpeg's H.264 gap handling then
                        # reorders and drops output). Start it fresh, as a seek would.
                        yield from out(ex.new_run())
                        self.stats["flushes"] += 1
                    elif idr:
                        yield from out(ex.idr())
                    yield from out(
                        ex.submit(
                            [p.packet for p, f in zip(pkts, mask) if f], {pkts[i].pts: n for i, n in wanted.items()}
                        )
                    )
                # Only left-out references leave gaps; unfed non-reference pictures do not.
                cut_before = any(p.ref and not f for p, f in zip(pkts, mask))
            if not self.stopped:
                yield from out(ex.finish())
        finally:
            ex.close()
            self._merge(counts)

    def _plan_window(
        self, pkts: list[Packet], bound: float, next_key_t: float, targets: Optional[TargetQueue], keyframes: bool
    ) -> tuple[dict[int, int], list[bool]]:
        """For one GOP window: {decode-order index: targets served} and which packets
        to feed. `targets` None: keyframes-only every-frame (each window's keyframe)."""
        if keyframes:
            cand = [i for i, p in enumerate(pkts) if p.key] or [0]
            if targets is None:
                ts = [pkts[cand[0]].t]
            elif math.isfinite(next_key_t):
                ts = targets.pop_below(next_key_t)
            else:
                ts = self._eof_targets(targets, pkts)
            sub = wanted_in_window([pkts[i].t for i in cand], ts)
            wanted = {cand[i]: n for i, n in sub.items()}
            return wanted, [i in wanted for i in range(len(pkts))]
        ts = targets.pop_below(bound) if math.isfinite(bound) else self._eof_targets(targets, pkts)
        wanted = wanted_in_window([p.t for p in pkts], ts)
        nt2 = targets.peek()
        # The next GOP's leading pictures (open GOP) reference this one.
        lead_wanted = nt2 is not None and nt2 + TIME_EPS < next_key_t
        return wanted, feed_mask([p.ref for p in pkts], list(wanted), keep_refs_to_end=lead_wanted)

    def _eof_targets(self, targets: TargetQueue, pkts: list[Packet]) -> list[float]:
        """Targets resolved by the last window: up to the end of its last frame, or
        all of them for fixed-count policies (the last frame repeats)."""
        if self.policy.repeats:
            return targets.pop_until(math.inf)
        last = max(p.t for p in pkts)
        return targets.pop_until(last + self.frame_dur - END_SLACK)


class _NoTimestamps(Exception):
    """Packets without presentation times: planning is impossible."""
