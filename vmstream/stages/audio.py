"""Per-segment audio features: a log-mel summary of each segment's time span.

For one stream, `AudioFeatures` takes the Segments the segmenter made and gives back the
same Segments with `Segment.audio` set to float32 ``[2 * n_mels]``: the mean, then the
standard deviation, over time of the log-mel spectrogram frames whose centres fall in
``[t_start, t_end)`` (`logmel.LogMelStream`: constant memory over an hour-long file, and
a result that does not depend on how the stream is cut into segments or how the PCM
arrives in chunks).

Where the PCM comes from:

- in the video's pass: when the decoder was asked for audio (`frames(..., audio=
  config.audio_format)`), its items carry an `AudioTrack` and then `AudioChunk`s, which
  the segmenter passes along; the stage takes them out of the item stream and the file
  is opened and read once;
- otherwise its own reader (`PyAVAudioReader`) on the same file, front to back, seeking
  only for big jumps (a backend that decodes no audio, such as DALI, or a caller that
  did not ask).

Conventions (what the sinks will see):

- A segment with no audio in its span (past the end of the audio track, inside a gap of
  it, or a file without an audio track) gets ``audio=None``, not zeros: zeros are a real
  log-mel value (an amplitude of 1) and would read as a loud, flat sound. None becomes a
  null in Parquet / Kafka.
- A segment whose span covers audio only in part is summarised over the part it covers.
- A span shorter than one hop (a one-frame segment has ``t_end == t_start``) is given the
  single mel frame whose centre is nearest the span's midpoint, if that frame's window
  overlaps the span.
- Features are natural-log mel power: ``log(mel + log_offset)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from typing import Iterable, Iterator, Optional
from urllib.parse import urlparse

import numpy as np

from vmstream.records import Segment, StreamEvent
from vmstream.stages.decode.container import AudioDecoder, audio_stream, open_input
from vmstream.stages.logmel import AudioConfig, LogMelStream, reference_logmel_summary
from vmstream.stages.media import AudioChunk, AudioFormat, AudioTrack

log = logging.getLogger(__name__)

__all__ = [
    "AudioConfig",
    "AudioFeatures",
    "LogMelStream",
    "PyAVAudioReader",
    "reference_logmel_summary",
]


def _is_local(uri: str) -> bool:
    if os.path.exists(uri):
        return True
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


class PyAVAudioReader:
    """Mono float32 PCM at a fixed rate from the first audio stream of a file, decoded
    lazily packet by packet (never the whole track). Broken packets are counted and
    skipped. Raises LookupError for a file without an audio track, VideoInputError
    (naming the file) for one that cannot be opened."""

    def __init__(self, uri: str, sample_rate: int, options: Optional[dict] = None):
        self.uri = uri
        self.sample_rate = sample_rate
        self.broken_packets = 0
        # The source's own options: a job's format and protocol limits hold here too.
        self.container = open_input(uri, options)
        self.stream = audio_stream(self.container)
        if self.stream is None:
            self.container.close()
            raise LookupError(f"{uri}: no audio track")
        self.codec = self.stream.codec_context.name

    def close(self) -> None:
        self.container.close()

    def chunks(self, start: Optional[float] = None) -> Iterator[tuple[np.ndarray, Optional[float]]]:
        """(samples, time of the first sample) until the end of the track; from the
        keyframe at or before `start` if given (earlier samples may come too)."""
        if start is not None:
            target = max(0.0, float(start))
            self.container.seek(int(target / self.stream.time_base), stream=self.stream, backward=True, any_frame=False)
        dec = AudioDecoder(AudioFormat(self.sample_rate), self.uri)
        before = self.broken_packets
        for packet in self.container.demux(self.stream):
            out = dec.decode(packet)
            self.broken_packets = before + dec.broken_packets
            yield from out
        yield from dec.flush()


class AudioFeatures:
    """The audio stage: one stream's Segments in, the same Segments out with `audio` set.

        stage = AudioFeatures(AudioConfig(n_mels=64))
        items = decoder.frames(source, policy, size, audio=stage.audio_format)
        for item in stage.run(segmenter.segments(items)):   # Segments and StreamEvents
            ...
        # in a StreamPlan: audio_factory=AudioFeatures.factory(AudioConfig())

    Audio in the item stream (an `AudioTrack` before the first Segment, then
    `AudioChunk`s): taken out of the stream and summarised; each Segment waits (in
    order with the events around it) until the audio covers its span, the stream ends,
    or the video runs `interleave_seconds` past it.

    Otherwise the file is the `uri` given here, else the first Segment's `uri`. Reads it
    once, front to back, just far enough ahead to summarise the segment at hand (memory:
    the PCM block being turned into frames plus the mel frames from the current
    segment's start on, 25.6 kB per second of span at 64 mels). It seeks only for a jump
    ahead of more than `seek_ahead_seconds` or a segment that starts before frames it
    already dropped (segments are expected in time order).
    A file without an audio track, a URL that is not a local file (live feeds: feed
    `LogMelStream` from the decoder's own demuxer instead), or an audio track that cannot
    be opened: the segments pass through with audio None and one log line; audio never
    fails a stream. `stats` describes the last stream.
    """

    def __init__(self, config: AudioConfig = AudioConfig(), uri: Optional[str] = None, options: Optional[dict] = None):
        self.config = config
        self.uri = uri
        self.options = dict(options or {})
        self.stats: dict = {}

    @property
    def audio_format(self) -> AudioFormat:
        """What to ask the decoder for (`frames(..., audio=)`) to read audio in its pass."""
        return self.config.audio_format

    @classmethod
    def factory(cls, config: AudioConfig = AudioConfig()):
        """`audio_factory(source)` for the runner: one stage per source, on its file."""

        def make(source) -> "AudioFeatures":
            return cls(
                config,
                uri=getattr(source, "path", None) or getattr(source, "uri", None),
                options=getattr(source, "options", None),
            )

        return make

    def run(self, items: Iterable, uri: Optional[str] = None) -> Iterator:
        """Segments get `audio`; anything else (StreamEvents) passes through in order."""
        it = iter(items)
        first = None
        for item in it:  # anything before the first Segment goes out as it comes
            if isinstance(item, AudioTrack):
                yield from self._run_in_band(item, it, uri or self.uri or "")
                return
            if isinstance(item, Segment):
                first = item
                break
            yield item
        if first is None:
            return
        uri = uri or self.uri or first.uri
        self.stats = self._new_stats(uri)
        reader = self._open(uri)
        if reader is None:
            yield first
            yield from it
            return
        self.stats["audio"] = True
        try:
            yield from self._run_file(reader, _chain(first, it))
        finally:
            self.stats["broken_packets"] = reader.broken_packets
            reader.close()
            if reader.broken_packets:
                log.warning("%s: %d broken audio packets skipped", uri, reader.broken_packets)

    __call__ = run

    @staticmethod
    def _new_stats(uri: str) -> dict:
        return {
            "uri": uri,
            "audio": False,
            "segments": 0,
            "segments_without_audio": 0,
            "broken_packets": 0,
            "seeks": 0,
            "peak_buffered_seconds": 0.0,
        }

    def _open(self, uri: str) -> Optional[PyAVAudioReader]:
        if not uri:
            log.warning("audio: segments carry no uri; audio stays None")
            return None
        if not _is_local(uri):
            log.info("%s: audio features are read from local files only; audio stays None", uri)
            return None
        try:
            return PyAVAudioReader(uri, self.config.sample_rate, self.options)
        except LookupError:
            log.info("%s: no audio track; audio stays None", uri)
        except Exception as e:  # the video may still be fine: never fail the stream for audio
            log.warning("%s: cannot open the audio track (%s: %s); audio stays None", uri, type(e).__name__, e)
        return None

    def _attach(self, seg: Segment, mel: LogMelStream, t1: float, uri: str) -> None:
        """Summarise `seg`'s span from `mel` into `seg.audio` and count it."""
        try:
            seg.audio = mel.summary(float(seg.t_start), t1)
        except Exception as e:  # a summary failure loses audio, never the segment
            log.warning(
                "%s: audio of segment %s failed (%s: %s); audio stays None", uri, seg.index, type(e).__name__, e
            )
            seg.audio = None
        self.stats["segments"] += 1
        if seg.audio is None:
            self.stats["segments_without_audio"] += 1
        self.stats["peak_buffered_seconds"] = mel.peak_buffered_seconds

    def _span(self, seg: Segment) -> tuple[float, float, float]:
        """(span end, earliest frame centre the span may use, that less one hop): frames
        before the last are done with once segments come in time order."""
        cfg = self.config
        t0 = float(seg.t_start)
        t1 = max(float(seg.t_end), t0)
        # Earliest frame centre this span may use (its nearest-frame rule included).
        need_from = min(t0, 0.5 * (t0 + t1)) - cfg.half_window
        return t1, need_from, need_from - cfg.hop_length / cfg.sample_rate

    # -- audio read in the video's pass ----------------------------------------------

    def _run_in_band(self, track: AudioTrack, items: Iterator, uri: str) -> Iterator:
        cfg = self.config
        self.stats = self._new_stats(uri)
        if track.format != cfg.audio_format:
            log.warning(
                "%s: the decoder's audio is %s, this stage reads %s; audio stays None",
                uri,
                track.format,
                cfg.audio_format,
            )
            yield from (x for x in items if not isinstance(x, (AudioTrack, AudioChunk)))
            return
        self.stats.update(audio=True, in_band=True)
        mel = LogMelStream(cfg)
        held: deque = deque()  # items waiting (in order) for the audio of the first Segment
        video_t = -math.inf  # the latest segment end seen: how far the video has come
        for item in items:
            if isinstance(item, AudioChunk):
                mel.push(item.samples, item.t)
            elif isinstance(item, AudioTrack):
                continue
            else:
                if isinstance(item, Segment):
                    video_t = max(video_t, float(item.t_end))
                elif isinstance(item, StreamEvent) and item.kind == "end":
                    mel.finish()
                    self.stats["broken_packets"] = int((item.details or {}).get("audio_broken_packets", 0))
                held.append(item)
            yield from self._release(held, mel, video_t, uri)
        mel.finish()
        yield from self._release(held, mel, video_t, uri)
        if self.stats["broken_packets"]:
            log.warning("%s: %d broken audio packets skipped", uri, self.stats["broken_packets"])

    def _release(self, held: deque, mel: LogMelStream, video_t: float, uri: str) -> Iterator:
        while held:
            item = held[0]
            if isinstance(item, Segment):
                t1, _, keep_from = self._span(item)
                if not mel.ready(t1) and video_t - t1 <= self.config.interleave_seconds:
                    return
                mel.discard_before(keep_from)
                self._attach(item, mel, t1, uri)
            yield held.popleft()

    # -- audio read by the stage itself --------------------------------------------

    def _run_file(self, reader: PyAVAudioReader, segments: Iterator) -> Iterator:
        cfg = self.config
        mel = LogMelStream(cfg)
        chunks = reader.chunks()
        dropped_until = -math.inf  # frames centred before this may be missing (dropped, or before a seek)
        for seg in segments:
            if not isinstance(seg, Segment):
                yield seg
                continue
            t1, need_from, keep_from = self._span(seg)
            far_ahead = need_from - max(mel.covered_until(), 0.0) > cfg.seek_ahead_seconds and not mel.finished
            behind = need_from < dropped_until
            if far_ahead or behind:
                self.stats["seeks"] += 1
                mel.reset()
                chunks.close()
                chunks = reader.chunks(start=need_from - cfg.half_window)
                # Audio before the seek point may be missing: earlier spans seek again.
                dropped_until = keep_from
            else:
                # Segments come in time order: what lies before this one's start is done
                # (dropped here, not after the previous segment, in case they overlap).
                mel.discard_before(keep_from)
                dropped_until = max(dropped_until, keep_from)
            try:
                while not mel.ready(t1):
                    try:
                        x, t = next(chunks)
                    except StopIteration:
                        mel.finish()
                        break
                    mel.push(x, t)
            except Exception as e:  # a decode failure loses audio, never the segment
                log.warning(
                    "%s: audio of segment %s failed (%s: %s); audio stays None",
                    reader.uri,
                    seg.index,
                    type(e).__name__,
                    e,
                )
                seg.audio = None
                self.stats["segments"] += 1
                self.stats["segments_without_audio"] += 1
                self.stats["peak_buffered_seconds"] = mel.peak_buffered_seconds
                yield seg
                continue
            self._attach(seg, mel, t1, reader.uri)
            yield seg


def _chain(first, rest):
    yield first
    yield from rest
