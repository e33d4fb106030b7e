"""Annotation lists in the official formats, the known datasets, and LVU trimming.

The official fine-tuning reads a header-less CSV/TSV per split (``train.csv``,
``val.csv``, ``test.csv``) of ``path<split>label`` rows (Kinetics-400, SSv2, Breakfast,
COIN); LVU rows add the video's duration in seconds, ``path,label,duration``, and long
LVU videos are cut into sliding windows (`lvu_windows`). The split character and a path
prefix are configurable, as in the official ``--split`` / ``--prefix``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

# Class counts of the datasets the recipes cover (official `datasets/build.py`).
DATASET_CLASSES = {
    "k400": 400,
    "ssv2": 174,
    "breakfast": 10,
    "coin": 180,
    "lvu_relation": 4,
    "lvu_speak": 5,
    "lvu_scene": 6,
    "lvu_director": 10,
    "lvu_genre": 4,
    "lvu_writer": 10,
    "lvu_year": 9,
    "lvu_like": 1,  # regression
    "lvu_view": 1,  # regression
    "synthetic_memory": 0,  # set by its config
}
REGRESSION_DATASETS = ("lvu_like", "lvu_view")


@dataclass(frozen=True)
class VideoEntry:
    """One training sample: a video (or a window of one) and its label.

    `start` / `end` are seconds (None = the whole video); `label` is an int class id, or a
    float target for regression tasks.
    """

    path: str
    label: float | int
    start: Optional[float] = None
    end: Optional[float] = None
    duration: Optional[float] = None
    line: int = 0  # 1-based line in the list, for error messages

    @property
    def name(self) -> str:
        """The video id the official evaluation groups views by (file stem)."""
        stem = os.path.splitext(os.path.basename(self.path))[0]
        if self.start is None:
            return stem
        return f"{stem}@{self.start:g}-{self.end:g}"


class AnnotationError(ValueError):
    pass


def read_video_list(
    list_path: str,
    split: str = " ",
    prefix: str = "",
    regression: bool = False,
    with_duration: bool = False,
) -> list[VideoEntry]:
    """Read a header-less ``path<split>label[<split>duration]`` list.

    `split` is the column separator (" ", ",", or "\\t"); `prefix` is joined in front of
    every relative path. Empty lines and lines starting with ``#`` are skipped. A
    malformed line raises `AnnotationError` naming the file and the line.
    """
    if not os.path.exists(list_path):
        raise AnnotationError(f"annotation list {list_path!r} does not exist")
    sep = "\t" if split in ("\\t", "tab") else split
    entries: list[VideoEntry] = []
    with open(list_path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            # rsplit: a path may contain the separator (spaces in file names), labels don't.
            ncols = 3 if with_duration else 2
            cols = line.rsplit(sep, ncols - 1) if sep != " " else line.rsplit(None, ncols - 1)
            if len(cols) < ncols:
                want = "path, label, duration" if with_duration else "path, label"
                raise AnnotationError(
                    f"{list_path}:{n}: expected {ncols} columns ({want}) separated by {sep!r}, got {line!r}"
                )
            path = cols[0].strip()
            try:
                label = float(cols[1]) if regression else int(cols[1])
            except ValueError:
                kind = "a number" if regression else "an integer class id"
                raise AnnotationError(f"{list_path}:{n}: label {cols[1]!r} is not {kind}") from None
            duration = None
            if with_duration:
                try:
                    duration = float(cols[2])
                except ValueError:
                    raise AnnotationError(f"{list_path}:{n}: duration {cols[2]!r} is not a number") from None
            if prefix and not os.path.isabs(path) and "://" not in path:
                path = os.path.join(prefix, path)
            entries.append(VideoEntry(path, label, duration=duration, line=n))
    if not entries:
        raise AnnotationError(f"annotation list {list_path!r} has no entries")
    return entries


def check_labels(entries: Sequence[VideoEntry], num_classes: int, list_path: str = "") -> None:
    """Every class id must be in [0, num_classes)."""
    for e in entries:
        if not 0 <= int(e.label) < num_classes:
            raise AnnotationError(
                f"{list_path or 'annotation list'}:{e.line}: label {e.label} is outside "
                f"[0, {num_classes}) for {e.path!r}"
            )


def lvu_windows(duration: float, window: float = 60.0, stride: float = 16.0) -> list[tuple[float, float]]:
    """LVU's sliding-window trimming (official `datasets/lvu.py`).

    A video shorter than `window` is one piece (0, duration). Otherwise windows start
    every `stride` seconds at 0, stride, ... < duration; a window that would run past the
    end is cut at the end and kept only if it is at least half a window long.
    """
    if duration <= 0:
        raise ValueError(f"duration {duration}: expected > 0")
    if window <= 0 or stride <= 0:
        raise ValueError(f"window {window} / stride {stride}: both must be > 0")
    if duration < window:
        return [(0.0, float(duration))]
    out = []
    start = 0.0
    while start < int(duration):
        end = start + window
        if end > duration:
            if duration - start >= window / 2:
                out.append((start, float(duration)))
        else:
            out.append((start, end))
        start += stride
    return out


def trim_entries(entries: Sequence[VideoEntry], window: float, stride: float) -> list[VideoEntry]:
    """Expand every entry with a duration into its LVU windows (same label)."""
    out = []
    for e in entries:
        if e.duration is None:
            raise AnnotationError(
                f"line {e.line}: {e.path!r} has no duration; LVU trimming needs 'path,label,duration' rows"
            )
        for s, t in lvu_windows(e.duration, window, stride):
            out.append(VideoEntry(e.path, e.label, s, t, e.duration, e.line))
    return out


@dataclass(frozen=True)
class TargetNorm:
    """z-score of regression targets (LVU like / view): fit on the training list, stored
    in the checkpoint, inverted on predictions."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, values: Sequence[float]) -> "TargetNorm":
        n = len(values)
        if n == 0:
            raise ValueError("cannot fit a target normalisation on no values")
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
        return cls(mean, math.sqrt(var) if var > 0 else 1.0)

    def apply(self, v: float) -> float:
        return (v - self.mean) / self.std

    def invert(self, v):
        return v * self.std + self.mean
