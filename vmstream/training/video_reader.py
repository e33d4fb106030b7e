"""Frames for training, read through the project's decoder (`vmstream.stages.decode`).

The datasets choose frame *indices* (TSN chunks, official test views, LVU windows); this
module hands them to the decoder as a `FrameIndexSampling` policy with a `FrameSize`
that keeps the aspect ratio (the
training crops need the whole frame, so no centre crop here). Resizing happens inside
the decoder (libswscale), as everywhere else in the project.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vmstream.records import Frame
from vmstream.stages.decode import FrameSize, StreamInfo, VideoInputError, make_decoder
from vmstream.stages.decode.base import PATCH_SIZE
from vmstream.stages.sampling import FrameIndexSampling, stream_length
from vmstream.stages.sources import Source


class VideoReadError(RuntimeError):
    """A video that cannot be used (missing, corrupt, no video track, too short)."""


def _round_patch(v: float) -> int:
    return max(PATCH_SIZE, int(round(v / PATCH_SIZE)) * PATCH_SIZE)


def frame_size(info: StreamInfo, short_side: Optional[int]) -> FrameSize:
    """Aspect-keeping size with the short side at `short_side` (both sides multiples of
    the patch size, as the decoder requires); the source size when None."""
    w, h = info.display_size
    if short_side:
        s = short_side / min(w, h)
        w, h = w * s, h * s
    return FrameSize(_round_patch(h), _round_patch(w), mode="direct")


class VideoReader:
    """Probe-once, read-by-index access to video files (one per dataset and worker)."""

    def __init__(self, decoder: str = "pyav"):
        self.decoder = make_decoder(decoder, threads=1) if decoder == "pyav" else make_decoder(decoder)
        self._info: dict[str, StreamInfo] = {}

    def __getstate__(self):  # DataLoader workers build their own decoder and cache
        return {"name": self.decoder.name}

    def __setstate__(self, state):
        self.__init__(state.get("name", "pyav"))

    def probe(self, path: str) -> tuple[int, float, StreamInfo]:
        """(frame count, fps, info) of `path`."""
        info = self._info.get(path)
        if info is None:
            try:
                info = self.decoder.probe(path)
                try:
                    stream_length(info)
                except ValueError:
                    info = self.decoder.probe(path, count=True)
                n, fps = stream_length(info)
            except (VideoInputError, ValueError, OSError) as e:
                raise VideoReadError(str(e)) from None
            self._info[path] = info
        n, fps = stream_length(info)
        return n, fps, info

    def read(self, path: str, indices, short_side: Optional[int]) -> np.ndarray:
        """uint8 [len(indices), H, W, 3]: the frames at those 0-based indices (repeats
        allowed), the short side resized to about `short_side` by the decoder."""
        n, fps, info = self.probe(path)
        want = np.clip(np.asarray(indices, dtype=np.int64), 0, n - 1)
        order = np.argsort(want, kind="stable")  # frames come out in time order
        idx = want[order]
        policy = FrameIndexSampling(indices=tuple(int(i) for i in idx))
        frames, end = [], None
        try:
            for item in self.decoder.frames(
                Source(stream_id="train", uri=path), policy, frame_size(info, short_side), info=info
            ):
                if isinstance(item, Frame):
                    frames.append(np.asarray(item.image))
                elif item.kind == "end":
                    end = item
        except (VideoInputError, ValueError, OSError) as e:
            raise VideoReadError(str(e)) from None
        if len(frames) < len(idx):
            reason = end.details.get("reason") if end is not None else "?"
            if len(frames) < max(1, len(idx) // 2):
                raise VideoReadError(f"{path}: {len(frames)} of {len(idx)} frames decoded ({reason})")
            # a container that over-reports its length: repeat the last frame we got
            frames += [frames[-1]] * (len(idx) - len(frames))
        out = np.empty((len(idx),) + frames[0].shape, dtype=np.uint8)
        out[order] = np.stack(frames[: len(idx)])
        return out
