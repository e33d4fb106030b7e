"""NVIDIA DALI decoder backend (`pip install vmstream[dali]`).

Same contract as every decoder (`base.Decoder`): frames at model size, chosen by a
sampling policy with the shared rule (`sampling.frames_for_targets`: the frame on
screen at each target time), timestamps from the container, then one "end" event.

How it works. `probe` is the PyAV backend's, so both backends plan their target times
from the same StreamInfo. A cheap first pass demuxes the video packets (no decoding)
into a frame index: the presentation time and keyframe flag of every frame. The
targets become frame numbers on that index, which is what makes both backends return
the same frames at the same timestamps. Then one DALI pipeline per stream streams the
file through `fn.experimental.inputs.video` (sequences of `chunk_frames` consecutive
frames: decoder memory stays flat however long the file), keeps the wanted frames of
each chunk with `fn.sequence_rearrange`, and resizes / centre-crops them with
`fn.resize` + `fn.slice` inside the pipeline (optionally normalises them with
`fn.crop_mirror_normalize`), so a full-resolution RGB frame never reaches Python.
Decoding stops after the chunk holding the last wanted frame. The encoded file is
handed to DALI memory-mapped (`no_copy`); on the CPU DALI reads it in place.

Devices. With a CUDA GPU, decoding runs on NVDEC (`device="mixed"`), resizing on the
GPU, and frames reach torch through DLPack without a host copy (`Frame.image` is then a
CUDA uint8 tensor). Without one, DALI's CPU variant decodes VP8, VP9 and MJPEG only: for
any other codec `frames()` either falls back to PyAV with a log line (`fallback=True`,
the default) or raises `UnsupportedVideoError` naming the file and codec.

What it does not do: it decodes every frame up to the last wanted one (no packet
skipping or seeking as the PyAV backend does for sparse sampling; NVDEC makes this cheap
on a GPU, DALI's CPU decoder is several times slower than FFmpeg's, see
benchmarks/dali_decode_speed.py), and it reads local files only (live URLs go to
PyAV). `keyframes_only` policies are honoured exactly (a target gets the last keyframe
at or before it) but are not faster here. Untested here (no GPU): the mixed-device
path; DALI's mixed video input keeps its input in pinned host memory, which may mean a
copy of the whole encoded file per stream.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Iterator, Optional

import numpy as np

from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD
from vmstream.records import Frame, StreamEvent
from vmstream.stages.decode.base import (
    DecodedItem,
    Decoder,
    check_frames_args,
    end_event,
    no_frame_reason,
    probe_for_policy,
)
from vmstream.stages.decode.container import open_input, video_stream
from vmstream.stages.media import AudioFormat, FrameSize, NotAVideoError, Source, StreamInfo, UnsupportedVideoError
from vmstream.stages.sampling import SamplingPolicy, frames_for_targets

try:  # optional dependency: the module imports without it, the decoder does not build
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    DALI_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as _e:  # pragma: no cover - exercised where DALI is absent
    fn = types = pipeline_def = None
    DALI_IMPORT_ERROR = _e

log = logging.getLogger(__name__)

# What DALI's decoders accept (FFmpeg codec names), per its documentation of
# fn.experimental.inputs.video / fn.decoders.video.
CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = CPU_CODECS | frozenset({"h264", "hevc", "av1", "mpeg4"})

# FrameSize.interpolation (PyAV / libswscale names) -> DALI interpolation. DALI's
# resize antialiases when it shrinks, as swscale's filters do, so "BILINEAR" lands close
# to the PyAV backend's frames.
_INTERP = {
    "BILINEAR": "INTERP_LINEAR",
    "FAST_BILINEAR": "INTERP_LINEAR",
    "AREA": "INTERP_LINEAR",
    "BICUBIC": "INTERP_CUBIC",
    "BICUBLIN": "INTERP_CUBIC",
    "GAUSS": "INTERP_GAUSSIAN",
    "POINT": "INTERP_NN",
    "NEAREST": "INTERP_NN",
    "LANCZOS": "INTERP_LANCZOS3",
    "SINC": "INTERP_LANCZOS3",
    "SPLINE": "INTERP_CUBIC",
}

TIME_EPS = 1e-6


def dali_available() -> bool:
    return DALI_IMPORT_ERROR is None


def _cuda_device() -> Optional[int]:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.current_device())
    except Exception:  # a broken CUDA install must not stop CPU decoding
        pass
    return None


# --------------------------------------------------------------------------- index


@dataclass(frozen=True)
class FrameIndex:
    """Presentation times (seconds, ascending) and keyframe flags of every frame of the
    video stream, read from packet headers without decoding, plus what the first decoded
    frame says about display rotation."""

    times: np.ndarray
    keyframe: np.ndarray
    frame_duration: float  # typical spacing, for the end of the last frame
    # Clockwise quarter turns x 90 the display matrix asks for (0/90/180/270).
    rotation: int = 0
    # Why the file looks cut short ("" if it does not): it ends before the duration its
    # header declares, or demuxing failed part way.
    truncated: str = ""
    broken_packets: int = 0

    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def end_time(self) -> float:
        return float(self.times[-1] + self.frame_duration) if len(self) else 0.0


def index_file(uri: str, options: Optional[dict] = None) -> FrameIndex:
    """Index the frames of a local video file (one demux pass, no decoding, and one
    decoded frame for the rotation). Raises VideoInputError naming `uri`."""
    import av

    with open_input(uri, options) as c:
        vs = video_stream(c, uri)
        tb = vs.time_base
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        declared = None
        if vs.duration and tb is not None:
            declared = float((vs.start_time or 0) * tb) + float(vs.duration * tb)
        elif c.duration is not None:
            declared = (c.duration + (c.start_time or 0)) / av.time_base
        pts, key = [], []
        broken, cut = 0, ""
        try:
            for pkt in c.demux(vs):
                if pkt.size == 0 or pkt.pts is None:  # flush packets; no timestamp to place
                    continue
                if pkt.is_corrupt:
                    broken += 1
                    continue
                pts.append(int(pkt.pts))
                key.append(bool(pkt.is_keyframe))
        except av.error.FFmpegError as e:
            cut = f"demuxing stopped after {len(pts)} frames: {e}"
    if not pts:
        raise NotAVideoError(uri, "its video track holds no frames with timestamps")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    # pts * time_base in exact integers, one rounding (as the PyAV backend times its
    # frames): the same float for the same frame in both backends.
    num, den = Fraction(tb).numerator, Fraction(tb).denominator
    times = np.asarray([(pts[i] * num) / den for i in order], dtype=np.float64)
    keyframe = np.asarray(key, dtype=bool)[order]
    if times.size > 1:
        dur = float(np.median(np.diff(times)))
    else:
        dur = 1.0 / float(rate) if rate else 0.0
    end = float(times[-1]) + dur
    if not cut and declared is not None and end < declared - max(0.5, 2 * dur):
        cut = f"the file ends at {end:.3f}s but its header says {declared:.3f}s"
    return FrameIndex(
        times=times,
        keyframe=keyframe,
        frame_duration=dur,
        rotation=_first_frame_rotation(uri, options),
        truncated=cut,
        broken_packets=broken,
    )


def _first_frame_rotation(uri: str, options: Optional[dict]) -> int:
    """Clockwise rotation (0/90/180/270) the display matrix asks for, read from the first
    decoded frame (FFmpeg exposes the matrix there, as a counter-clockwise angle)."""
    try:
        with open_input(uri, options) as c:
            for frame in c.decode(c.streams.video[0]):
                return int(round(-float(getattr(frame, "rotation", 0) or 0) / 90.0)) * 90 % 360
    except Exception:  # the packet scan already vouched for the file; no rotation then
        pass
    return 0


# --------------------------------------------------------------------------- selection

# As the PyAV backend: a target this close to the end of the last frame's display
# counts as past the end (container durations are often rounded to the millisecond).
END_SLACK = 1e-3


def select_frames(
    index: FrameIndex,
    info: StreamInfo,
    policy: SamplingPolicy,
    start_time: float = 0.0,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """Frame numbers (ascending, repeated where the policy repeats) the policy asks for,
    by the shared rule `sampling.frames_for_targets`; none before `start_time`.

    Targets come from `info` (the PyAV probe, as in the PyAV backend). Past the last
    frame, fixed-count policies repeat it; others take targets only up to the end of its
    display (1 / fps after it)."""
    if policy.keyframes_only:
        candidates = np.flatnonzero(index.keyframe)
        if candidates.size == 0:
            candidates = np.arange(1)
    else:
        candidates = np.arange(len(index))
    targets = policy.target_times(info, rng)
    if targets is None:  # every (key)frame
        chosen = candidates
    else:
        frame_dur = 1.0 / info.fps if info.fps else index.frame_duration
        limit = math.inf if type(policy).repeats else float(index.times[-1]) + frame_dur - END_SLACK
        ts = []
        for t in targets:  # ascending; fps targets are endless without a duration
            if t > limit:
                break
            ts.append(float(t))
        if not ts:
            return np.zeros(0, dtype=np.int64)
        chosen = candidates[frames_for_targets(index.times[candidates], ts)]
        if not type(policy).repeats:
            chosen = np.unique(chosen)
    chosen = np.asarray(chosen, dtype=np.int64)
    return chosen[index.times[chosen] >= start_time - TIME_EPS]


# --------------------------------------------------------------------------- pipeline


def _build_pipeline(
    *,
    device: str,
    device_id: Optional[int],
    num_threads: int,
    chunk: int,
    scaled: tuple[int, int],
    crop: tuple[int, int, int, int],
    rotation: int,
    interp: str,
    normalize: bool = False,
):
    """One stream's DALI pipeline: consecutive chunks of decoded frames in, the wanted
    frames of each chunk out, resized and centre-cropped: uint8 FHWC, or with
    `normalize` float32 FCHW normalised with the ImageNet mean / std."""
    sw, sh = scaled
    x0, y0, cw, ch = crop

    @pipeline_def(batch_size=1, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
    def graph():
        video = fn.experimental.inputs.video(
            name="video",
            device=device,
            sequence_length=chunk,
            last_sequence_policy="partial",
            no_copy=True,
        )
        sel = fn.external_source(name="sel", dtype=types.INT32, ndim=1)
        # Frames DALI actually decoded in this chunk (fewer than asked: the file ended).
        decoded = video.shape() if hasattr(video, "shape") else fn.shapes(video)  # DALI < 1.44
        x = fn.sequence_rearrange(video, new_order=sel)
        if rotation == 90:
            x = fn.flip(fn.transpose(x, perm=[0, 2, 1, 3], output_layout="FHWC"), horizontal=1)
        elif rotation == 180:
            x = fn.flip(x, horizontal=1, vertical=1)
        elif rotation == 270:
            x = fn.flip(fn.transpose(x, perm=[0, 2, 1, 3], output_layout="FHWC"), vertical=1)
        x = fn.resize(x, resize_x=sw, resize_y=sh, interp_type=getattr(types, interp), antialias=True)
        if (sw, sh) != (cw, ch):
            x = fn.slice(x, start=[y0, x0], shape=[ch, cw], axis_names="HW")
        if normalize:
            x = fn.crop_mirror_normalize(
                x,
                dtype=types.FLOAT,
                output_layout="FCHW",
                mean=[255.0 * m for m in IMAGENET_MEAN],
                std=[255.0 * s for s in IMAGENET_STD],
            )
        return x, decoded

    pipe = graph()
    pipe.build()
    return pipe


# --------------------------------------------------------------------------- decoder


class DALIDecoder(Decoder):
    """Decoder on NVIDIA DALI. See the module docstring.

    device: "auto" (NVDEC when a CUDA GPU is present, else DALI's CPU decoder), "gpu"
    or "cpu". fallback: decode what DALI cannot (codec, live URL) with PyAV instead of
    raising UnsupportedVideoError. chunk_frames: frames decoded per pipeline run.
    normalize: finish the model's input transform inside DALI too, so `Frame.image` is
    float32 [3, H, W] normalised with IMAGENET_MEAN / STD (on the GPU a CUDA tensor)
    instead of uint8 [H, W, 3]; a segmenter must then stack these as they are. Off by
    default, as the `Frame` contract says uint8. (Not applied to PyAV fallbacks.)
    """

    name = "dali"

    def __init__(
        self,
        device: str = "auto",
        *,
        fallback: bool = True,
        chunk_frames: int = 16,
        num_threads: int = 2,
        device_id: Optional[int] = None,
        normalize: bool = False,
        **pyav_kwargs,
    ):
        if not dali_available():
            raise ImportError(f"nvidia-dali is not importable ({DALI_IMPORT_ERROR}); pip install 'vmstream[dali]'")
        if device not in ("auto", "gpu", "cpu"):
            raise ValueError(f"DALIDecoder device={device!r}; expected 'auto', 'gpu' or 'cpu'")
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
        gpu = _cuda_device()
        if gpu is not None and device_id is not None:
            gpu = int(device_id)
        if device == "gpu" and gpu is None:
            raise ValueError("DALIDecoder device='gpu' asked for, but no CUDA GPU is available")
        self.on_gpu = device != "cpu" and gpu is not None
        self.device_id = gpu if self.on_gpu else None
        self.fallback = fallback
        self.chunk_frames = chunk_frames
        self.num_threads = num_threads
        self.normalize = bool(normalize)
        self._pyav_kwargs = pyav_kwargs
        self._pyav: Optional[Decoder] = None
        self._lock = threading.Lock()

    @property
    def codecs(self) -> frozenset:
        return GPU_CODECS if self.on_gpu else CPU_CODECS

    # -- interface ---------------------------------------------------------------------
    def probe(self, uri: str, options: Optional[dict] = None, *, count: bool = False) -> StreamInfo:
        """The PyAV backend's probe: both backends plan their targets from the same
        StreamInfo, which is what makes their timestamps agree."""
        return self._pyav_decoder().probe(uri, options, count=count)

    def supports(self, info: StreamInfo) -> bool:
        return (not info.live) and info.codec in self.codecs

    def frames(
        self,
        source: Source,
        policy: SamplingPolicy,
        size: FrameSize,
        start_time: float = 0.0,
        *,
        stop: Optional[threading.Event] = None,
        info: Optional[StreamInfo] = None,
        audio: Optional[AudioFormat] = None,
    ) -> Iterator[DecodedItem]:
        """See base.Decoder.frames. Probes, indexes and builds the pipeline now (bad input
        raises here); decoding runs lazily in the returned iterator. `audio` is honoured
        by the PyAV fallback only (DALI decodes no audio: the audio stage reads it)."""
        check_frames_args(source, policy, size, start_time)
        why = None
        path = source.path
        if source.live or path is None:
            why = f"{source.uri}: DALI reads local files only (live or remote source)"
        else:
            info = probe_for_policy(self, path, source.options, policy, info)  # VideoInputError up front
            if info.codec not in self.codecs:
                where = (
                    "NVDEC" if self.on_gpu else "DALI's CPU decoder (VP8/VP9/MJPEG only; H.264 and others need a GPU)"
                )
                why = f"{path}: codec {info.codec!r} cannot be decoded by {where}"
        if why is not None:
            if not self.fallback:
                raise UnsupportedVideoError(source.uri, why.split(": ", 1)[1])
            log.info("%s; decoding with PyAV instead", why)
            return self._pyav_decoder().frames(source, policy, size, start_time, stop=stop, info=info, audio=audio)
        index = index_file(path, source.options)
        chosen = select_frames(index, info, policy, float(start_time))
        return self._decode(
            source, path, replace(info, rotation=index.rotation), index, chosen, size, stop, resumed=start_time > 0
        )

    def close(self) -> None:
        if self._pyav is not None:
            self._pyav.close()

    # -- internals ---------------------------------------------------------------------
    def _pyav_decoder(self) -> Decoder:
        with self._lock:
            if self._pyav is None:
                from .pyav import PyAVDecoder

                self._pyav = PyAVDecoder(**self._pyav_kwargs)
            return self._pyav

    def _decode(
        self,
        source,
        path,
        info: StreamInfo,
        index: FrameIndex,
        chosen: np.ndarray,
        size: FrameSize,
        stop: Optional[threading.Event],
        resumed: bool = False,
    ) -> Iterator[DecodedItem]:
        sid, uri = source.stream_id, source.uri
        L = self.chunk_frames
        dw, dh = info.display_size
        scaled = size.scaled_size(dw, dh)
        x0, y0 = size.crop_box(*scaled)
        interp = _dali_interp(size)
        n = len(index)
        t0 = time.perf_counter()
        pipe = _build_pipeline(
            device="mixed" if self.on_gpu else "cpu",
            device_id=self.device_id,
            num_threads=self.num_threads,
            chunk=L,
            scaled=scaled,
            crop=(x0, y0, size.width, size.height),
            rotation=info.rotation % 360,
            interp=interp,
            normalize=self.normalize,
        )
        data = np.memmap(path, dtype=np.uint8, mode="r")
        pipe.feed_input("video", [data])
        log.debug(
            "%s: DALI pipeline (%s) built in %.3fs", uri, "mixed" if self.on_gpu else "cpu", time.perf_counter() - t0
        )

        def gen():
            emitted = 0
            decoded = 0
            reason, message = "eof", ""
            first_t = last_t = math.nan
            try:
                last_chunk = int(chosen[-1]) // L if chosen.size else -1
                pos = 0  # into `chosen`
                for j in range(last_chunk + 1):
                    if stop is not None and stop.is_set():
                        reason = "stopped"
                        break
                    expect = min(L, n - j * L)
                    hi = pos
                    while hi < chosen.size and chosen[hi] < (j + 1) * L:
                        hi += 1
                    want = chosen[pos:hi]
                    local = (want - j * L).astype(np.int32) if want.size else np.zeros(1, np.int32)
                    pipe.feed_input("sel", [local])
                    try:
                        out, shp = pipe.run()
                    except Exception as e:  # DALI marks the pipeline dead after an error
                        message = f"DALI stopped decoding near frame {j * L} of {n}: {_first_line(e)}"
                        reason = "truncated" if index.truncated else "error"
                        log.warning("%s: %s", uri, message)
                        yield StreamEvent(
                            sid,
                            "error",
                            t_start=last_t,
                            message=message,
                            details={"error": type(e).__name__, "decoder": "dali"},
                            uri=uri,
                        )
                        break
                    got = int(np.asarray(shp.as_cpu()[0])[0])
                    decoded += got
                    if got < expect:
                        want = want[want - j * L < got]
                        reason = "truncated"
                        message = f"decoder returned {decoded} frames where the index has {n}"
                    if want.size:
                        imgs = self._images(out)
                        for k, fi in enumerate(want):
                            t = float(index.times[fi])
                            if emitted == 0:
                                first_t = t
                            last_t = t
                            # index: the ordinal of the frame handed out, as in PyAV.
                            yield Frame(stream_id=sid, index=emitted, t=t, image=imgs[k])
                            emitted += 1
                    pos = hi
                    if reason == "truncated":
                        break
            finally:
                del pipe_ref[:]
            if reason == "eof" and (index.truncated or index.broken_packets):
                reason = "truncated"
                message = index.truncated or f"{index.broken_packets} corrupt packets skipped"
            reason, message = no_frame_reason(reason, message, emitted, 1.0 if resumed else 0.0)
            yield end_event(
                sid,
                uri,
                reason,
                frames=emitted,
                broken_packets=index.broken_packets,
                t_start=first_t,
                t_end=last_t,
                message=message,
                decoder="dali",
                device="gpu" if self.on_gpu else "cpu",
                decoded_frames=decoded,
            )

        pipe_ref = [pipe, data]  # released when the generator ends or is closed
        return gen()

    def _images(self, out):
        """The run's frames (HWC uint8, or CHW float32 with `normalize`): numpy on the CPU;
        on the GPU torch CUDA tensors sharing DALI's memory through DLPack (no host copy)."""
        if self.on_gpu:
            import torch

            return torch.from_dlpack(out[0])
        return np.array(out[0])  # own the memory: DALI may reuse its buffer next run


def _dali_interp(size: FrameSize):
    interp = _INTERP.get(size.interpolation.upper())
    if interp is None:
        raise ValueError(
            f"FrameSize.interpolation={size.interpolation!r} has no DALI equivalent; use one of {sorted(_INTERP)}"
        )
    return interp


def _first_line(e: BaseException) -> str:
    """The useful part of a DALI error: which operator, and what it said."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    op = next((ln.rstrip(",") for ln in lines if ln.startswith("Error in")), "")
    said = ""
    if "encountered:" in lines:
        rest = lines[lines.index("encountered:") + 1 :]
        said = rest[0] if rest else ""
    msg = "; ".join(x for x in (op, said) if x)
    return msg or (lines[0] if lines else type(e).__name__)
