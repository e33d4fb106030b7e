"""Clip transforms for training and evaluation, consistent across the frames of a clip.

Every random parameter (crop box, flip, RandAugment op and magnitude) is drawn once per
clip and applied to all T frames, so motion is not destroyed by augmentation. Frames come
in as uint8 [T, H, W, C] (what decoders hand out) and leave as float32 [3, T, H, W]
normalised with IMAGENET_MEAN / IMAGENET_STD (the model's input layout).

The training pipeline follows the official fine-tuning (`kinetics_sparse.py` `_aug_frame`
of OpenGVLab/VideoMamba): RandAugment on the uint8 frames, normalise, random resized crop
(area 0.08-1, aspect 3/4-4/3, bilinear), horizontal flip (off for SSv2), random erasing.
The image ops are torchvision's tensor kernels; RandAugment's policy string and
magnitude rules (``rand-m7-n4-mstd0.5-inc1``) are timm's. Randomness comes from Python's
`random` (as the official code), so checkpoints restore it exactly.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as TF
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode

from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD

_MAX_LEVEL = 10.0
_FILL = [128.0, 128.0, 128.0]

RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
# "inc1": ops whose strength grows with the magnitude (timm's increasing variants).
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_CHOICE_WEIGHTS_0 = {
    "Rotate": 0.3,
    "ShearX": 0.2,
    "ShearY": 0.2,
    "TranslateXRel": 0.1,
    "TranslateYRel": 0.1,
    "Color": 0.025,
    "Sharpness": 0.025,
    "AutoContrast": 0.025,
    "Solarize": 0.005,
    "SolarizeAdd": 0.005,
    "Contrast": 0.005,
    "Brightness": 0.005,
    "Equalize": 0.005,
    "Posterize": 0,
    "Invert": 0,
}


def _negate_half(v: float) -> float:
    return -v if random.random() > 0.5 else v


def _level_to_arg(name: str, level: float, translate_pct: float = 0.45):
    """timm's magnitude -> op argument rules (level in [0, 10])."""
    f = level / _MAX_LEVEL
    if name == "Rotate":
        return _negate_half(f * 30.0)
    if name in ("ShearX", "ShearY"):
        return _negate_half(f * 0.3)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _negate_half(f * translate_pct)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return f * 1.8 + 0.1
    if name.endswith("Increasing") and name[:-10] in ("Color", "Contrast", "Brightness", "Sharpness"):
        return 1.0 + _negate_half(f * 0.9)
    if name == "Posterize":
        return int(f * 4)
    if name == "PosterizeIncreasing":
        return 4 - int(f * 4)
    if name == "Solarize":
        return int(f * 256)
    if name == "SolarizeIncreasing":
        return 256 - int(f * 256)
    if name == "SolarizeAdd":
        return int(f * 110)
    return None


def _apply_op(name: str, clip: Tensor, arg, interp: InterpolationMode) -> Tensor:
    """One RandAugment op on a uint8 clip [T, C, H, W], same parameters for every frame."""
    base = name[:-10] if name.endswith("Increasing") else name
    h, w = clip.shape[-2:]
    if base == "AutoContrast":
        return F.autocontrast(clip)
    if base == "Equalize":
        return F.equalize(clip)
    if base == "Invert":
        return F.invert(clip)
    if base == "Rotate":
        return F.rotate(clip, float(arg), interpolation=interp, fill=_FILL)
    if base == "Posterize":
        return clip if arg >= 8 else F.posterize(clip, int(arg))
    if base == "Solarize":
        return clip if arg >= 256 else F.solarize(clip, float(arg))
    if base == "SolarizeAdd":
        added = (clip.to(torch.int16) + int(arg)).clamp_(max=255).to(torch.uint8)
        return torch.where(clip < 128, added, clip)
    if base == "Color":
        return F.adjust_saturation(clip, float(arg))
    if base == "Contrast":
        return F.adjust_contrast(clip, float(arg))
    if base == "Brightness":
        return F.adjust_brightness(clip, float(arg))
    if base == "Sharpness":
        return F.adjust_sharpness(clip, float(arg))
    # PIL's affine ops act about the top-left corner; so do these (center=[0, 0]).
    if base in ("ShearX", "ShearY"):
        deg = math.degrees(math.atan(float(arg)))
        shear = [deg, 0.0] if base == "ShearX" else [0.0, deg]
        return F.affine(
            clip, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=interp, fill=_FILL, center=[0, 0]
        )
    if base == "TranslateXRel":
        return F.affine(
            clip,
            angle=0.0,
            translate=[-float(arg) * w, 0.0],
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=interp,
            fill=_FILL,
        )
    if base == "TranslateYRel":
        return F.affine(
            clip,
            angle=0.0,
            translate=[0.0, -float(arg) * h],
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=interp,
            fill=_FILL,
        )
    raise ValueError(f"unknown RandAugment op {name!r}")


