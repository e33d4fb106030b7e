"""Live sources: a real ffmpeg MPEG-TS server on 127.0.0.1 that we kill and restart."""

import os
import random
import shutil
import socket
import subprocess
import threading
import time

import pytest

from vmstream.records import Frame, Segment, StreamEvent
from vmstream.stages.decode.live import ReconnectPolicy, WallClock
from vmstream.stages.decode.pyav import PyAVDecoder
from vmstream.stages.media import FrameSize
from vmstream.stages.sampling import AllFrames, FpsSampling, UniformSampling
from vmstream.stages.segmenter import Segmenter
from vmstream.stages.sources import source_from_job

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs the ffmpeg CLI")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TsServer:
    """`ffmpeg -re` serving an endless test pattern as MPEG-TS on tcp://127.0.0.1:port."""

    def __init__(self, port: int):
        self.port = port
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        self.procs.append(
            subprocess.Popen(
                [
                    "ffmpeg",
                    "-nostdin",
                    "-loglevel",
                    "error",
                    "-re",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=160x96:rate=25",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-tune",
                    "zerolatency",
                    "-g",
                    "25",
                    "-f",
                    "mpegts",
                    f"tcp://127.0.0.1:{self.port}?listen=1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def ts_server():
    srv = TsServer(free_port())
    yield srv
    srv.kill()


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_reconnects_after_the_feed_drops_and_reports_the_gap(ts_server):
    ts_server.start()
    src = source_from_job(
        {
            "stream_id": "cam-test",
            "uri": f"tcp://127.0.0.1:{ts_server.port}",
            "options": {"reconnect": {"initial": 0.2, "max_delay": 0.5, "give_up_after": 20}, "timeout": 3},
        }
    )
    assert src.live
    stop = threading.Event()
    items: list = []
    it = PyAVDecoder().frames(src, FpsSampling(10), FrameSize(32, 32), stop=stop)
    reader = threading.Thread(target=lambda: items.extend(it), daemon=True)
    reader.start()
    try:
        n_frames = lambda: sum(isinstance(i, Frame) for i in list(items))  # noqa: E731
        wait_for(lambda: n_frames() >= 5, 20, "the first frames")
        ts_server.kill()  # the camera goes away mid-stream
        time.sleep(1.0)
        before = n_frames()
        ts_server.start()  # and comes back on the same address
        wait_for(lambda: n_frames() >= before + 5, 20, "frames after the reconnect")
    finally:
        stop.set()
        reader.join(timeout=15)
    assert not reader.is_alive()
    frames = [i for i in items if isinstance(i, Frame)]
    events = [i for i in items if isinstance(i, StreamEvent)]
    assert {f.stream_id for f in frames} == {"cam-test"}
    ts = [f.t for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:])), "timestamps must be monotonic"
    assert abs(ts[-1] - time.time()) < 10  # wall clock
    gaps = [e for e in events if e.kind == "gap"]
    assert len(gaps) == 1
    g = gaps[0]
    assert g.t_end - g.t_start >= 0.9  # at least the second we were down
    resumed = [f for f in frames if f.gap is not None]
    assert len(resumed) == 1 and resumed[0].gap == (g.t_start, g.t_end)
    assert resumed[0].t == g.t_end and frames[frames.index(resumed[0]) - 1].t == g.t_start
    end = events[-1]
    assert end.kind == "end" and end.details["reason"] == "stopped"
    assert end.details["reconnects"] >= 1 and end.details["frames"] == len(frames)
    # The segmenter carries the gap into the segment that follows it.
    segs = [s for s in Segmenter(4).segments(items) if isinstance(s, Segment)]
    assert sum(len(s.gaps) for s in segs) == 1
    assert {s.stream_id for s in segs} == {"cam-test"}


def test_gives_up_when_the_feed_never_comes_back():
    src = source_from_job(
        {
            "stream_id": "dead",
            "uri": f"tcp://127.0.0.1:{free_port()}",
            "options": {"reconnect": {"initial": 0.05, "max_delay": 0.1, "max_tries": 3}, "timeout": 1},
        }
    )
    t0 = time.monotonic()
    items = list(PyAVDecoder().frames(src, AllFrames(), FrameSize(32, 32)))
    assert time.monotonic() - t0 < 10
    assert not any(isinstance(i, Frame) for i in items)
    end = items[-1]
    assert end.kind == "end" and end.details["reason"] == "gave_up"
    assert end.details["attempts"] == 3 and "Connection refused" in end.message


def test_live_streams_refuse_length_based_sampling():
    src = source_from_job({"uri": "tcp://127.0.0.1:9"})
    with pytest.raises(ValueError, match="live"):
        PyAVDecoder().frames(src, UniformSampling(8), FrameSize(32, 32))


def test_backoff_is_exponential_bounded_and_validated():
    d = ReconnectPolicy(initial=0.5, max_delay=4, factor=2, jitter=0).delays()
    assert [next(d) for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    j = ReconnectPolicy(initial=1, max_delay=1, jitter=0.1).delays(random.Random(1))
    assert all(0.9 <= next(j) <= 1.1 for _ in range(50))
    for bad in (
        dict(initial=0),
        dict(initial=2, max_delay=1),
        dict(factor=0.5),
        dict(jitter=1),
        dict(max_tries=-1),
        dict(give_up_after=0),
        dict(initial="1"),
    ):
        with pytest.raises(ValueError):
            ReconnectPolicy(**bad)


def test_wall_clock_is_smooth_monotonic_and_re_anchors():
    now = [1000.0]
    clock = WallClock(max_drift=2.0, now=lambda: now[0])
    assert clock(5.0) == 1000.0
    now[0] = 1000.3  # network jitter: the stream clock decides the spacing
    assert clock(5.04) == pytest.approx(1000.04)
    assert clock(4.0) > 1000.04  # a backwards stream time never goes back
    now[0] = 1010.0  # the feed stalled: drifted past 2 s, re-anchor on the real clock
    assert clock(5.2) == 1010.0
    clock.reset()  # a reconnect: the new connection's clock starts over
    now[0] = 1011.0
    assert clock(0.0) == 1011.0


def test_a_pipe_source_ends_when_the_pipe_closes(h264_ts):
    code = (
        "from vmstream.stages.decode.pyav import PyAVDecoder\n"
        "from vmstream.stages.decode.base import FrameSize\n"
        "from vmstream.stages.sampling import AllFrames\n"
        "from vmstream.stages.sources import resolve_sources\n"
        "(src,) = resolve_sources(['pipe:0'])\n"
        "assert src.live\n"
        "items = list(PyAVDecoder().frames(src, AllFrames(), FrameSize(32, 32)))\n"
        "print(len(items) - 1, items[-1].details['reason'])\n"
    )
    import sys

    with open(h264_ts, "rb") as f:
        r = subprocess.run(
            [sys.executable, "-c", code],
            stdin=f,
            capture_output=True,
            timeout=60,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    n, reason = r.stdout.decode().split()
    assert int(n) == 100 and reason == "eof"
