"""Runs of GOPs on several decoders at once (`gop_pool`) against one decoder in order
and against decoding everything: the same frames, bit for bit, on files where a wrong
run boundary would show (B-pyramids, open GOPs, resumes, seeks)."""

import subprocess
import threading

import av
import numpy as np
import pytest

from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode.container import SKIP_PROBE_DECODE
from vmstream.stages.decode.gop_pool import pool_decoder_threads
from vmstream.stages.decode.packet_filter import H264Inspector
from vmstream.stages.decode.pyav import PyAVDecoder
from vmstream.stages.media import FrameSize
from vmstream.stages.sampling import AllFrames, FpsSampling, TsnSampling, UniformSampling
from vmstream.stages.sources import source_from_uri

SIZE = FrameSize(48, 32)


def encode(path, params, seconds=6, size="192x108"):
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate=30:duration={seconds}",
            "-vf",
            "noise=alls=10:allf=t",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
            "-x264-params",
            params,
            path,
        ],
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def pyramid_mp4(tmp_path_factory):
    """High profile, 3 B-frames with a B-pyramid (reference B pictures), 3 reference
    frames, an IDR every 15 frames: many independent runs."""
    return encode(
        str(tmp_path_factory.mktemp("pool") / "pyramid.mp4"),
        "keyint=15:min-keyint=15:scenecut=0:bframes=3:b-pyramid=normal:ref=3",
    )


def decode(path, policy, *, mode="auto", workers=2, **kw):
    items = list(PyAVDecoder(exact_mode=mode, gop_workers=workers).frames(source_from_uri(path), policy, SIZE, **kw))
    frames = [i for i in items if isinstance(i, Frame)]
    end = items[-1]
    assert isinstance(end, StreamEvent) and end.kind == "end"
    return frames, end


def assert_same_frames(a, b):
    assert [f.t for f in a] == [f.t for f in b]
    assert [f.index for f in a] == [f.index for f in b]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image), f"pixels differ at t={x.t}"


def test_the_fixture_has_reference_b_pictures(pyramid_mp4):
    # A reference picture shown before one decoded earlier is a pyramid's B reference.
    with av.open(pyramid_mp4) as c:
        s = c.streams.video[0]
        ins = H264Inspector(s.codec_context.extradata)
        pics = [(p.pts, ins.inspect(p)) for p in c.demux(s) if p.size]
    shown_early_refs = [
        pts for i, (pts, k) in enumerate(pics) if k.ref and not k.idr and i and pts < max(q for q, _ in pics[:i])
    ]
    assert len(shown_early_refs) >= 10


@pytest.mark.parametrize(
    "policy",
    [AllFrames(), FpsSampling(1), FpsSampling(7.5), UniformSampling(11), TsnSampling(6, train=True, seed=2)],
    ids=lambda p: p.describe(),
)
def test_pool_gives_the_single_decoders_frames_on_a_b_pyramid(pyramid_mp4, policy):
    one, one_end = decode(pyramid_mp4, policy, workers=1)
    many, end = decode(pyramid_mp4, policy, workers=2)
    assert_same_frames(one, many)
    if not isinstance(policy, AllFrames):
        ref, _ = decode(pyramid_mp4, policy, mode="full")
        assert_same_frames(ref, many)
    assert end.details["reason"] == "eof" and end.details["missed_targets"] == 0
    assert end.details["runs"] > 1 and one_end.details["runs"] == 0
    assert end.details["fed"] == one_end.details["fed"]


def test_pool_on_open_gops_and_non_idr_keyframes(tmp_path):
    # Keyframes that are not IDRs never start a run unless the decoder is flushed there.
    p = encode(str(tmp_path / "open.ts"), "keyint=20:bframes=3:open-gop=1:ref=3:scenecut=40", seconds=5)
    for policy in (AllFrames(), FpsSampling(2), TsnSampling(7, train=True, seed=4)):
        ref, _ = decode(p, policy, workers=1)
        got, end = decode(p, policy, workers=3)
        assert_same_frames(ref, got)
        assert end.details["reason"] == "eof"