@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    increasing: bool = False
    weight_idx: Optional[int] = None


def parse_rand_augment(config: str) -> RandAugmentSpec:
    """Parse timm's policy string, e.g. ``rand-m7-n4-mstd0.5-inc1``."""
    parts = config.split("-")
    if not parts or parts[0] != "rand":
        raise ValueError(f"RandAugment policy {config!r}: expected 'rand-m<M>-n<N>[-mstd<S>][-inc1]'")
    kw: dict = {}
    for p in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(\d.*)", p)
        if not m:
            raise ValueError(f"RandAugment policy {config!r}: cannot read {p!r}")
        key, val = m.groups()
        if key == "m":
            kw["magnitude"] = float(val)
        elif key == "n":
            kw["num_ops"] = int(val)
        elif key == "mstd":
            kw["magnitude_std"] = float(val)
        elif key == "inc":
            kw["increasing"] = bool(int(val))
        elif key == "w":
            kw["weight_idx"] = int(val)
        else:
            raise ValueError(f"RandAugment policy {config!r}: unknown key {key!r}")
    return RandAugmentSpec(**kw)


class RandAugment:
    """RandAugment for clips: `num_ops` ops drawn with replacement, each applied with
    probability 0.5 at a magnitude drawn from N(m, mstd) clipped to [0, 10]."""

    def __init__(self, spec: RandAugmentSpec | str, interpolation: str = "bilinear"):
        self.spec = parse_rand_augment(spec) if isinstance(spec, str) else spec
        self.ops = RAND_INCREASING_TRANSFORMS if self.spec.increasing else RAND_TRANSFORMS
        self.prob = 0.5
        # torchvision's tensor affine kernels offer nearest and bilinear only.
        self.interp = InterpolationMode.NEAREST if interpolation == "nearest" else InterpolationMode.BILINEAR
        self.weights = None
        if self.spec.weight_idx is not None:
            w = np.array([_CHOICE_WEIGHTS_0[o] for o in RAND_TRANSFORMS], dtype=np.float64)
            self.weights = w / w.sum()
            self.ops = RAND_TRANSFORMS

    def __call__(self, clip: Tensor) -> Tensor:
        if self.weights is None:
            names = [self.ops[int(i)] for i in np.random.choice(len(self.ops), self.spec.num_ops)]
        else:
            names = [
                self.ops[int(i)]
                for i in np.random.choice(len(self.ops), self.spec.num_ops, replace=False, p=self.weights)
            ]
        for name in names:
            if random.random() > self.prob:
                continue
            mag = self.spec.magnitude
            if self.spec.magnitude_std > 0:
                mag = random.gauss(mag, self.spec.magnitude_std)
            mag = min(_MAX_LEVEL, max(0.0, mag))
            clip = _apply_op(name, clip, _level_to_arg(name, mag), self.interp)
        return clip


# ---------------------------------------------------------------------- geometry


