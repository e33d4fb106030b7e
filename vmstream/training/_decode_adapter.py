"""TEMPORARY adapter: read chosen frame indices of a video file with PyAV.

The project's decoder (`vmstream.stages.decode`, PyAV and DALI backends behind one
interface) is being written; until its PyAV backend lands, the training datasets read
frames through this one function. It will be replaced by a call into the decoder
(`Decoder.probe` + `frames` with an index-based policy) and deleted; keep it small.
"""
from __future__ import annotations

import os

import av
import numpy as np


class VideoReadError(RuntimeError):
    """A video that cannot be read (missing, corrupt, no video track, too short)."""


def probe_frames(path: str) -> tuple[int, float]:
    """(frame count, fps) of `path`'s first video stream."""
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file")
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
            n = int(s.frames or 0)
            if n <= 0:
                dur = float(s.duration * s.time_base) if s.duration else (
                    c.duration / 1e6 if c.duration else 0.0)
                n = int(round(dur * fps))
            if n <= 0:
                raise VideoReadError(f"{path}: cannot tell the number of frames")
            return n, fps
    except av.error.FFmpegError as e:
        raise VideoReadError(f"{path}: cannot open ({e})") from None


def read_frames(path: str, indices, short_side: int | None = None) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] frames at the given 0-based decode-order indices
    (repeats allowed), resized by libswscale so the short side is `short_side`."""
    idx = np.asarray(indices, dtype=np.int64)
    want = {int(i) for i in idx}
    last = int(idx.max())
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            size = None
            for k, frame in enumerate(c.decode(s)):
                if k in want:
                    if size is None:
                        w, h = frame.width, frame.height
                        if short_side:
                            sc = short_side / min(w, h)
                            size = (max(1, int(round(w * sc))), max(1, int(round(h * sc))))
                        else:
                            size = (w, h)
                    got[k] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                if k >= last:
                    break
    except (av.error.FFmpegError, IndexError) as e:
        raise VideoReadError(f"{path}: decode failed ({e})") from None
    if not got:
        raise VideoReadError(f"{path}: no frames decoded")
    # A container that over-reports its length: take the last decoded frame instead.
    have = sorted(got)
    if len(have) < len(want) / 2:
        raise VideoReadError(f"{path}: only {len(have)} of {len(want)} wanted frames decoded (truncated?)")
    out = [got[i] if i in got else got[have[-1] if i > have[-1] else min(have, key=lambda j: abs(j - i))]
           for i in idx.tolist()]
    return np.stack(out)