def test_pool_resumes_and_seeks_like_one_decoder(tmp_path, pyramid_mp4):
    for start in (0.9, 2.5):
        for policy in (AllFrames(), FpsSampling(1)):
            one, _ = decode(pyramid_mp4, policy, workers=1, start_time=start)
            many, _ = decode(pyramid_mp4, policy, workers=2, start_time=start)
            assert_same_frames(one, many)
            assert many and many[0].t >= start - 1e-6
    long = encode(str(tmp_path / "long.mp4"), "keyint=30:min-keyint=30:scenecut=0:bframes=3", seconds=30, size="128x72")
    ref, _ = decode(long, UniformSampling(4), mode="full")
    got, end = decode(long, UniformSampling(4), workers=2)
    assert_same_frames(ref, got)
    assert end.details["seeks"] >= 2 and end.details["runs"] >= 3


def test_stopping_and_closing_release_the_workers(pyramid_mp4):
    before = threading.active_count()
    it = PyAVDecoder().frames(source_from_uri(pyramid_mp4), AllFrames(), SIZE)
    assert isinstance(next(it), Frame)
    assert threading.active_count() > before  # the pool's decoders are running
    it.close()
    assert threading.active_count() == before
    stop = threading.Event()
    it = PyAVDecoder().frames(source_from_uri(pyramid_mp4), FpsSampling(5), SIZE, stop=stop)
    next(it)
    stop.set()
    rest = list(it)
    assert rest[-1].details["reason"] == "stopped"
    assert threading.active_count() == before


def test_gop_workers_is_checked():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="gop_workers"):
            PyAVDecoder(gop_workers=bad)


def test_a_pool_decoder_that_cannot_open_fails_the_caller_with_the_input_named(pyramid_mp4, tmp_path):
    from vmstream.stages.decode.container import FrameConverter, open_input
    from vmstream.stages.decode.gop_pool import GopPool, RunCounts
    from vmstream.stages.media import InputNotFoundError

    missing = str(tmp_path / "gone.mp4")
    pool = GopPool(lambda: (open_input(missing), None), lambda: FrameConverter(SIZE), RunCounts(), workers=2)
    try:
        with av.open(pyramid_mp4) as c:
            s = c.streams.video[0]
            packets = [p for _, p in zip(range(15), c.demux(s))]
            with pytest.raises(InputNotFoundError, match="gone.mp4"):
                list(pool.submit(packets, None))
                list(pool.finish())
    finally:
        pool.close()


@pytest.mark.parametrize(
    "fmt,codec",
    [
        ("mp4", ["-c:v", "libx264", "-c:a", "aac"]),
        ("ts", ["-c:v", "libx264", "-c:a", "aac"]),
        ("webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus"]),
    ],
)
def test_an_open_that_skips_the_probe_decode_decodes_the_same(tmp_path, fmt, codec):
    """SKIP_PROBE_DECODE (the decode opens of a file already probed) leaves the stream's
    decoder as a plain open gives it: the same pictures, formats, colours and audio."""
    path = str(tmp_path / f"clip.{fmt}")
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=96x64:rate=25:duration=1",
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=1",
            "-pix_fmt",
            "yuv420p",
            "-color_range",
            "tv",
            "-colorspace",
            "bt709",
            *codec,
            path,
        ],
        check=True,
    )

    def everything(options):
        with av.open(path, options=options) as c:
            frames = [
                (f.pts, f.format.name, f.color_range, f.colorspace, f.to_ndarray().tobytes()) for f in c.decode(video=0)
            ]
        with av.open(path, options=options) as c:
            audio = [(f.pts, f.format.name, f.layout.name, f.to_ndarray().tobytes()) for f in c.decode(audio=0)]
        return frames, audio

    plain, skipped = everything({}), everything(dict(SKIP_PROBE_DECODE))
    assert len(plain[0]) == 25 and plain[1]
    assert skipped == plain


def test_pool_workers_share_the_cores_unless_told():
    assert pool_decoder_threads(0, 2, cores=2) == 1
    assert pool_decoder_threads(0, 2, cores=16) == 8
    assert pool_decoder_threads(0, 3, cores=2) == 1
    assert pool_decoder_threads(4, 2, cores=2) == 4  # an explicit setting is kept
