"""Decoders behind one interface (`base.Decoder`): PyAV everywhere, DALI on GPUs.

    dec = make_decoder("auto")     # DALI when a GPU and nvidia-dali exist, else PyAV
    info = dec.probe("a.mp4")
    for item in dec.frames(source, FpsSampling(1), FrameSize(224, 224)): ...

The records (FrameSize, StreamInfo, the input errors, the audio records) live in
`vmstream.stages.media`; they are re-exported here, the package's face.
"""

from __future__ import annotations

import logging
from typing import Optional

from .base import (
    PATCH_SIZE,
    AudioChunk,
    AudioFormat,
    AudioTrack,
    DecodedItem,
    Decoder,
    FrameSize,
    InputNotFoundError,
    NotAVideoError,
    NoVideoTrackError,
    StreamInfo,
    UnsupportedVideoError,
    VideoInputError,
)

log = logging.getLogger(__name__)

DECODERS = ("auto", "pyav", "dali")

__all__ = [
    "PATCH_SIZE",
    "AudioChunk",
    "AudioFormat",
    "AudioTrack",
    "Decoder",
    "DecodedItem",
    "FrameSize",
    "InputNotFoundError",
    "NotAVideoError",
    "NoVideoTrackError",
    "StreamInfo",
    "UnsupportedVideoError",
    "VideoInputError",
    "make_decoder",
    "gpu_available",
]


def gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not stop CPU decoding
        return False


def make_decoder(name: str = "auto", gop_workers: Optional[int] = None, **kwargs) -> Decoder:
    """A decoder by name. "auto" picks DALI only when a GPU and DALI are both present,
    else PyAV (said in the log); "dali" asks for DALI explicitly (its CPU variant
    decodes VP8/VP9/MJPEG only); "pyav" is the CPU decoder. kwargs go to the backend;
    `gop_workers` (PyAV's GOP pool, see gop_pool.py) only to PyAV, DALI has no such pool."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; expected one of {DECODERS}")
    if name in ("dali", "auto"):
        reason = None
        if name == "auto" and not gpu_available():
            reason = "no CUDA GPU"
        else:
            try:
                from .dali import DALIDecoder  # optional dependency

                return DALIDecoder(**kwargs)
            except ImportError as e:
                reason = f"DALI is not available ({e})"
                if name == "dali":
                    raise ImportError(f"decoder 'dali' asked for, but {reason}; pip install 'vmstream[dali]'") from e
        log.info("decoder: using PyAV (%s)", reason)
    from .pyav import PyAVDecoder

    if gop_workers is not None:
        kwargs["gop_workers"] = gop_workers
    return PyAVDecoder(**kwargs)
