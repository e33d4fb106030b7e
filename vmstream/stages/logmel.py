"""Log-mel features of an audio stream, computed incrementally: the core of the audio
stage (`stages.audio`), independent of where the PCM comes from.

`LogMelStream` turns mono PCM pushed in any chunking into log-mel frames on one fixed
frame grid (so the result does not depend on how the PCM arrives) and summarises a
time span as the mean and standard deviation of the frames whose centres fall in it;
`reference_logmel_summary` is the readable whole-signal version the tests hold it to.
`AudioConfig` says how (rate, windows, mel bins) and how the stage reads ahead.

Features are natural-log mel power, ``log(mel + log_offset)``. A span shorter than one
hop is given the single frame whose centre is nearest the span's midpoint, if that
frame's window overlaps the span; a span with no audio gets None.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torchaudio

from vmstream.stages.media import AudioFormat

__all__ = ["AudioConfig", "LogMelStream", "reference_logmel_summary", "summarise_frames"]


@dataclass(frozen=True)
class AudioConfig:
    """How audio is turned into per-segment features. Defaults: 16 kHz mono, 25 ms
    windows every 10 ms, 64 mel bins (the usual audio-event front end)."""

    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160
    f_min: float = 0.0
    f_max: Optional[float] = None  # None: sample_rate / 2
    log_offset: float = 1e-6
    # PCM is turned into mel frames in blocks of about this much audio (512 kB at
    # 16 kHz): few torch calls, each big enough to amortise its overhead.
    block_seconds: float = 8.0
    # A jump ahead larger than this (sparse segments) seeks instead of decoding through.
    seek_ahead_seconds: float = 30.0
    # Timestamp disagreement (container pts vs. samples counted) that counts as a break
    # in the audio; smaller differences are pts rounding (e.g. 1 ms time bases).
    discontinuity_seconds: float = 0.1
    # Audio read in the video's pass: how far the video may run ahead of the audio (a
    # file's interleaving; FFmpeg's muxers default to at most 10 s) before a segment goes
    # out with the audio seen so far (a track that ended early): this bounds how many
    # segments wait for their audio.
    interleave_seconds: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate={self.sample_rate} must be > 0")
        if self.n_mels < 1:
            problems.append(f"n_mels={self.n_mels} must be >= 1")
        if self.n_fft < 2:
            problems.append(f"n_fft={self.n_fft} must be >= 2")
        if not 0 < self.hop_length <= self.n_fft:
            problems.append(f"hop_length={self.hop_length} must be in (0, n_fft={self.n_fft}]")
        f_max = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= self.sample_rate / 2:
            problems.append(
                f"need 0 <= f_min ({self.f_min}) < f_max ({f_max}) <= sample_rate/2 ({self.sample_rate / 2})"
            )
        if self.log_offset <= 0:
            problems.append(f"log_offset={self.log_offset} must be > 0")
        if min(self.block_seconds, self.seek_ahead_seconds, self.discontinuity_seconds, self.interleave_seconds) <= 0:
            problems.append("block_seconds, seek_ahead_seconds, discontinuity_seconds, interleave_seconds must be > 0")
        if problems:
            raise ValueError("bad AudioConfig: " + "; ".join(problems))

    @property
    def audio_format(self) -> AudioFormat:
        """The PCM this config reads: what the audio stage asks the decoder for."""
        return AudioFormat(self.sample_rate)

    @property
    def dim(self) -> int:
        """Length of `Segment.audio`: mean then std of each mel bin."""
        return 2 * self.n_mels

    @property
    def half_window(self) -> float:
        return self.n_fft / (2 * self.sample_rate)

    def mel_transform(self) -> torchaudio.transforms.MelSpectrogram:
        # center=False: frames sit on one grid anchored at the first sample, so a frame
        # never depends on where a block of PCM was cut (no per-block reflect padding).
        return torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=self.f_min,
            f_max=self.f_max,
            power=2.0,
            center=False,
        )


# With the OpenMP backend (PyTorch's CPU wheels) torch.set_num_threads is per calling
# thread, so this stage can run its small STFTs single-threaded without touching the
# model's threads: handing such tiny ops to a thread pool costs more than the ops when
# the cores are busy (benchmarks/audio_features_speed.py times the stage as it runs).
_THREAD_LOCAL_POOL = "parallel backend: OpenMP" in torch.__config__.parallel_info()


@contextmanager
def _one_torch_thread():
    prev = torch.get_num_threads()
    if not _THREAD_LOCAL_POOL or prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _log_mel(mel: torchaudio.transforms.MelSpectrogram, samples: np.ndarray, offset: float) -> np.ndarray:
    """log-mel rows [F, n_mels] of every complete window of `samples` (center=False)."""
    with torch.no_grad(), _one_torch_thread():
        spec = mel(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)))
        return torch.log(spec + offset).T.contiguous().numpy()


def summarise_frames(
    centers: np.ndarray, rows: np.ndarray, t_start: float, t_end: float, half_window: float
) -> Optional[np.ndarray]:
    """Mean and std of the rows whose centre is in [t_start, t_end), with the short-span
    and no-audio conventions of the module docstring."""
    if len(centers) == 0:
        return None
    sel = (centers >= t_start) & (centers < t_end)
    if sel.any():
        x = rows[sel].astype(np.float64)
    else:
        mid = 0.5 * (t_start + t_end)
        k = int(np.argmin(np.abs(centers - mid)))
        # The window of frame k is [c - hw, c + hw); it must overlap the span.
        if centers[k] + half_window <= t_start or centers[k] - half_window > max(t_end, t_start):
            return None
        x = rows[k : k + 1].astype(np.float64)
    return np.concatenate([x.mean(axis=0), x.std(axis=0)]).astype(np.float32)


def reference_logmel_summary(
    samples: np.ndarray, t0: float, spans: Sequence[tuple[float, float]], config: AudioConfig = AudioConfig()
) -> list[Optional[np.ndarray]]:
    """The readable reference: mel of the whole mono signal at once (sample i at time
    t0 + i / sample_rate), then one summary per (t_start, t_end) span."""
    cfg = config
    rows = (
        _log_mel(cfg.mel_transform(), samples, cfg.log_offset)
        if len(samples) >= cfg.n_fft
        else np.zeros((0, cfg.n_mels), np.float32)
    )
    centers = t0 + (np.arange(len(rows)) * cfg.hop_length + cfg.n_fft / 2) / cfg.sample_rate
    return [summarise_frames(centers, rows, a, b, cfg.half_window) for a, b in spans]


class _Grid:
    """One unbroken run of PCM: sample i is at t0 + i / sr. Turns complete windows into
    mel frames and keeps only the samples the next window still needs."""

    def __init__(self, t0: float, cfg: AudioConfig):
        self.t0 = t0
        self.cfg = cfg
        self.pending: list[np.ndarray] = []
        self.pending_len = 0
        self.consumed = 0  # samples dropped from the front (always a multiple of hop)
        self.next_frame = 0

    @property
    def samples_seen(self) -> int:
        return self.consumed + self.pending_len

    def end_time(self) -> float:
        return self.t0 + self.samples_seen / self.cfg.sample_rate

    def next_center(self) -> float:
        c = self.cfg
        return self.t0 + (self.next_frame * c.hop_length + c.n_fft / 2) / c.sample_rate

    def push(self, x: np.ndarray) -> None:
        if len(x):
            self.pending.append(x)
            self.pending_len += len(x)

    def frames(self, mel) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        if self.pending_len < c.n_fft:
            return np.zeros(0), np.zeros((0, c.n_mels), np.float32)
        buf = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = 1 + (len(buf) - c.n_fft) // c.hop_length
        rows = _log_mel(mel, buf[: (n - 1) * c.hop_length + c.n_fft], c.log_offset)
        centers = self.t0 + ((self.next_frame + np.arange(n)) * c.hop_length + c.n_fft / 2) / c.sample_rate
        rest = buf[n * c.hop_length :]
        self.pending = [rest] if len(rest) else []
        self.pending_len = len(rest)
        self.consumed += n * c.hop_length
        self.next_frame += n
        return centers, rows


class LogMelStream:
    """Incremental log-mel frames of one audio stream, kept only as long as asked.

    `push(samples, t)` appends mono float32 PCM at `config.sample_rate`; `t` is the time of
    its first sample (None: right after the previous chunk). A `t` that disagrees with the
    running sample count by more than `discontinuity_seconds` starts a new frame grid
    (a gap or a jump in the audio). `summary(t_start, t_end)` needs every frame whose
    centre is before `t_end`: call it once `ready(t_end)` or after `finish()`.
    `discard_before(t)` drops frames a caller will not ask for again.
    """

    def __init__(self, config: AudioConfig = AudioConfig()):
        self.cfg = config
        self._mel = config.mel_transform()
        self._grid: Optional[_Grid] = None
        self._centers: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self.finished = False
        self.peak_buffered_seconds = 0.0  # frames + pending PCM held at once, for tests/stats

    # -- feeding --------------------------------------------------------------------
    def push(self, samples: np.ndarray, t: Optional[float] = None) -> None:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        g = self._grid
        if g is None or (t is not None and abs(t - g.end_time()) > self.cfg.discontinuity_seconds):
            if g is not None:
                self._collect(g)
            if t is None:
                t = 0.0 if g is None else g.end_time()
            self._grid = g = _Grid(float(t), self.cfg)
        g.push(x)
        if g.pending_len >= self.cfg.block_seconds * self.cfg.sample_rate:
            self._collect(g)
        self._track_peak()

    def finish(self) -> None:
        """No more audio: every frame that can exist does now."""
        if self._grid is not None:
            self._collect(self._grid)
        self.finished = True

    def reset(self) -> None:
        """Forget everything (after a seek)."""
        self._grid = None
        self._centers.clear()
        self._rows.clear()
        self.finished = False

    # -- asking ---------------------------------------------------------------------
    def ready(self, t_end: float) -> bool:
        """True if every frame the summary of a span ending at t_end may use is known
        (more audio would not change it): those with centre < t_end, and the first one
        after, which the nearest-frame rule of a span shorter than a hop may pick."""
        if self.finished:
            return True
        g = self._grid
        if g is None:
            return False
        # A frame is computable once the samples up to its window's end have arrived;
        # the first centre at or after t_end lies less than one hop after it.
        c = self.cfg
        return g.end_time() >= t_end + c.hop_length / c.sample_rate + c.half_window

    def covered_until(self) -> float:
        """End time of the audio pushed so far (-inf before any)."""
        return -math.inf if self._grid is None else self._grid.end_time()

    def summary(self, t_start: float, t_end: float) -> Optional[np.ndarray]:
        if self._grid is not None:
            self._collect(self._grid)
        if not self._centers:
            return None
        centers = np.concatenate(self._centers)
        rows = np.concatenate(self._rows)
        return summarise_frames(centers, rows, t_start, t_end, self.cfg.half_window)

    def discard_before(self, t: float) -> None:
        keep_c, keep_r = [], []
        for c, r in zip(self._centers, self._rows):
            if len(c) and c[-1] < t:
                continue
            sel = c >= t
            keep_c.append(c[sel])
            keep_r.append(r[sel])
        self._centers, self._rows = keep_c, keep_r

    # -- internals --------------------------------------------------------------------
    def _collect(self, g: _Grid) -> None:
        centers, rows = g.frames(self._mel)
        if len(centers):
            self._centers.append(centers)
            self._rows.append(rows)

    def _track_peak(self) -> None:
        held = sum(len(c) for c in self._centers) * self.cfg.hop_length
        if self._grid is not None:
            held += self._grid.pending_len
        self.peak_buffered_seconds = max(self.peak_buffered_seconds, held / self.cfg.sample_rate)
