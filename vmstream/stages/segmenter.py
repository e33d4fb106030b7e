"""Segmenter: sampled frames in, model-ready `Segment`s of T frames out.

    seg = Segmenter(num_frames=16)
    for item in seg.segments(decoder.frames(source, policy, size)):
        Segment      pixels float32 [3, T, H, W], ImageNet-normalised (as the official
                     VideoMamba checkpoints were trained), t_start/t_end, frame_times,
                     the live gaps since the previous segment, is_last on the last one
        StreamEvent  passed through as they come (gaps, errors, the end)
        AudioTrack, AudioChunk  passed through as they come (for the audio stage)

Each segment carries a small JPEG of its middle frame (`thumb`), encoded from the
frame already decoded at model size (1-3 ms at 224x224): no second decode.

The stream's last, partial segment is emitted with its true length (the model
resamples its temporal positions) or dropped with `drop_last=True`. A complete
segment is held back until the next frame (with `drop_last`: the next complete
segment) or the end of the stream arrives, so the last one can be marked `is_last`.

Normalisation runs in torch on the small frames the decoder already resized (never on
full-resolution frames). `normalize_reference` is the readable definition;
`frames_to_pixels` the fast one the tests hold to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD
from vmstream.records import Frame, Segment, StreamEvent
from vmstream.stages.media import AudioChunk, AudioTrack
from vmstream.stages.thumbnails import jpeg_thumbnail


def normalize_reference(images: Sequence, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [H, W, 3] frames -> float32 [3, T, H, W], (x / 255 - mean) / std."""
    x = torch.stack([torch.as_tensor(np.asarray(im) if not torch.is_tensor(im) else im) for im in images])
    x = x.to(torch.float32) / 255.0  # [T, H, W, 3]
    x = (x - torch.tensor(mean, dtype=torch.float32, device=x.device)) / torch.tensor(
        std, dtype=torch.float32, device=x.device
    )
    return x.permute(3, 0, 1, 2).contiguous()


