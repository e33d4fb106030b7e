"""Distillation targets and losses of masked pretraining, as the official
``engine_for_pretraining_videomamba.py``.

Targets are the teacher's features at the student's visible places: the teacher output
[K, B, 1 + N, C] is already L2-normalised by the teacher (``clip_norm_type='l2'``), and
the engine keeps the places the mask leaves visible (cls first), computed without
gradients. The student's predictions are L2-normalised by its decoders, so for the
official default loss (``l2``) each token contributes 2 - 2 cos(pred, target), i.e. the
squared distance of two unit vectors.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSS_TYPES", "visible_targets", "distill_loss", "cosine_distance_loss"]

LOSS_TYPES = ("l2", "mse", "smooth_l1")


def visible_targets(teacher_out: Tensor, mask: Tensor) -> Tensor:
    """Teacher features [K, B, 1 + N, C] (or [B, 1 + N, C]) at the visible places of `mask`
    [B, 1 + N] (True = masked) -> [K, B, 1 + visible, C] ([B, ...] without K)."""
    squeeze = teacher_out.dim() == 3
    t = teacher_out.unsqueeze(0) if squeeze else teacher_out
    K, B, L, C = t.shape
    if mask.shape != (B, L):
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match the teacher's tokens [B={B}, {L}] "
            "(does the teacher return the cls token? set clip_return_cls)"
        )
    vis = t[:, ~mask].reshape(K, B, -1, C)
    return vis[0] if squeeze else vis


def cosine_distance_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean over tokens of 2 - 2 <pred, target> (the official 'l2' loss; for unit vectors
    this is |pred - target|^2)."""
    return (2 - 2 * (pred * target).sum(dim=-1)).mean()


def distill_loss(pred: Tensor, target: Tensor, kind: str = "l2") -> Tensor:
    """The official CLIP distillation loss: 'l2' (2 - 2cos, the default), 'mse' or
    'smooth_l1' (torch's mean reductions, beta = 1, as nn.MSELoss / nn.SmoothL1Loss)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if kind == "l2":
        return cosine_distance_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    raise ValueError(f"clip_loss_type {kind!r} is not one of {', '.join(LOSS_TYPES)}")
