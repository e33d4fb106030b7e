"""Which packets the decoder must see to produce the wanted frames, and nothing more.

For exact low-fps sampling of long files most decode work is wasted: at 1 fps from a
30 fps source, 29 of every 30 frames are thrown away. Two facts let us skip their
decoding without changing a single output pixel:

1. A frame can only reference frames decoded before it. So within a GOP (keyframe to
   keyframe, decode order), everything after the last wanted frame is not needed -
   unless the next GOP is "open" and one of its leading pictures (displayed before its
   keyframe, referencing this GOP) is wanted. And a GOP with nothing wanted is skipped
   whole.
2. In H.264 a picture with nal_ref_idc == 0 in its NAL header is a non-reference
   picture: no other picture is predicted from it. Unless it is wanted itself it can
   simply never be fed to the decoder.

`H264Inspector` reads (1-2 bytes of) the NAL headers of a packet, in the AVCC /
length-prefixed framing of MP4/MKV or the Annex-B start-code framing of MPEG-TS and raw
streams. `wanted_in_window` and `feed_mask` are the pure planning steps the PyAV
decoder runs per GOP; the tests hold the result to decoding everything
(bit-identical frames), which is the readable reference.

Other codecs get rule 1 only (every frame treated as a possible reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from vmstream.stages.media import TIME_EPS

# H.264 nal_unit_type values (ITU-T H.264 Table 7-1).
NAL_SLICE = 1  # coded slice of a non-IDR picture
NAL_SLICE_DPA = 2  # slice data partition A (carries the slice header)
NAL_IDR = 5


@dataclass(frozen=True, slots=True)
class PictureKind:
    ref: bool  # nal_ref_idc != 0: other pictures may be predicted from it
    idr: bool  # an IDR picture: nothing after it references anything before it


class H264Inspector:
    """Reads the first slice NAL header of H.264 packets.

    `extradata` is the codec context's: an avcC record (first byte 1) means AVCC
    framing with its NAL length size; anything else (or none) means Annex-B.
    """

    def __init__(self, extradata: Optional[bytes]):
        ed = bytes(extradata or b"")
        if len(ed) >= 7 and ed[0] == 1:
            self.framing = "avcc"
            self.length_size = (ed[4] & 0x03) + 1
        else:
            self.framing = "annexb"
            self.length_size = 0

    def inspect(self, data) -> Optional[PictureKind]:
        """The picture kind of one access unit, or None if no slice NAL is found
        (the caller must then treat the packet as a needed reference).

        Every slice is looked at until one is a reference: the two fields of an
        interlaced frame may differ, and the frame is only skippable if none is."""
        mv = memoryview(data)
        headers = self._avcc(mv) if self.framing == "avcc" else self._annexb(mv)
        seen = False
        for h in headers:
            t = h & 0x1F
            if t in (NAL_SLICE, NAL_SLICE_DPA, NAL_IDR):
                if h & 0x60:
                    return PictureKind(ref=True, idr=t == NAL_IDR)
                seen = True
        return PictureKind(ref=False, idr=False) if seen else None

    def _avcc(self, mv: memoryview):
        n, ls, i = len(mv), self.length_size, 0
        while i + ls < n:
            size = int.from_bytes(mv[i : i + ls], "big")
            if size <= 0:
                return
            yield mv[i + ls]
            i += ls + size

    def _annexb(self, mv: memoryview):
        # Emulation prevention guarantees 00 00 01 occurs only as a start code.
        buf = bytes(mv)
        pos = 0
        while True:
            j = buf.find(b"\x00\x00\x01", pos)
            if j < 0 or j + 3 >= len(buf):
                return
            yield buf[j + 3]
            pos = j + 4


def wanted_in_window(times: Sequence[float], targets: Sequence[float], eps: float = TIME_EPS) -> dict[int, int]:
    """For one GOP window: {decode-order index: how many targets it serves}.

    `times` are the window's presentation times in decode order; `targets` the pending
    targets already known to fall before the next window's first presentation time.
    A target before the window's first frame gets its first frame (the start of the
    stream, or a seek that could not land early enough).
    """
    if not len(targets):
        return {}
    order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
    sorted_t = np.asarray(times, dtype=np.float64)[order]
    tg = np.asarray(targets, dtype=np.float64)
    pos = np.searchsorted(sorted_t, tg + eps, side="right") - 1
    pos = np.clip(pos, 0, len(sorted_t) - 1)
    out: dict[int, int] = {}
    for p in pos.tolist():
        i = int(order[p])
        out[i] = out.get(i, 0) + 1
    return out


def feed_mask(refs: Sequence[bool], wanted: Sequence[int], keep_refs_to_end: bool) -> list[bool]:
    """Which packets of a GOP window (decode order) to send to the decoder.

    `refs[i]`: packet i may be referenced (True when unknown). `wanted`: decode-order
    indices of the frames to output. `keep_refs_to_end`: the next GOP's wanted
    leading pictures need this GOP's references, so none may be cut from its tail.
    """
    n = len(refs)
    last = max(wanted) if len(wanted) else -1
    last_ref = n - 1 if keep_refs_to_end else last
    w = set(int(i) for i in wanted)
    return [(i in w) or (i <= last_ref and bool(refs[i])) for i in range(n)]
