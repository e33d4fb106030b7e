"""The DALI decoder backend on DALI's CPU variant (VP9 / MJPEG), held to PyAV.

Videos are made here with ffmpeg. The reference for every frame is PyAV itself: the
frame decoded by FFmpeg, scaled by libswscale to the same size and centre-cropped (what
the PyAV backend does), and its presentation time. DALI converts YUV to RGB and resizes
with its own kernels, so pixels agree to within a few levels, not exactly; a wrong
frame would differ by much more, which each test checks against the neighbours.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading

import av
import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (pip install 'vmstream[dali]')")
if shutil.which("ffmpeg") is None:
    pytest.skip("needs the ffmpeg CLI to make test videos", allow_module_level=True)

from vmstream.stages.decode import make_decoder  # noqa: E402
from vmstream.stages.decode.base import (  # noqa: E402
    FrameSize,
    InputNotFoundError,
    NotAVideoError,
    NoVideoTrackError,
    UnsupportedVideoError,
)
from vmstream.stages.decode.dali import DALIDecoder, _cuda_device, index_file, select_frames  # noqa: E402

# The DALI backend probes and indexes with the PyAV backend's helpers.
PyAVDecoder = pytest.importorskip("vmstream.stages.decode.pyav", reason="needs the PyAV backend").PyAVDecoder
from vmstream.stages.sampling import (  # noqa: E402
    AllFrames,
    FpsSampling,
    TsnSampling,
    UniformSampling,
    frames_for_targets,
)
from vmstream.stages.sources import Source, source_from_uri  # noqa: E402

pytestmark = pytest.mark.dali
NO_GPU = _cuda_device() is None


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("dali_media")
    v = {}
    src = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3"]
    v["vp9"] = str(d / "a.webm")  # 75 frames, keyframe every 25
    _ffmpeg(
        *src,
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "400k",
        "-g",
        "25",
        "-pix_fmt",
        "yuv420p",
        v["vp9"],
    )
    v["mjpeg"] = str(d / "a.mkv")
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=10:duration=2",
        "-c:v",
        "mjpeg",
        "-q:v",
        "3",
        "-pix_fmt",
        "yuvj420p",
        v["mjpeg"],
    )
    # MJPEG in MOV whose display matrix asks for a 90 degree clockwise turn (written with
    # PyAV: the ffmpeg CLI here cannot set one).
    mj = str(d / "plain.mov")
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=10:duration=1",
        "-c:v",
        "mjpeg",
        "-q:v",
        "3",
        "-pix_fmt",
        "yuvj420p",
        mj,
    )
    v["rotated"] = str(d / "rotated.mov")
    with av.open(mj) as src, av.open(v["rotated"], "w") as out:
        st = out.add_stream("mjpeg", rate=10)
        st.width, st.height, st.pix_fmt = 320, 240, "yuvj420p"
        st.set_display_rotation(-90)  # counter-clockwise degrees, as FFmpeg stores them
        for f in src.decode(video=0):
            for pkt in st.encode(f):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    v["h264"] = str(d / "a.mp4")
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25:duration=1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        v["h264"],
    )
    v["audio_only"] = str(d / "sound.webm")
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "libopus", v["audio_only"])
    v["text"] = str(d / "notes.webm")
    with open(v["text"], "w") as f:
        f.write("not a video\n" * 100)
    data = open(v["vp9"], "rb").read()
    v["cut"] = str(d / "cut.webm")
    with open(v["cut"], "wb") as f:
        f.write(data[: len(data) // 2])
    return v


def _pyav_reference(path: str, size: FrameSize):
    """Every frame as PyAV + swscale make it at `size`, its presentation time and
    whether it is a keyframe."""
    with av.open(path) as c:
        cc = c.streams.video[0].codec_context
        sw, sh = size.scaled_size(cc.width, cc.height)
    x0, y0 = size.crop_box(sw, sh)
    imgs, times, keys = [], [], []
    with av.open(path) as c:
        for f in c.decode(video=0):
            img = f.reformat(width=sw, height=sh, format="rgb24", interpolation=size.interpolation).to_ndarray()
            imgs.append(img[y0 : y0 + size.height, x0 : x0 + size.width])
            times.append(float(f.time))
            keys.append(bool(f.key_frame))
    return imgs, np.asarray(times), np.asarray(keys)


def _run(dec, path, policy, size=FrameSize(224, 224), **kw):
    items = list(dec.frames(source_from_uri(path), policy, size, **kw))
    assert items[-1].kind == "end" and all(getattr(i, "kind", None) != "end" for i in items[:-1])
    return items[:-1], items[-1]


def _mad(a, b) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def _assert_same_frames(frames, ref_imgs, ref_times, want_idx, limit):
    assert [f.index for f in frames] == list(range(len(frames)))  # the ordinal handed out
    np.testing.assert_array_equal([f.t for f in frames], ref_times[want_idx])
    for f, i in zip(frames, want_idx):
        assert f.image.dtype == np.uint8 and f.image.shape == ref_imgs[0].shape
        d = _mad(f.image, ref_imgs[i])
        assert d < limit, (i, d)
        # And it is that frame, not a neighbour.
        near = [
            j for j in range(i - 2, i + 3) if 0 <= j < len(ref_imgs) and j != i and _mad(ref_imgs[j], ref_imgs[i]) > 0
        ]
        assert all(d < _mad(f.image, ref_imgs[j]) for j in near), i


@pytest.fixture(scope="module")
def dec():
    d = DALIDecoder(device="cpu", fallback=False)
    yield d
    d.close()


def test_index_is_the_decoded_presentation_times(vids):
    for kind in ("vp9", "mjpeg"):
        index = index_file(vids[kind])
        with av.open(vids[kind]) as c:
            decoded = [float(f.time) for f in c.decode(video=0)]
        np.testing.assert_array_equal(index.times, decoded)
        assert not index.truncated and index.rotation == 0
        assert index.keyframe[0]


POLICIES = [
    AllFrames(),
    FpsSampling(3.0),
    FpsSampling(40.0),  # faster than the video: each frame once
    UniformSampling(8),
    TsnSampling(5),
    TsnSampling(5, train=True, seed=7),
    AllFrames(keyframes_only=True),
    FpsSampling(2.0, keyframes_only=True),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.describe().replace(" ", "_"))
def test_vp9_frames_and_times_match_pyav(vids, dec, policy):
    size = FrameSize(224, 224)
    ref_imgs, ref_times, ref_keys = _pyav_reference(vids["vp9"], size)
    frames, end = _run(dec, vids["vp9"], policy, size)
    # The shared rule (frame on screen at each target), on what PyAV decoded.
    info = dec.probe(vids["vp9"])
    candidates = np.flatnonzero(ref_keys) if policy.keyframes_only else np.arange(len(ref_times))
    targets = policy.target_times(info, None)
    if targets is None:
        want = candidates
    else:
        if not isinstance(targets, np.ndarray):  # fps: endless, ends with the video
            targets = np.asarray([t for t in targets if t < ref_times[-1] + 1 / 25 - 1e-6])
        want = candidates[frames_for_targets(ref_times[candidates], targets)]
        if not type(policy).repeats:
            want = np.unique(want)
    assert len(want) > 2
    _assert_same_frames(frames, ref_imgs, ref_times, want, limit=3.0)
    assert end.details["reason"] == "eof" and end.details["frames"] == len(frames)


def test_mjpeg_and_other_sizes(vids, dec):
    for size, limit in ((FrameSize(112, 160, mode="direct"), 6.0), (FrameSize(256, 256, interpolation="BICUBIC"), 3.0)):
        ref_imgs, ref_times, _ = _pyav_reference(vids["mjpeg"], size)
        frames, end = _run(dec, vids["mjpeg"], AllFrames(), size)
        assert frames[0].image.shape == (size.height, size.width, 3)
        _assert_same_frames(frames, ref_imgs, ref_times, np.arange(len(ref_times)), limit=limit)


def test_chunking_does_not_change_frames(vids):
    a, _ = _run(DALIDecoder(device="cpu", chunk_frames=16), vids["vp9"], FpsSampling(7.0))
    b, _ = _run(DALIDecoder(device="cpu", chunk_frames=5), vids["vp9"], FpsSampling(7.0))
    assert [f.t for f in a] == [f.t for f in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)


def test_start_time_resumes_without_earlier_frames(vids, dec):
    full, _ = _run(dec, vids["vp9"], FpsSampling(5.0))
    t_resume = full[6].t
    tail, _ = _run(dec, vids["vp9"], FpsSampling(5.0), start_time=t_resume)
    assert [f.t for f in tail] == [f.t for f in full[6:]]
    assert [f.index for f in tail] == list(range(len(tail)))
    np.testing.assert_array_equal(tail[0].image, full[6].image)


def test_stop_event_ends_with_reason_stopped(vids):
    stop = threading.Event()
    it = DALIDecoder(device="cpu", chunk_frames=8).frames(
        source_from_uri(vids["vp9"]), AllFrames(), FrameSize(224, 224), stop=stop
    )
    first = next(it)
    stop.set()
    rest = list(it)
    assert first.index == 0 and rest[-1].kind == "end" and rest[-1].details["reason"] == "stopped"
    assert len(rest) - 1 < 74


def test_truncated_file_ends_with_reason_truncated(vids, dec):
    frames, end = _run(dec, vids["cut"], AllFrames())
    assert 0 < len(frames) < 75
    assert end.details["reason"] == "truncated" and end.details["frames"] == len(frames)
    assert "header" in end.message or "stopped" in end.message


def test_bad_inputs_fail_up_front_naming_the_input(vids, dec, tmp_path):
    missing = str(tmp_path / "nope.webm")
    for path, err in (
        (missing, InputNotFoundError),
        (vids["text"], NotAVideoError),
        (vids["audio_only"], NoVideoTrackError),
    ):
        with pytest.raises(err) as e:
            dec.frames(source_from_uri(path), AllFrames(), FrameSize(224, 224))  # raises at the call
        assert path in str(e.value)


@pytest.mark.skipif(not NO_GPU, reason="with a GPU, NVDEC decodes H.264")
def test_h264_without_gpu_is_refused_naming_file_and_codec(vids, dec):
    with pytest.raises(UnsupportedVideoError) as e:
        dec.frames(source_from_uri(vids["h264"]), AllFrames(), FrameSize(224, 224))
    assert vids["h264"] in str(e.value) and "h264" in str(e.value)
    assert not dec.supports(dec.probe(vids["h264"]))


def test_live_sources_are_refused_without_fallback(dec):
    src = Source(stream_id="cam", uri="tcp://127.0.0.1:9/live", live=True)
    with pytest.raises(UnsupportedVideoError, match="local files"):
        dec.frames(src, FpsSampling(1.0), FrameSize(224, 224))


@pytest.mark.skipif(not NO_GPU, reason="with a GPU, NVDEC decodes H.264")
def test_h264_falls_back_to_pyav_with_a_log_line(vids, caplog):
    with caplog.at_level(logging.INFO, logger="vmstream.stages.decode.dali"):
        frames, end = _run(DALIDecoder(device="cpu"), vids["h264"], FpsSampling(5.0))
    assert len(frames) == 5 and end.details["reason"] == "eof"
    assert any("PyAV" in r.getMessage() and "h264" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "policy,start",
    [
        (AllFrames(), 0.0),
        (FpsSampling(4.0), 0.0),
        (FpsSampling(3.0), 1.3),
        (UniformSampling(16), 0.0),
        (TsnSampling(8, train=True, seed=1), 0.0),
        (FpsSampling(2.0, keyframes_only=True), 0.0),
    ],
    ids=lambda x: x.describe().replace(" ", "_") if hasattr(x, "describe") else f"start{x}",
)
def test_same_as_the_pyav_backend(vids, dec, policy, start):
    """Both backends, same VP9 file and policy: the same timestamps, frames within
    resize and colour-conversion differences."""
    size = FrameSize(224, 224)
    a, ea = _run(dec, vids["vp9"], policy, size, start_time=start)
    b, eb = _run(PyAVDecoder(), vids["vp9"], policy, size, start_time=start)
    assert len(a) > 2
    assert [f.t for f in a] == [f.t for f in b]
    assert [f.index for f in a] == [f.index for f in b]
    diffs = [_mad(x.image, np.asarray(y.image)) for x, y in zip(a, b)]
    assert max(diffs) < 3.0, diffs
    assert ea.details["frames"] == eb.details["frames"] and ea.details["reason"] == eb.details["reason"] == "eof"


def test_select_frames_never_returns_past_the_end(vids, dec):
    info, index = dec.probe(vids["vp9"]), index_file(vids["vp9"])
    idx = select_frames(index, info, FpsSampling(1.0))
    assert idx.tolist() == [0, 25, 50]
    assert select_frames(index, info, UniformSampling(100)).size == 100  # repeats kept


def test_factory_gives_dali_and_rejects_bad_options():
    assert isinstance(make_decoder("dali", device="cpu"), DALIDecoder)
    # the config always names gop_workers (PyAV's GOP pool); DALI is built without it
    assert isinstance(make_decoder("dali", gop_workers=2, device="cpu"), DALIDecoder)
    with pytest.raises(ValueError, match="chunk_frames"):
        DALIDecoder(chunk_frames=0)
    with pytest.raises(ValueError, match="device"):
        DALIDecoder(device="tpu")
    if NO_GPU:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            DALIDecoder(device="gpu")


def test_normalize_in_the_pipeline_matches_normalizing_the_uint8_frames(vids):
    from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD

    a, _ = _run(DALIDecoder(device="cpu"), vids["vp9"], UniformSampling(4))
    b, _ = _run(DALIDecoder(device="cpu", normalize=True), vids["vp9"], UniformSampling(4))
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    for x, y in zip(a, b):
        assert y.image.dtype == np.float32 and y.image.shape == (3, 224, 224)
        want = (x.image.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean) / std
        np.testing.assert_allclose(y.image, want, atol=1e-4)


def test_display_rotation_is_applied(vids, dec):
    assert index_file(vids["rotated"]).rotation == 90
    display = (240, 320)
    size = FrameSize(224, 160)  # portrait, like the displayed video
    frames, _ = _run(dec, vids["rotated"], AllFrames(), size)
    sw, sh = size.scaled_size(*display)
    x0, y0 = size.crop_box(sw, sh)
    ref = []
    with av.open(vids["rotated"]) as c:
        for f in c.decode(video=0):
            turned = np.ascontiguousarray(np.rot90(f.to_ndarray(format="rgb24"), k=-1))  # clockwise
            img = (
                av.VideoFrame.from_ndarray(turned, format="rgb24")
                .reformat(width=sw, height=sh, interpolation="BILINEAR")
                .to_ndarray()
            )
            ref.append(img[y0 : y0 + size.height, x0 : x0 + size.width])
    assert len(frames) == len(ref) == 10
    for f, i in zip(frames, range(10)):
        assert f.image.shape == (224, 160, 3)
        assert _mad(f.image, ref[i]) < 3.0
