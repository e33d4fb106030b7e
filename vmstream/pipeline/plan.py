"""The plan of a stream, declared once: source -> decode -> segment -> [audio] -> items
for inference. The threaded runner and the sequential `run_stream` both build a
stream's chain from it, so they cannot drift apart."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

# A resumed stream starts decoding just after its last segment's end time: past the
# decoders' own tolerance for time rounding (sampling.TIME_EPS, 1 us), so that frame is
# not returned again, and far below any frame interval.
RESUME_EPS = 1e-5


@dataclass
class StreamPlan:
    """How every stream of a run is decoded and cut into segments.

    `segmenter_factory(source)` returns an object with
    `.segments(items, uri=, first_index=) -> iterator of Segment | StreamEvent`;
    `audio_factory(source)` (optional) a stage with `.run(items) -> items` that attaches
    audio (and an `audio_format` when it wants the audio from the decoder's own pass)."""

    decoder: object
    policy: object
    size: object
    segmenter_factory: Callable
    audio_factory: Optional[Callable] = None

    def probe(self, source):
        """The stream's StreamInfo, by the decoder's own rule (re-probed for an exact
        length when the policy needs one), so what passes here decodes. Raises
        VideoInputError / ValueError naming the input when it is unusable."""
        from vmstream.stages.decode.base import probe_for_policy

        return probe_for_policy(self.decoder, source.uri, source.options, self.policy)

    def items(
        self,
        source,
        info,
        *,
        resume: Optional[dict] = None,
        stop: Optional[threading.Event] = None,
        on_frames: Optional[Callable[[Iterator], Iterator]] = None,
    ) -> Iterator:
        """Segments and events of `source` (its "end" event last), from the start or just
        after `resume`'s last segment. `on_frames` wraps the frame iterator (counting)."""
        start_time, first_index = 0.0, 0
        if resume is not None:
            start_time = float(resume["t_end"]) + RESUME_EPS
            first_index = int(resume["next_index"])
        audio = self.audio_factory(source) if self.audio_factory is not None and info.has_audio else None
        # A stage that says its `audio_format` gets the audio in the decoder's pass (one read).
        fmt = getattr(audio, "audio_format", None)
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
