"""Image-text and video-text pairs for multimodal pretraining, from real files.

As the official pretraining datasets (``dataset/sqlite_dataset.py`` over the JSON
annotations, ``dataset/__init__.py``'s train transform):

* an image is read with PIL as RGB and becomes a one-frame video [3, 1, H, W];
* a video gets `num_frames` frames by the official ``rand`` sampling (the clip cut into
  `num_frames` equal intervals, one random frame in each; shorter videos repeat the last);
* both go through one transform, the same for every frame: RandomResizedCrop to
  `image_res` with scale [0.5, 1] and ratio [3/4, 4/3] (bicubic, antialiased, as
  torchvision's), a horizontal flip with probability 0.5, /255, ImageNet mean/std;
* the caption (one of a list, drawn per visit) is cleaned with ``pre_text``;
* ``idx`` is the entry's index over all corpora of the media type; VTC and VTM treat
  pairs with equal ``idx`` as positives. (The official ``ConcatDataset`` passes each
  file's own index, so entries of two corpora could collide; ours cannot.)

A file that cannot be read is replaced by another random entry (the official retry),
with a warning naming it; after `max_retries` failures in a row the error is raised.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from .augment import normalize, random_resized_crop_params
from .mm_annotations import MediaText, pre_text
from .video_reader import VideoReader, VideoReadError

__all__ = ["PairTransform", "MediaTextDataset", "rand_frame_indices", "collate_pairs", "read_image"]

log = logging.getLogger(__name__)


def rand_frame_indices(num_frames: int, vlen: int, rng: random.Random) -> list[int]:
    """The official ``get_frame_indices(sample='rand')``."""
    n = min(num_frames, vlen)
    edges = np.linspace(0, vlen, n + 1).astype(int)
    ranges = [(int(edges[i]), int(edges[i + 1]) - 1) for i in range(n)]
    if all(a < b for a, b in ranges):
        idx = [rng.randrange(a, b) for a, b in ranges]
    else:  # an interval of one frame: the official falls back to a sorted random subset
        idx = sorted(rng.sample(range(vlen), n))
    return idx + [idx[-1]] * (num_frames - len(idx))


class PairTransform:
    """uint8 [T, 3, H, W] -> normalised float [3, T, S, S]: one crop and flip for all frames."""

    def __init__(self, image_res: int = 224, scale=(0.5, 1.0), flip: bool = True):
        self.image_res, self.scale, self.flip = image_res, tuple(scale), flip

    def __call__(self, frames: Tensor) -> Tensor:
        top, left, h, w = random_resized_crop_params(frames.shape[-2], frames.shape[-1], self.scale)
        out = TF.resized_crop(
            frames,
            top,
            left,
            h,
            w,
            [self.image_res, self.image_res],
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
        )
        if self.flip and random.random() < 0.5:
            out = out.flip(-1)
        return normalize(out).permute(1, 0, 2, 3).contiguous()


def read_image(path: str) -> Tensor:
    """uint8 [1, 3, H, W]: the image as a one-frame video."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise VideoReadError(f"{path}: cannot read the image ({e})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)


class MediaTextDataset(Dataset):
    """Items: {"x": [3, T, S, S] (T = 1 for images), "caption": str, "idx": int, "media": str}."""

    def __init__(
        self,
        entries: Sequence[MediaText],
        media: str,
        transform: PairTransform,
        num_frames: int = 8,
        decode_short_side: Optional[int] = None,
        max_retries: int = 10,
    ):
        if media not in ("image", "video"):
            raise ValueError(f"media {media!r} is not 'image' or 'video'")
        if not entries:
            raise ValueError(f"no {media}-text entries")
        self.entries, self.media, self.transform = list(entries), media, transform
        self.num_frames = num_frames if media == "video" else 1
        self.decode_short_side = decode_short_side
        self.max_retries = max_retries
        self.reader = VideoReader() if media == "video" else None

    def __len__(self) -> int:
        return len(self.entries)

    def _frames(self, path: str) -> Tensor:
        if self.reader is None:
            return read_image(path)
        n, _, _ = self.reader.probe(path)
        idx = rand_frame_indices(self.num_frames, n, random.Random(random.getrandbits(64)))
        frames = self.reader.read(path, idx, self.decode_short_side)
        return torch.from_numpy(frames).permute(0, 3, 1, 2)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = index
        for _ in range(self.max_retries):
            e = self.entries[i]
            try:
                x = self.transform(self._frames(e.path))
            except (VideoReadError, OSError, ValueError, RuntimeError) as err:
                log.warning("skipping %s %s (entry %d): %s", self.media, e.path, i, err)
                i = random.randrange(len(self.entries))
                continue
            caption = pre_text(random.choice(e.captions))
            return {"x": x, "caption": caption, "idx": i, "media": self.media}
        raise RuntimeError(
            f"{self.max_retries} {self.media} files in a row could not be read; the last: {self.entries[i].path}"
        )


def collate_pairs(items: list[dict]) -> dict[str, Any]:
    """{"x": [B, 3, T, S, S], "text": [B] str, "idx": [B] long, "media": str}."""
    media = {it["media"] for it in items}
    if len(media) != 1:
        raise ValueError(f"a batch mixes media types {sorted(media)}")
    return {
        "x": torch.stack([it["x"] for it in items]),
        "text": [it["caption"] for it in items],
        "idx": torch.tensor([it["idx"] for it in items], dtype=torch.long),
        "media": media.pop(),
    }