class _Affine:
    """x * scale - shift per channel, i.e. (x / 255 - mean) / std, cached per device."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 channels with std > 0, got {mean}, {std}")
        self._cache: dict = {}

    def get(self, device):
        key = str(device)
        if key not in self._cache:
            scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], dtype=torch.float32, device=device)
            shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], dtype=torch.float32, device=device)
            self._cache[key] = (scale.view(3, 1, 1, 1), shift.view(3, 1, 1, 1))
        return self._cache[key]


def frames_to_pixels(
    images: Sequence, mean=IMAGENET_MEAN, std=IMAGENET_STD, _affine: Optional[_Affine] = None
) -> torch.Tensor:
    """Fast path of `normalize_reference`: one uint8 stack, one strided copy into the
    [3, T, H, W] float32 output, two in-place ops. Works for numpy or torch frames
    (CUDA frames stay on their device)."""
    if not len(images):
        raise ValueError("no frames")
    if torch.is_tensor(images[0]):
        u8 = torch.stack(list(images))
    else:
        u8 = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
    if u8.dtype != torch.uint8 or u8.dim() != 4 or u8.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [H, W, 3], got {tuple(u8.shape[1:])} {u8.dtype}")
    T, H, W, _ = u8.shape
    out = torch.empty((3, T, H, W), dtype=torch.float32, device=u8.device)
    out.copy_(u8.permute(3, 0, 1, 2))
    scale, shift = (_affine or _Affine(mean, std)).get(u8.device)
    return out.mul_(scale).sub_(shift)


@dataclass
class _StreamState:
    frames: list = field(default_factory=list)
    gaps: list = field(default_factory=list)
    held: Optional[Segment] = None
    next_index: int = 0
    uri: str = ""


class Segmenter:
    """Groups frames of one or more (interleaved) streams into T-frame segments."""

    def __init__(
        self,
        num_frames: int = 16,
        *,
        drop_last: bool = False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        thumbnails: bool = True,
    ):
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames (T) must be an int >= 1, got {num_frames!r}")
        self.num_frames = num_frames
        self.drop_last = bool(drop_last)
        self._affine = _Affine(mean, std)
        self.thumbnails = bool(thumbnails)

    def _make(self, sid: str, st: _StreamState, frames: list[Frame], is_last: bool) -> Segment:
        pixels = frames_to_pixels([f.image for f in frames], _affine=self._affine)
        seg = Segment(
            stream_id=sid,
            index=st.next_index,
            t_start=float(frames[0].t),
            t_end=float(frames[-1].t),
            pixels=pixels,
            frame_times=tuple(float(f.t) for f in frames),
            gaps=tuple(st.gaps),
            is_last=is_last,
            uri=st.uri,
            thumb=jpeg_thumbnail(frames[len(frames) // 2].image) if self.thumbnails else b"",
        )
        st.next_index += 1
        st.gaps = []
        return seg

    def segments(
        self, items: Iterable[Union[Frame, StreamEvent, AudioTrack, AudioChunk]], *, uri: str = "", first_index: int = 0
    ) -> Iterator[Union[Segment, StreamEvent, AudioTrack, AudioChunk]]:
        """Segments and pass-through events. `first_index` numbers the first segment
        of each stream (a resumed stream continues its numbering)."""
        states: dict[str, _StreamState] = {}

        def state(sid: str) -> _StreamState:
            st = states.get(sid)
            if st is None:
                st = states[sid] = _StreamState(next_index=int(first_index), uri=uri)
            return st

        for item in items:
            if isinstance(item, Frame):
                st = state(item.stream_id)
                if st.held is not None and not self.drop_last:
                    # A next frame exists, so the held segment is not the last one.
                    yield st.held
                    st.held = None
                if item.gap is not None and tuple(item.gap) not in st.gaps:
                    st.gaps.append(tuple(item.gap))
                st.frames.append(item)
                if len(st.frames) == self.num_frames:
                    if st.held is not None:
                        # drop_last: only a next complete segment proves it is not last.
                        yield st.held
                    st.held = self._make(item.stream_id, st, st.frames, is_last=False)
                    st.frames = []
            elif isinstance(item, StreamEvent):
                st = state(item.stream_id)
                if item.uri and not st.uri:
                    st.uri = item.uri
                    if st.held is not None:
                        st.held.uri = item.uri
                if item.kind == "gap":
                    g = (float(item.t_start), float(item.t_end))
                    if g not in st.gaps:
                        st.gaps.append(g)
                    yield item
                elif item.kind == "end":
                    if (item.details or {}).get("reason") == "stopped":
                        # Interrupted, not finished: the frames of the incomplete segment
                        # are decoded again when the stream resumes, so its segment
                        # boundaries stay where an uninterrupted run puts them.
                        st.frames = []
                    yield from self._finish(item.stream_id, st)
                    del states[item.stream_id]
                    yield item
                else:
                    yield item
            elif isinstance(item, (AudioChunk, AudioTrack)):
                yield item  # audio read in the video's pass, for the audio stage
            else:
                raise TypeError(f"Segmenter takes Frame, StreamEvent and audio items, got {type(item).__name__}")
        # The input ended without "end" events (a caller that stopped early): flush.
        for sid, st in list(states.items()):
            yield from self._finish(sid, st)

    def _finish(self, sid: str, st: _StreamState) -> Iterator[Segment]:
        partial = st.frames if (st.frames and not self.drop_last) else []
        if st.held is not None:
            st.held.is_last = not partial
            yield st.held
            st.held = None
        if partial:
            yield self._make(sid, st, partial, is_last=True)
        st.frames = []


def stack_segments(segments: Sequence[Segment]) -> torch.Tensor:
    """Pixels of several streams' segments as one batch [B, 3, T, H, W].

    All must share T, H and W (group with `group_by_shape` first when a stream's short
    last segment is among them)."""
    if not segments:
        raise ValueError("no segments to stack")
    shapes = {tuple(s.pixels.shape) for s in segments}
    if len(shapes) != 1:
        detail = ", ".join(f"{s.stream_id}#{s.index}: {tuple(s.pixels.shape)}" for s in segments)
        raise ValueError(f"segments of different shapes cannot be stacked ({detail}); use group_by_shape")
    return torch.stack([torch.as_tensor(s.pixels) for s in segments])


def group_by_shape(segments: Sequence[Segment]) -> list[list[Segment]]:
    """Segments grouped by pixel shape, in order of first appearance."""
    groups: dict[tuple, list[Segment]] = {}
    for s in segments:
        groups.setdefault(tuple(s.pixels.shape), []).append(s)
    return list(groups.values())
