"""Thumbnails and clips of stored segments, found by segment id only.

A thumbnail is the JPEG captured at ingest (`thumbs` table); a store that predates
capture falls back to decoding the source at the segment's middle (kept in a small
memory cache). A clip is the moment's span of the source (`clips.ClipCache`); a source
that is not a local file (a live feed, or gone) has no clip, only thumbnails.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from vmstream.stages.thumbnails import jpeg_thumbnail

MAX_CLIP_S = 120.0
THUMB_WIDTH = 224


def is_playable(uri: str) -> bool:
    """A clip can be cut from a local, regular file; a live feed (rtsp://, udp://, a
    device, a pipe) or a file that is gone has thumbnails only."""
    return bool(uri) and "://" not in uri and os.path.isfile(uri)


def decode_thumbnail(uri: str, t: float, width: int = THUMB_WIDTH) -> bytes | None:
    """The frame of `uri` at `t` seconds as a JPEG `width` wide, or None."""
    import av

    try:
        with av.open(uri) as inp:
            vs = inp.streams.video[0]
            tb = vs.time_base
            inp.seek(max(0, int(t / tb)), stream=vs, backward=True, any_frame=False)
            best = None
            for frame in inp.decode(vs):
                best = frame
                if frame.pts is not None and float(frame.pts * tb) >= t:
                    break
            if best is None:
                return None
            h = max(2, int(round(best.height * width / best.width)) // 2 * 2)
            return jpeg_thumbnail(best.to_ndarray(width=width, height=h, format="rgb24"))
    except (OSError, ValueError, IndexError, av.FFmpegError):
        return None


class DecodedThumbs:
    """Thumbnails decoded from sources, for stores without captured ones (LRU, bounded)."""

    def __init__(self, max_items: int = 512):
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.max_items = int(max_items)
        self.decoded = 0

    def get(self, uid: int, uri: str, t: float) -> bytes | None:
        with self._lock:
            if uid in self._cache:
                self._cache.move_to_end(uid)
                return self._cache[uid]
        if not is_playable(uri):
            return None
        jpeg = decode_thumbnail(uri, t)
        if jpeg is not None:
            self.decoded += 1
            with self._lock:
                self._cache[uid] = jpeg
                while len(self._cache) > self.max_items:
                    self._cache.popitem(last=False)
        return jpeg
