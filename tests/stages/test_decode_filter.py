"""The H.264 packet filter's pure parts: NAL header reading and GOP planning."""

import av
import pytest

from vmstream.stages.decode.packet_filter import H264Inspector, PictureKind, feed_mask, wanted_in_window

AVCC_EXTRADATA = bytes([1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0, 0])  # lengthSizeMinusOne = 3


def avcc(*nals: bytes) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def annexb(*nals: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


SEI = bytes([0x06, 0x05, 0x10]) + b"\x00" * 16
IDR = bytes([0x65, 0x88, 0x84])  # nal_ref_idc 3, type 5
P_REF = bytes([0x41, 0x9A, 0x00])  # nal_ref_idc 2, type 1
B_NONREF = bytes([0x01, 0x9E, 0x00])  # nal_ref_idc 0, type 1
AUD = bytes([0x09, 0xF0])


def test_reads_avcc_and_annexb_framing():
    a = H264Inspector(AVCC_EXTRADATA)
    assert a.framing == "avcc" and a.length_size == 4
    assert a.inspect(avcc(SEI, IDR)) == PictureKind(ref=True, idr=True)
    assert a.inspect(avcc(SEI, P_REF)) == PictureKind(ref=True, idr=False)
    assert a.inspect(avcc(B_NONREF)) == PictureKind(ref=False, idr=False)
    assert a.inspect(avcc(SEI)) is None  # no slice: the caller must assume a reference
    b = H264Inspector(b"\x00\x00\x00\x01\x67")
    assert b.framing == "annexb"
    assert b.inspect(annexb(AUD, SEI, B_NONREF)) == PictureKind(ref=False, idr=False)
    assert b.inspect(annexb(AUD, IDR)) == PictureKind(ref=True, idr=True)
    assert b.inspect(b"\x00\x00\x01" + bytes(P_REF)) == PictureKind(ref=True, idr=False)
    assert H264Inspector(None).framing == "annexb"


def test_a_frame_is_non_reference_only_if_every_slice_is():
    a = H264Inspector(AVCC_EXTRADATA)
    # Two fields / slices: the second a reference.
    assert a.inspect(avcc(B_NONREF, P_REF)).ref
    assert not a.inspect(avcc(B_NONREF, B_NONREF)).ref
    # A damaged length field ends the walk without an exception.
    assert a.inspect(b"\x00\x00\x00\x00" + IDR) is None


def test_matches_the_encoder_on_real_files(h264_mp4, h264_ts):
    # x264 with B-pyramid: I/P and reference B-frames have nal_ref_idc > 0, plain B none.
    for path in (h264_mp4, h264_ts):
        with av.open(path) as c:
            s = c.streams.video[0]
            ins = H264Inspector(s.codec_context.extradata)
            kinds = [(p.is_keyframe, ins.inspect(p)) for p in c.demux(s) if p.size]
        assert all(k is not None for _, k in kinds)
        assert all(k.ref and k.idr for key, k in kinds if key)
        assert sum(not k.ref for _, k in kinds) > 30  # most B-frames are droppable


def test_wanted_in_window_maps_targets_in_decode_order():
    # Decode order I0 P3 B1 B2 (presentation times 0, .3, .1, .2).
    times = [0.0, 0.3, 0.1, 0.2]
    assert wanted_in_window(times, [0.15, 0.25, 0.26]) == {2: 1, 3: 2}
    assert wanted_in_window(times, [-1.0]) == {0: 1}  # before the first frame
    assert wanted_in_window(times, []) == {}


def test_feed_mask_cuts_tails_and_unwanted_non_references():
    refs = [True, True, False, False, True, False]
    # Want decode index 3 (a non-ref B): feed refs before it and it; cut the tail.
    assert feed_mask(refs, [3], keep_refs_to_end=False) == [True, True, False, True, False, False]
    # Nothing wanted: nothing fed; unless the next GOP's leading pictures need the refs.
    assert feed_mask(refs, [], keep_refs_to_end=False) == [False] * 6
    assert feed_mask(refs, [], keep_refs_to_end=True) == [True, True, False, False, True, False]
    # Unknown kinds (other codecs) count as references: only the tail is cut.
    assert feed_mask([True] * 6, [2], keep_refs_to_end=False) == [True, True, True, False, False, False]


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x00\x00\x01"])
def test_garbage_never_raises(bad):
    assert H264Inspector(AVCC_EXTRADATA).inspect(bad) is None
    assert H264Inspector(None).inspect(bad) is None
