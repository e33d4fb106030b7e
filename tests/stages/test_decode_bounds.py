"""Inputs that are not what they claim: a declared frame size over the bound is refused
when probed (naming the size and the bound), and a file that yields no frame at all is
a failed stream."""

import pytest

from tests.fixtures.media import make_video
from vmstream.records import StreamEvent
from vmstream.stages.decode.base import FrameSize
from vmstream.stages.decode.frame_bound import MAX_FRAME_PIXELS, FrameTooLargeError, y4m_frame_size
from vmstream.stages.decode.pyav import PyAVDecoder
from vmstream.stages.sampling import FpsSampling
from vmstream.stages.sources import source_from_uri

SMALL = FrameSize(32, 32)


def write_y4m_header(path, width, height, payload=100_000):
    """A raw YUV file that declares `width`x`height` and holds part of one frame."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode())
        f.write(b"FRAME\n" + b"\x80" * payload)
    return str(path)


@pytest.mark.parametrize("size", [(60000, 60000), (16000, 16000), (8193, 8192)])
def test_a_declared_frame_size_over_the_bound_is_refused_at_probe(tmp_path, size):
    path = write_y4m_header(tmp_path / "big.y4m", *size)
    assert y4m_frame_size(path) == size
    with pytest.raises(FrameTooLargeError) as e:
        PyAVDecoder().probe(path)
    msg = str(e.value)
    w, h = size
    assert msg.startswith(f"{path}: the video declares frames of {w}x{h} ")
    assert f"over the bound of {MAX_FRAME_PIXELS} pixels" in msg and "decode.max_frame_pixels" in msg
    assert "busy" not in msg and e.value.reason == "frame_too_large"


def test_the_bound_is_configurable_and_applies_to_any_container(tmp_path):
    ok = write_y4m_header(tmp_path / "ok.y4m", 64, 48, payload=64 * 48 * 3 // 2)
    assert PyAVDecoder().probe(ok).width == 64  # under the default bound
    mp4 = make_video(str(tmp_path / "v.mp4"), seconds=1)
    info = PyAVDecoder().probe(mp4)
    bound = info.width * info.height - 1
    with pytest.raises(FrameTooLargeError, match=f"over the bound of {bound} pixels"):
        PyAVDecoder(max_frame_pixels=bound).probe(mp4)
    assert PyAVDecoder(max_frame_pixels=bound + 1).probe(mp4).width == info.width
    with pytest.raises(ValueError, match="max_frame_pixels"):
        PyAVDecoder(max_frame_pixels=0)


def _no_frame_webm(tmp_path) -> str:
    """A webm whose header (and its video track) is whole, cut inside its first cluster."""
    src = make_video(str(tmp_path / "src.webm"), codec="vp9", seconds=1)
    data = open(src, "rb").read()
    cluster = data.find(bytes.fromhex("1F43B675"))
    assert cluster > 0
    out = tmp_path / "noframes.webm"
    out.write_bytes(data[: cluster + 40])
    return str(out)


def test_a_file_that_yields_no_frame_is_a_failed_stream(tmp_path):
    path = _no_frame_webm(tmp_path)
    dec = PyAVDecoder()
    items = list(dec.frames(source_from_uri(path), FpsSampling(4), SMALL))
    assert len(items) == 1 and isinstance(items[0], StreamEvent)
    end = items[0]
    assert end.kind == "end" and end.details["reason"] == "error" and end.details["frames"] == 0
    assert end.message.startswith("no frame could be decoded")


def test_a_resumed_stream_with_nothing_left_still_ends_eof(tmp_path):
    path = make_video(str(tmp_path / "v.mp4"), seconds=1)
    items = list(PyAVDecoder().frames(source_from_uri(path), FpsSampling(4), SMALL, start_time=5.0))
    assert [i.kind for i in items] == ["end"] and items[0].details["reason"] == "eof"


def test_a_file_cut_inside_its_header_says_so(tmp_path):
    from vmstream.stages.decode.base import NotAVideoError

    src = make_video(str(tmp_path / "src.webm"), codec="vp9", seconds=1)
    data = open(src, "rb").read()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: data.find(bytes.fromhex("1F43B675"))])  # the header, no cluster
    with pytest.raises(NotAVideoError, match="the data ends before FFmpeg could read the container's header"):
        PyAVDecoder().probe(str(cut))
