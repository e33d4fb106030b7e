"""A source with a length is never a live feed: an HLS playlist with #EXT-X-ENDLIST
over http, or a local file sent with "live": true, was replayed forever with
wall-clock times (146 segments of a 4 s video in 150 s), holding a worker slot."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from tests.fixtures.http_files import http_servers  # noqa: F401  (fixture)
from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode.pyav import PyAVDecoder
from vmstream.stages.media import FrameSize, Source
from vmstream.stages.sampling import FpsSampling
from vmstream.stages.sources import source_from_job, source_from_uri

pytestmark = [pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs the ffmpeg CLI"), pytest.mark.timeout(120)]


def read_bounded(src: Source, limit_s: float = 60.0) -> tuple[list, bool]:
    """Everything the decoder gives for `src`, and whether it ended by itself within
    `limit_s` (else it is stopped)."""
    stop = threading.Event()
    items: list = []
    it = PyAVDecoder(live_timeout=3.0).frames(src, FpsSampling(5), FrameSize(32, 32), stop=stop)
    reader = threading.Thread(target=lambda: items.extend(it), daemon=True)
    reader.start()
    reader.join(limit_s)
    ended = not reader.is_alive()
    stop.set()
    reader.join(15)
    return items, ended


def check_read_once(items: list, seconds: float) -> None:
    frames = [i for i in items if isinstance(i, Frame)]
    end = [i for i in items if isinstance(i, StreamEvent) and i.kind == "end"][-1]
    assert end.details["reason"] == "eof", end
    assert end.details.get("reconnects", 0) == 0
    # Once, at 5 fps, in the file's own times (not the wall clock).
    assert seconds * 5 - 2 <= len(frames) <= seconds * 5 + 1
    assert frames[0].t < 2.0 and frames[-1].t - frames[0].t < seconds  # (MPEG-TS starts at 1.4 s)
    assert all(b.t > a.t for a, b in zip(frames, frames[1:]))


def test_a_finished_hls_playlist_over_http_is_read_once(http_servers, h264_ts):
    srv = http_servers("127.0.0.1")
    srv.files["/seg0.ts"] = open(h264_ts, "rb").read()
    srv.files["/list.m3u8"] = (
        b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n"
        b"#EXTINF:4.0,\nseg0.ts\n#EXT-X-ENDLIST\n"
    )
    src = source_from_uri(srv.url("/list.m3u8"))
    assert src.live  # a playlist URL could be a feed: the decoder finds out when it opens it
    t0 = time.monotonic()
    items, ended = read_bounded(src)
    assert ended, f"still reading after {time.monotonic() - t0:.0f}s: replayed as a feed"
    check_read_once(items, 4.0)
    assert srv.hits["/seg0.ts"] == 1


def test_live_true_on_a_local_file_is_a_file(h264_mp4_noaudio):
    assert not source_from_job({"uri": h264_mp4_noaudio, "live": True}).live
    # And the live reader itself, handed a file, reads it once.
    items, ended = read_bounded(Source("f", h264_mp4_noaudio, live=True))
    assert ended
    check_read_once(items, 4.0)