def random_resized_crop_params(
    height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style crop; falls back to a centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def multi_scale_crop_params(
    height: int, width: int, crop: int, scales=(1.0, 0.875, 0.75, 0.66), max_distort: int = 1, fix_crop: bool = True
):
    """TSN's multi-scale crop (the official ``GroupMultiScaleCrop`` of masked pretraining):
    a crop side pair from base*scales (sides within 3 px of `crop` snap to it; aspect
    distortion at most `max_distort` steps), placed at one of the 13 fixed offsets
    (corners, centre, edge centres, quarter points; `fix_crop`) or anywhere; resized to
    `crop` afterwards. Returns (top, left, h, w)."""
    base = min(height, width)
    sizes = [crop if abs(int(base * s) - crop) < 3 else int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    h, w = random.choice(pairs)
    if not fix_crop:
        return random.randint(0, height - h), random.randint(0, width - w), h, w
    hs, ws = (height - h) // 4, (width - w) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    top, left = random.choice(grid)
    return top * hs, left * ws, h, w


def resize_short_side(clip: Tensor, size: int) -> Tensor:
    """Resize [.., H, W] so the short side is `size` (bilinear, aspect kept)."""
    h, w = clip.shape[-2:]
    if min(h, w) == size:
        return clip
    if h <= w:
        nh, nw = size, int(round(w * size / h))
    else:
        nh, nw = int(round(h * size / w)), size
    return F.resize(clip, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=False)


def center_crop(clip: Tensor, size: int) -> Tensor:
    return F.center_crop(clip, [size, size])


def spatial_views(clip: Tensor, size: int, num_crops: int) -> list[Tensor]:
    """The official test crops: `num_crops` squares of side `size` spaced evenly along the
    long side (left/centre/right for 3); one crop is the centre. `clip` has short side
    `size` already."""
    h, w = clip.shape[-2:]
    long_side = max(h, w)
    views = []
    for k in range(num_crops):
        if num_crops == 1:
            start = int((long_side - size) / 2)
        else:
            start = int(k * (long_side - size) / (num_crops - 1))
        if h >= w:
            views.append(clip[..., start : start + size, :])
        else:
            views.append(clip[..., :, start : start + size])
    return views


# ---------------------------------------------------------------------- normalise / erase


def to_tensor_clip(frames) -> Tensor:
    """uint8 frames [T, H, W, C] (numpy or torch) -> uint8 tensor [T, C, H, W]."""
    t = torch.as_tensor(np.ascontiguousarray(frames)) if not isinstance(frames, Tensor) else frames
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2).contiguous()


def normalize(clip_u8: Tensor) -> Tensor:
    """uint8 [T, C, H, W] -> float32 [T, C, H, W] normalised with ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (clip_u8.float().div_(255.0) - mean) / std


def random_erase_(
    clip: Tensor, prob: float, area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3)), per_frame: bool = True
) -> Tensor:
    """Random erasing ('pixel' mode: per-pixel normal noise) of a normalised [T, C, H, W]
    clip. `per_frame` draws a box per frame, as the official fine-tuning does; False
    erases the same box in every frame."""
    t, c, h, w = clip.shape
    targets = range(t) if per_frame else [None]
    for i in targets:
        if random.random() > prob:
            continue
        for _ in range(10):
            target = random.uniform(*area) * h * w
            aspect = math.exp(random.uniform(*log_ratio))
            eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if eh < h and ew < w:
                top, left = random.randint(0, h - eh), random.randint(0, w - ew)
                if i is None:
                    clip[:, :, top : top + eh, left : left + ew] = torch.randn(t, c, eh, ew)
                else:
                    clip[i, :, top : top + eh, left : left + ew] = torch.randn(c, eh, ew)
                break
    return clip


# ---------------------------------------------------------------------- pipelines


@dataclass
class TrainTransform:
    """uint8 frames [T, H, W, 3] -> normalised float [3, T, crop, crop], randomly augmented."""

    crop_size: int = 224
    rand_augment: Optional[str] = "rand-m7-n4-mstd0.5-inc1"
    flip: bool = True
    crop: str = "random_resized"  # or "multi_scale"
    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (0.75, 1.3333)
    reprob: float = 0.25
    erase_per_frame: bool = True
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.crop not in ("random_resized", "multi_scale"):
            raise ValueError(f"crop {self.crop!r}: expected 'random_resized' or 'multi_scale'")
        self._ra = RandAugment(self.rand_augment, self.interpolation) if self.rand_augment else None

    def __call__(self, frames) -> Tensor:
        clip = to_tensor_clip(frames)
        if self._ra is not None:
            clip = self._ra(clip)
        x = normalize(clip)
        h, w = x.shape[-2:]
        if self.crop == "random_resized":
            top, left, ch, cw = random_resized_crop_params(h, w, tuple(self.scale), tuple(self.ratio))
        else:
            top, left, ch, cw = multi_scale_crop_params(h, w, self.crop_size)
        x = x[..., top : top + ch, left : left + cw]
        x = TF.interpolate(x, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False)
        if self.flip and random.random() < 0.5:
            x = x.flip(-1)
        if self.reprob > 0:
            x = random_erase_(x, self.reprob, per_frame=self.erase_per_frame)
        return x.permute(1, 0, 2, 3).contiguous()


@dataclass
class EvalTransform:
    """Deterministic: resize the short side to `short_side`, then either one centre crop of
    `crop_size` (validation) or `num_crops` crops along the long side (test views).
    Returns a list of normalised float clips [3, T, h, w]."""

    crop_size: int = 224
    short_side: int = 224
    num_crops: int = 1
    mode: str = "center"  # "center" (validation) or "views" (official test crops)

    def __call__(self, frames) -> list[Tensor]:
        clip = resize_short_side(to_tensor_clip(frames), self.short_side)
        if self.mode == "center":
            views = [center_crop(clip, self.crop_size)]
        else:
            views = spatial_views(clip, self.short_side, self.num_crops)
        return [normalize(v).permute(1, 0, 2, 3).contiguous() for v in views]
