"""The plan of a stream, declared once: source -> decode -> segment -> [audio] -> items
for inference. The threaded runner and the sequential `run_stream` both build a
stream's chain from it, so they cannot drift apart."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

if TYPE_CHECKING:  # the stages import numpy and torch; `vmstream --help` must not
    from vmstream.records import Segment, StreamEvent
    from vmstream.stages.audio import AudioFeatures
    from vmstream.stages.decode.base import DecodedItem, Decoder
    from vmstream.stages.media import FrameSize, Source, StreamInfo
    from vmstream.stages.sampling import SamplingPolicy
    from vmstream.stages.segmenter import Segmenter

# A resumed stream starts decoding just after its last segment's end time: past the
# decoders' own tolerance for time rounding (sampling.TIME_EPS, 1 us), so that frame is
# not returned again, and far below any frame interval.
RESUME_EPS = 1e-5


@dataclass
class StreamPlan:
    """How every stream of a run is decoded and cut into segments: `decoder` hands out
    the frames `policy` chooses at `size`; `segmenter_factory(source)` gives the stream
    its Segmenter; `audio_factory(source)` (optional) its audio stage, which attaches
    audio to the segments, read in the decoder's own pass (`audio_format`)."""

    decoder: Decoder
    policy: SamplingPolicy
    size: FrameSize
    segmenter_factory: Callable[[Source], Segmenter]
    audio_factory: Optional[Callable[[Source], AudioFeatures]] = None

    def probe(self, source: Source) -> StreamInfo:
        """The stream's StreamInfo, by the decoder's own rule (re-probed for an exact
        length when the policy needs one), so what passes here decodes. Raises
        VideoInputError / ValueError naming the input when it is unusable."""
        from vmstream.stages.decode.base import probe_for_policy

        return probe_for_policy(self.decoder, source.uri, source.options, self.policy)

    def items(
        self,
        source: Source,
        info: StreamInfo,
        *,
        resume: Optional[dict] = None,
        stop: Optional[threading.Event] = None,
        on_frames: Optional[Callable[[Iterator[DecodedItem]], Iterator[DecodedItem]]] = None,
    ) -> Iterator[Union[Segment, StreamEvent]]:
        """Segments and events of `source` (its "end" event last), from the start or just
        after `resume`'s last segment. `on_frames` wraps the frame iterator (counting)."""
        start_time, first_index = 0.0, 0
        if resume is not None:
            start_time = float(resume["t_end"]) + RESUME_EPS
            first_index = int(resume["next_index"])
        audio = self.audio_factory(source) if self.audio_factory is not None and info.has_audio else None
        # Asked for in the decoder's own pass (one read of the file); a decoder that cannot
        # demux it leaves the audio stage to read the file itself.
        fmt = audio.audio_format if audio is not None else None
        frames = self.decoder.frames(
            source,
            self.policy,
            self.size,
            start_time,
            stop=stop,
            info=info,
            **({"audio": fmt} if fmt is not None else {}),
        )
        if on_frames is not None:
            frames = on_frames(frames)
        items = self.segmenter_factory(source).segments(frames, uri=source.uri, first_index=first_index)
        return audio.run(items) if audio is not None else items
