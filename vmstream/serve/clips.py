"""Cutting a moment out of its source as a clip a browser plays.

H.264 sources are cut by stream copy (no re-encode: the packets from the keyframe at or
before the start to the first keyframe after the end, remuxed into MP4 with the index
first). Any other codec is transcoded (PyAV's libx264, at most `max_height` lines,
from the start to the end exactly). Either way the caller learns `clip_start`, the
source time of the clip's first frame, so a player can seek to the moment's start.

`ClipCache` keeps the cut clips on disk under a bounded total size (least recently used
go first); names are made of segment ids only, never of anything a request sent.
"""

from __future__ import annotations

import json
import os
import threading
from fractions import Fraction
from pathlib import Path

BROWSER_CODECS = ("h264",)  # in MP4: what every browser plays (VP9/AV1 would need WebM)


def cut_copy(src: str, start: float, end: float, dest: Path) -> float:
    """Stream-copy the H.264 packets covering [start, end] into `dest` (MP4); returns
    the source time of the clip's first frame."""
    import av

    with av.open(src) as inp:
        vs = inp.streams.video[0]
        tb = vs.time_base
        inp.seek(max(0, int(start / tb)), stream=vs, backward=True, any_frame=False)
        with av.open(str(dest), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            ost = out.add_stream_from_template(vs)
            base_dts = base_pts = None
            for pkt in inp.demux(vs):
                if pkt.dts is None or pkt.pts is None:
                    continue
                if base_dts is None:
                    if not pkt.is_keyframe:
                        continue
                    base_dts, base_pts = pkt.dts, pkt.pts
                if pkt.is_keyframe and pkt.pts > base_pts and float(pkt.pts * tb) > end:
                    break
                pkt.dts -= base_dts
                pkt.pts -= base_dts
                pkt.stream = ost
                out.mux(pkt)
            if base_dts is None:
                raise ValueError(f"no keyframe at or after {start:.2f} s")
    return float(base_pts * tb)


def cut_transcode(src: str, start: float, end: float, dest: Path, max_height: int = 360) -> float:
    """Decode [start, end] and encode it small in H.264/MP4; the clip starts at `start`."""
    import av

    with av.open(src) as inp:
        vs = inp.streams.video[0]
        tb = vs.time_base
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        inp.seek(max(0, int(start / tb)), stream=vs, backward=True, any_frame=False)
        with av.open(str(dest), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            ost = None
            n = 0
            for frame in inp.decode(vs):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb)
                if t < start - 1e-3:
                    continue
                if t > end:
                    break
                if ost is None:
                    h = min(max_height, frame.height) // 2 * 2
                    w = max(2, int(round(frame.width * h / frame.height)) // 2 * 2)
                    ost = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "30"})
                    ost.width, ost.height, ost.pix_fmt = w, h, "yuv420p"
                small = frame.reformat(width=ost.width, height=ost.height, format="yuv420p")
                small.pts = n
                small.time_base = Fraction(1) / rate
                n += 1
                for p in ost.encode(small):
                    out.mux(p)
            if ost is None:
                raise ValueError(f"no frames between {start:.2f} and {end:.2f} s")
            for p in ost.encode(None):
                out.mux(p)
    return float(start)


def source_codec(src: str) -> str:
    import av

    with av.open(src) as inp:
        return inp.streams.video[0].codec_context.name


class ClipCache:
    def __init__(self, directory: Path, max_bytes: int = 512 << 20, max_parallel: int = 2):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_parallel)
        self.made = 0
        self.hits = 0

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def get(self, name: str, src: str, start: float, end: float, *, wait_s: float = 30.0) -> tuple[Path, dict]:
        """(clip file, its info {clip_start, mode}) for the span of `src`; cut once.
        TimeoutError when every cutting slot stays busy for `wait_s`."""
        path, meta = self.directory / f"{name}.mp4", self.directory / f"{name}.json"
        with self._lock(name):
            if path.exists() and meta.exists():
                self.hits += 1
                os.utime(path)
                return path, json.loads(meta.read_text())
            if not self._slots.acquire(timeout=wait_s):
                raise TimeoutError("every clip cutter is busy")
            try:
                tmp = self.directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp.mp4"
                try:
                    codec = source_codec(src)
                    if codec in BROWSER_CODECS:
                        clip_start, mode = cut_copy(src, start, end, tmp), "copy"
                    else:
                        clip_start, mode = cut_transcode(src, start, end, tmp), "transcode"
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
            finally:
                self._slots.release()
            info = {"clip_start": clip_start, "mode": mode, "codec": codec}
            meta.write_text(json.dumps(info))
            self.made += 1
        self._evict(keep=path)
        return path, info

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*.mp4"))

    def _evict(self, keep: Path | None = None) -> None:
        files = []
        for p in self.directory.glob("*.mp4"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
            total -= size
