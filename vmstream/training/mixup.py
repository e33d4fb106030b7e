"""Mixup / CutMix for video batches, label smoothing, and the two soft-target losses.

Semantics of the official fine-tuning (timm's Mixup as used by OpenGVLab/VideoMamba):
the batch is mixed with its reverse (sample i with sample B-1-i); CutMix cuts the same
box out of every frame of a clip (the box lives on the last two axes of
[B, C, T, H, W]), and lambda is corrected to the box area actually pasted. Targets are
smoothed one-hot vectors mixed with the same lambda, so every row sums to 1. Randomness
comes from numpy's global generator, which checkpoints save and restore.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def smooth_one_hot(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), on)


def mixup_target(target: Tensor, num_classes: int, lam, smoothing: float = 0.0) -> Tensor:
    """lam * onehot(y) + (1 - lam) * onehot(reversed y), smoothed; `lam` a float or [B, 1]."""
    y1 = smooth_one_hot(target, num_classes, smoothing)
    y2 = smooth_one_hot(target.flip(0), num_classes, smoothing)
    return y1 * lam + y2 * (1.0 - lam)


def rand_box(h: int, w: int, lam: float, rng=np.random) -> tuple[int, int, int, int]:
    """A box of area about (1 - lam) * h * w centred uniformly, clipped to the frame."""
    ratio = np.sqrt(1.0 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = rng.randint(0, h), rng.randint(0, w)
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    return int(y0), int(y1), int(x0), int(x1)


def rand_box_minmax(h: int, w: int, minmax: Sequence[float], rng=np.random):
    ch = rng.randint(int(h * minmax[0]), int(h * minmax[1]))
    cw = rng.randint(int(w * minmax[0]), int(w * minmax[1]))
    y0 = rng.randint(0, h - ch)
    x0 = rng.randint(0, w - cw)
    return int(y0), int(y0 + ch), int(x0), int(x0 + cw)


def cutmix_box_and_lam(h: int, w: int, lam: float, minmax=None, correct_lam: bool = True):
    box = rand_box_minmax(h, w, minmax) if minmax is not None else rand_box(h, w, lam)
    if correct_lam or minmax is not None:
        y0, y1, x0, x1 = box
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return box, lam


class Mixup:
    """Mixup and CutMix on [B, C, T, H, W] clips (any [B, ..., H, W] works).

    mode: "batch" (one lambda for the whole batch), "pair" (one per mirrored pair),
    "elem" (one per sample). `prob` is the chance to mix at all, `switch_prob` the chance
    to use CutMix when both are enabled. Returns (mixed clips, soft targets [B, classes]).
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        cutmix_minmax: Optional[Sequence[float]] = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
    ):
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"mixup mode {mode!r}: expected 'batch', 'pair' or 'elem'")
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise ValueError(f"cutmix_minmax {cutmix_minmax!r}: expected (min, max)")
            cutmix_alpha = 1.0
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutmix_minmax = cutmix_minmax
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.mode = mode
        self.correct_lam = correct_lam
        self.label_smoothing = float(label_smoothing)
        self.num_classes = int(num_classes)
        self.enabled = True

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        lam = np.ones(n, dtype=np.float32)
        use_cut = np.zeros(n, dtype=bool)
        if not self.enabled:
            return lam, use_cut
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cut = np.random.rand(n) < self.switch_prob
            lam_mix = np.where(
                use_cut,
                np.random.beta(self.cutmix_alpha, self.cutmix_alpha, size=n),
                np.random.beta(self.mixup_alpha, self.mixup_alpha, size=n),
            )
        elif self.mixup_alpha > 0:
            lam_mix = np.random.beta(self.mixup_alpha, self.mixup_alpha, size=n)
        else:
            use_cut = np.ones(n, dtype=bool)
            lam_mix = np.random.beta(self.cutmix_alpha, self.cutmix_alpha, size=n)
        apply = np.random.rand(n) < self.prob
        lam = np.where(apply, lam_mix.astype(np.float32), lam)
        use_cut = use_cut & apply
        return lam, use_cut

    def _mix_batch(self, x: Tensor):
        lam, use_cut = self._draw(1)
        lam, use_cut = float(lam[0]), bool(use_cut[0])
        if lam == 1.0:
            return 1.0
        if use_cut:
            (y0, y1, x0, x1), lam = cutmix_box_and_lam(
                x.shape[-2], x.shape[-1], lam, self.cutmix_minmax, self.correct_lam
            )
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        else:
            flipped = x.flip(0).mul_(1.0 - lam)
            x.mul_(lam).add_(flipped)
        return lam

    def _mix_per_sample(self, x: Tensor, pairs: bool):
        b = x.shape[0]
        n = b // 2 if pairs else b
        lam, use_cut = self._draw(n)
        orig = x.clone()
        for i in range(n):
            j = b - i - 1
            if lam[i] == 1.0:
                continue
            if use_cut[i]:
                (y0, y1, x0, x1), lam[i] = cutmix_box_and_lam(
                    x.shape[-2], x.shape[-1], float(lam[i]), self.cutmix_minmax, self.correct_lam
                )
                x[i][..., y0:y1, x0:x1] = orig[j][..., y0:y1, x0:x1]
                if pairs:
                    x[j][..., y0:y1, x0:x1] = orig[i][..., y0:y1, x0:x1]
            else:
                x[i] = orig[i] * lam[i] + orig[j] * (1 - lam[i])
                if pairs:
                    x[j] = orig[j] * lam[i] + orig[i] * (1 - lam[i])
        if pairs:
            lam = np.concatenate([lam, lam[::-1]])
        return torch.tensor(lam, dtype=x.dtype, device=x.device).unsqueeze(1)

    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] % 2 != 0:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {x.shape[0]}")
        if self.mode == "batch":
            lam = self._mix_batch(x)
        else:
            lam = self._mix_per_sample(x, pairs=self.mode == "pair")
        return x, mixup_target(target, self.num_classes, lam, self.label_smoothing)


class SoftTargetCrossEntropy(nn.Module):
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class LabelSmoothingCrossEntropy(nn.Module):
    """(1 - s) * NLL + s * mean over classes of -log p (timm's definition)."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing {smoothing}: expected 0 <= s < 1")
        self.smoothing = smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logp = F.log_softmax(logits.float(), dim=-1)
        nll = -logp.gather(-1, target.long().unsqueeze(1)).squeeze(1)
        smooth = -logp.mean(dim=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * smooth).mean()
