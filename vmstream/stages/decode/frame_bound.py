"""The bound on a video's declared frame size, checked when an input is probed.

A header can declare any size: decoding a 16000x16000 frame needs about 400 MB per
frame buffer (FFmpeg keeps several in flight with frame threading), and past
FFmpeg's own limit (width x height >= INT_MAX / 8) opening fails with an errno that
says nothing about the input ("Device or resource busy"). So the declared size is
checked up front against `decode.max_frame_pixels`, and the error names the size and
the bound.

The default, 8192 x 8192 = 67 Mpixels, admits every real format (8K UHD 7680x4320 and
DCI 8K 8192x4320 are 33-35 Mpixels; 8K x 8K is the largest VR/360 video) while keeping
one decoded YUV 4:2:0 frame at about 100 MB.

Y4M (raw YUV) headers are read here before FFmpeg opens the file: the format is
trivial to forge and FFmpeg refuses the largest sizes before it reports them.
"""

from __future__ import annotations

from typing import Optional

from vmstream.stages.media import VideoInputError

__all__ = ["MAX_FRAME_PIXELS", "FrameTooLargeError", "check_frame_size", "y4m_frame_size"]

MAX_FRAME_PIXELS = 8192 * 8192

_Y4M_MAGIC = b"YUV4MPEG2 "


class FrameTooLargeError(VideoInputError):
    reason = "frame_too_large"


def check_frame_size(uri: str, width: int, height: int, bound: int) -> None:
    """Raise FrameTooLargeError when width x height exceeds `bound` pixels."""
    if width * height > bound:
        raise FrameTooLargeError(
            uri,
            f"the video declares frames of {width}x{height} ({width * height / 1e6:.1f} Mpixels), over the "
            f"bound of {bound} pixels ({bound / 1e6:.1f} Mpixels; decode.max_frame_pixels, default "
            f"8192x8192); raise the bound to decode it",
        )


def y4m_frame_size(uri: str, options: Optional[dict] = None) -> Optional[tuple[int, int]]:
    """The (width, height) a local Y4M file's header declares, or None for anything else
    (other formats, URLs, unreadable files: FFmpeg then says what is wrong)."""
    fmt = (options or {}).get("format")
    if "://" in uri or uri.startswith("pipe:") or (fmt and fmt != "yuv4mpegpipe"):
        return None
    try:
        with open(uri, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(_Y4M_MAGIC):
        return None
    width = height = None
    for token in head.split(b"\n", 1)[0].split(b" ")[1:]:
        key, value = token[:1], token[1:]
        if key in (b"W", b"H") and value.isdigit():
            if key == b"W":
                width = int(value)
            else:
                height = int(value)
    return (width, height) if width and height else None
