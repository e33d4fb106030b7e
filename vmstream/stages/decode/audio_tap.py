"""The audio track read in the video's demux pass: the PyAV decoder hands the audio
packets it demuxes to an `AudioTap`, which turns them into `AudioChunk` records that
travel among the frames to the audio stage, so a file with both is opened and read
once. The PCM is the same as a separate audio reader's (`container.AudioDecoder`, the
same packets in the same order)."""

from __future__ import annotations

import logging
import math
from typing import Optional

from vmstream.stages.decode.container import AudioDecoder
from vmstream.stages.media import AudioChunk, AudioFormat, AudioTrack

log = logging.getLogger(__name__)


class AudioTap:
    """Decodes one audio stream's packets as the video reader meets them."""

    def __init__(self, stream_id: str, stream, fmt: AudioFormat, uri: str = ""):
        self.stream = stream
        self.stream_id = stream_id
        self.track = AudioTrack(stream_id, fmt, codec=stream.codec_context.name or "")
        self._decoder = AudioDecoder(fmt, uri)
        self._rate = fmt.sample_rate
        self._pending: list[AudioChunk] = []
        self._last_pts: Optional[int] = None
        self._skip_until: Optional[int] = None
        self._end = -math.inf
        self.finished = False

    @property
    def broken_packets(self) -> int:
        return self._decoder.broken_packets

    def rewound(self) -> None:
        """The reader went back (a seek): packets already decoded come again; skip them."""
        self._skip_until = self._last_pts

    def feed(self, packet) -> None:
        if self.finished:
            return
        if packet.size and packet.pts is not None:
            if self._skip_until is not None:
                if packet.pts <= self._skip_until:
                    return
                self._skip_until = None
            self._last_pts = packet.pts
        try:
            self._add(self._decoder.decode(packet))
        except Exception as e:  # audio never fails the video: the rest of the track is dropped
            log.warning(
                "%s: audio decoding failed (%s: %s); the rest of the audio is skipped",
                self._decoder.uri,
                type(e).__name__,
                e,
            )
            self.finished = True

    def finish(self, at_eof: bool) -> None:
        """No more packets: at the end of the file the resampler's tail comes too."""
        if not self.finished and at_eof:
            try:
                self._add(self._decoder.flush())
            except Exception as e:  # as in feed: audio never fails the video
                log.warning("%s: audio decoding failed (%s: %s)", self._decoder.uri, type(e).__name__, e)
        self.finished = True

    def covered_until(self) -> float:
        """End time of the PCM decoded so far (-inf before any)."""
        return self._end

    def take(self) -> list[AudioChunk]:
        out, self._pending = self._pending, []
        return out

    def _add(self, chunks) -> None:
        for x, t in chunks:
            self._pending.append(AudioChunk(self.stream_id, x, t))
            if t is not None:
                self._end = t + len(x) / self._rate
            elif self._end > -math.inf:
                self._end += len(x) / self._rate
