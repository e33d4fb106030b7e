"""Video classification datasets for training and evaluation (official formats).

    VideoClsDataset(entries, mode="train" | "val" | "test", ...)

* train: TSN sparse sampling (`vmstream.stages.sampling.TsnSampling`: a random frame in
  each of `num_frames` equal chunks) then `TrainTransform`; with repeated augmentation
  (`num_sample` > 1) one decode yields `num_sample` differently augmented clips, as
  the official loader does.
* val: one clip, the chunk-centre frames, short-side resize and centre crop.
* test: every video yields all its views at once: `test_num_segment` temporal clips
  (evenly offset inside the chunks, the official test indices) x `test_num_crop`
  spatial crops, stacked [V, 3, T, H, W]; the evaluator averages their softmax scores.

A missing or corrupt video is reported (logged, counted in the batch's ``skipped``)
and never stops training: a training sample is replaced by the next readable entry
(deterministically, so data order survives resume); an evaluation sample is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vmstream.stages.sampling import TsnSampling

from .annotations import VideoEntry
from .augment import EvalTransform, TrainTransform
from .video_reader import VideoReader, VideoReadError

log = logging.getLogger(__name__)

MODES = ("train", "val", "test")


def window_frames(entry: VideoEntry, n: int, fps: float) -> tuple[int, int]:
    """First and last frame index of `entry`'s window (the whole video if untrimmed),
    by the official LVU rule: frames int(start * fps) .. int(end * fps), clipped."""
    if entry.start is None:
        return 0, n - 1
    first = max(0, min(int(entry.start * fps), n - 1))
    last = max(first, min(int(entry.end * fps), n - 1))
    return first, last


def view_frame_indices(n: int, num_frames: int, clip_idx: int, num_clips: int) -> np.ndarray:
    """Frame indices of temporal test clip `clip_idx` of `num_clips` (official test rule:
    chunk start + (clip_idx + 1) / (num_clips + 1) of a chunk)."""
    chunk = max(0.0, (n - 1) / num_frames)
    off = int(chunk / (num_clips + 1) * (clip_idx + 1))
    k = np.arange(num_frames)
    return np.minimum(np.round(chunk * k).astype(np.int64) + off, n - 1)


@dataclass
class Skip:
    path: str
    reason: str


class VideoClsDataset(Dataset):
    """Items: train -> (clip [3,T,H,W] or list of num_sample clips, label, index, skipped);
    val -> (clip, label, index, skipped); test -> (views [V,3,T,H,W], label, index, skipped).
    `skipped` lists the `Skip`s met while producing the item."""

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        mode: str = "train",
        num_frames: int = 8,
        crop_size: int = 224,
        short_side_size: int = 224,
        train_transform: Optional[TrainTransform] = None,
        num_sample: int = 1,
        test_num_segment: int = 4,
        test_num_crop: int = 3,
        decode_short_side: Optional[int] = 256,
        target_fn: Optional[Callable[[float], float]] = None,
        max_retries: int = 10,
    ):
        if mode not in MODES:
            raise ValueError(f"dataset mode {mode!r}: expected one of {MODES}")
        if not entries:
            raise ValueError("dataset has no entries")
        self.entries = list(entries)
        self.mode = mode
        self.num_frames = int(num_frames)
        self.crop_size = crop_size
        self.short_side_size = short_side_size
        self.train_transform = train_transform or TrainTransform(crop_size=crop_size)
        self.num_sample = int(num_sample)
        self.test_num_segment = int(test_num_segment)
        self.test_num_crop = int(test_num_crop)
        self.decode_short_side = decode_short_side
        self.target_fn = target_fn
        self.max_retries = max_retries
        self.reader = VideoReader()
        self._tsn = TsnSampling(self.num_frames, train=True)
        self._val = EvalTransform(crop_size, short_side_size, 1, "center")
        self._test = EvalTransform(crop_size, short_side_size, self.test_num_crop, "views")

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_views(self) -> int:
        return self.test_num_segment * self.test_num_crop if self.mode == "test" else 1

    def _label(self, e: VideoEntry):
        return self.target_fn(e.label) if self.target_fn is not None else e.label

    def _frames(self, e: VideoEntry, clip_idx: Optional[int] = None) -> np.ndarray:
        n, fps, _ = self.reader.probe(e.path)
        first, last = window_frames(e, n, fps)
        size = last - first + 1
        if clip_idx is None:
            # The sampling policy's own generator, seeded from numpy's global one so
            # DataLoader worker seeding and checkpointed RNG state decide it.
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
            idx = self._tsn.frame_indices(size, rng)
        else:
            idx = view_frame_indices(size, self.num_frames, clip_idx, self.test_num_segment)
        idx = np.minimum(idx, size - 1) + first
        short = self.decode_short_side if self.mode == "train" else self.short_side_size
        return self.reader.read(e.path, idx, short)

    def _load(self, index: int):
        e = self.entries[index]
        if self.mode == "train":
            frames = self._frames(e)
            clips = [self.train_transform(frames) for _ in range(self.num_sample)]
            return clips if self.num_sample > 1 else clips[0]
        if self.mode == "val":
            n, fps, _ = self.reader.probe(e.path)
            first, last = window_frames(e, n, fps)
            size = last - first + 1
            idx = TsnSampling(self.num_frames, train=False).frame_indices(size) + first
            return self._val(self.reader.read(e.path, idx, self.short_side_size))[0]
        views = []
        for c in range(self.test_num_segment):
            views.extend(self._test(self._frames(e, clip_idx=c)))
        return torch.stack(views)

    def __getitem__(self, index: int):
        skipped: list[Skip] = []
        attempts = self.max_retries if self.mode == "train" else 1
        i = index
        for _ in range(attempts):
            e = self.entries[i]
            try:
                x = self._load(i)
                return x, self._label(e), i, skipped
            except (VideoReadError, ValueError, RuntimeError) as err:
                log.warning("skipping %s (line %d): %s", e.path, e.line, err)
                skipped.append(Skip(e.path, str(err)))
                i = (i + 1) % len(self.entries)
        if self.mode == "train":
            raise RuntimeError(
                f"{self.max_retries} videos in a row could not be read, the last "
                f"{skipped[-1].path!r}: {skipped[-1].reason}"
            )
        return None, self._label(self.entries[index]), index, skipped


def collate(batch: list) -> dict[str, Any]:
    """Batch of dataset items -> {"x", "y", "index", "skipped"}; repeated-augmentation
    lists are flattened (each clip its own row, as the official collate does); evaluation
    items whose video was unreadable are dropped (and listed in "skipped")."""
    skipped = [s for item in batch for s in item[3]]
    xs, ys, idx = [], [], []
    for x, y, i, _ in batch:
        if x is None:
            continue
        if isinstance(x, list):
            xs.extend(x)
            ys.extend([y] * len(x))
            idx.extend([i] * len(x))
        else:
            xs.append(x)
            ys.append(y)
            idx.append(i)
    if not xs:
        return {"x": None, "y": None, "index": torch.zeros(0, dtype=torch.long), "skipped": skipped}
    y = torch.tensor(ys, dtype=torch.float32 if isinstance(ys[0], float) else torch.long)
    return {"x": default_collate(xs), "y": y, "index": torch.tensor(idx), "skipped": skipped}


class LongVideoDataset(Dataset):
    """Long videos for streaming fine-tuning: `segments` x `segment_frames` frames spread
    uniformly over each video (or LVU window), augmented with ONE set of random
    parameters for the whole video (training) or resized and centre-cropped (eval),
    returned as [S, 3, T, H, W]. Items: (x, label, index, skipped)."""

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        segments: int,
        segment_frames: int,
        train: bool,
        crop_size: int = 224,
        short_side_size: int = 224,
        train_transform: Optional[TrainTransform] = None,
        decode_short_side: Optional[int] = 256,
        target_fn: Optional[Callable[[float], float]] = None,
        max_retries: int = 10,
    ):
        if not entries:
            raise ValueError("dataset has no entries")
        self.entries = list(entries)
        self.segments, self.segment_frames = int(segments), int(segment_frames)
        self.train = train
        self.train_transform = train_transform or TrainTransform(crop_size=crop_size)
        self.eval_transform = EvalTransform(crop_size, short_side_size, 1, "center")
        self.decode_short_side = decode_short_side if train else short_side_size
        self.target_fn = target_fn
        self.max_retries = max_retries
        self.reader = VideoReader()
        self._tsn = TsnSampling(self.segments * self.segment_frames, train=train)

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, e: VideoEntry) -> torch.Tensor:
        n, fps, _ = self.reader.probe(e.path)
        first, last = window_frames(e, n, fps)
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1)) if self.train else None
        idx = self._tsn.frame_indices(last - first + 1, rng) + first
        frames = self.reader.read(e.path, idx, self.decode_short_side)
        x = self.train_transform(frames) if self.train else self.eval_transform(frames)[0]
        c, _, h, w = x.shape  # [3, S*T, H, W] -> [S, 3, T, H, W]
        return x.view(c, self.segments, self.segment_frames, h, w).permute(1, 0, 2, 3, 4).contiguous()

    def __getitem__(self, index: int):
        skipped: list[Skip] = []
        i = index
        for _ in range(self.max_retries if self.train else 1):
            e = self.entries[i]
            try:
                x = self._load(e)
                y = self.target_fn(e.label) if self.target_fn else e.label
                return x, y, i, skipped
            except (VideoReadError, ValueError, RuntimeError) as err:
                log.warning("skipping %s (line %d): %s", e.path, e.line, err)
                skipped.append(Skip(e.path, str(err)))
                i = (i + 1) % len(self.entries)
        if self.train:
            raise RuntimeError(f"{self.max_retries} videos in a row could not be read")
        return None, self.entries[index].label, index, skipped
