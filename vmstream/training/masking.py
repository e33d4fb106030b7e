"""Token masks for masked video pretraining, with the official semantics.

A mask is a bool tensor [B, 1 + T*h*w], True = masked (dropped by the student), the cls
column first and always visible, patches in the student's token order (frame by frame,
row-major inside a frame). Every sample of a batch masks the same number of tokens, which
is what lets the student compact the visible tokens into one [B, L_vis, D] tensor.

The strategies (names as the official `--mask_type`, counts rounded down as the official
generators in `video_sm/datasets/masking_generator.py` round them):

* ``tube``: one spatial mask of int(ratio*h*w) patches, repeated on every frame;
* ``random``: int(ratio*T*h*w) patches anywhere in the clip;
* ``tube_row``: int(ratio*h) whole rows per frame, chosen afresh for every frame;
* ``random_row``: T*int(ratio*h) whole rows chosen over all T*h rows of the clip (so a
  frame may lose more or fewer rows than the ratio);
* ``attention``: per frame, N - int(N*ratio) visible patches drawn without replacement
  with probabilities given by the teacher's cls-to-patch attention (the official loop's
  ``torch.multinomial``), so the tokens the teacher looks at are kept more often.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "MASK_TYPES",
    "make_mask",
    "attention_mask",
    "tube_mask",
    "random_mask",
    "tube_row_mask",
    "random_row_mask",
    "with_cls",
]

MASK_TYPES = ("tube", "random", "tube_row", "random_row", "attention")


def _check(ratio: float, **sizes: int) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    for name, v in sizes.items():
        if v < 1:
            raise ValueError(f"mask {name} must be >= 1, got {v}")


def _choose(batch: int, n: int, k: int, generator: Optional[torch.Generator], device) -> Tensor:
    """[batch, n] bool with exactly k True per row at uniformly random places."""
    order = torch.rand(batch, n, generator=generator, device=device).argsort(dim=1)
    out = torch.zeros(batch, n, dtype=torch.bool, device=device)
    out.scatter_(1, order[:, :k], True)
    return out


def tube_mask(
    batch: int,
    frames: int,
    height: int,
    width: int,
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Tensor:
    """[B, T*h*w]: the same int(ratio*h*w) patches masked in every frame."""
    _check(ratio, frames=frames, height=height, width=width)
    spatial = _choose(batch, height * width, int(ratio * height * width), generator, device)
    return spatial[:, None, :].expand(batch, frames, height * width).reshape(batch, -1)


def random_mask(
    batch: int,
    frames: int,
    height: int,
    width: int,
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Tensor:
    """[B, T*h*w]: int(ratio*T*h*w) patches anywhere in the clip."""
    _check(ratio, frames=frames, height=height, width=width)
    n = frames * height * width
    return _choose(batch, n, int(ratio * n), generator, device)


def tube_row_mask(
    batch: int,
    frames: int,
    height: int,
    width: int,
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Tensor:
    """[B, T*h*w]: int(ratio*h) whole rows per frame, different rows in each frame."""
    _check(ratio, frames=frames, height=height, width=width)
    rows = _choose(batch * frames, height, int(ratio * height), generator, device)
    return rows.view(batch, frames, height, 1).expand(batch, frames, height, width).reshape(batch, -1)


def random_row_mask(
    batch: int,
    frames: int,
    height: int,
    width: int,
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Tensor:
    """[B, T*h*w]: T*int(ratio*h) whole rows chosen among the clip's T*h rows."""
    _check(ratio, frames=frames, height=height, width=width)
    rows = _choose(batch, frames * height, frames * int(ratio * height), generator, device)
    return rows.view(batch, frames, height, 1).expand(batch, frames, height, width).reshape(batch, -1)


_GENERATORS = {"tube": tube_mask, "random": random_mask, "tube_row": tube_row_mask, "random_row": random_row_mask}


def with_cls(patch_mask: Tensor) -> Tensor:
    """[B, N] patch mask -> [B, 1 + N] with the cls column first, visible (False)."""
    cls = torch.zeros(patch_mask.shape[0], 1, dtype=torch.bool, device=patch_mask.device)
    return torch.cat([cls, patch_mask.bool()], dim=1)


def attention_mask(attn: Tensor, batch: int, ratio: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """The official attention masking: [B, 1 + T*N] from the teacher's cls-to-patch
    attention `attn` [B*T, N] (rows need not sum to one, but must be >= 0 with at least
    N - int(N*ratio) positive entries, which softmax attention always has).

    Each frame keeps the first N - int(N*ratio) patches of a draw of all N without
    replacement, weighted by the attention, exactly as the official engine does.
    """
    if attn.dim() != 2 or attn.shape[0] % batch:
        raise ValueError(f"attention must be [B*T, N] with B={batch}; got shape {tuple(attn.shape)}")
    _check(ratio, patches=attn.shape[1])
    bt, n = attn.shape
    n_vis = n - int(n * ratio)
    order = torch.multinomial(attn.float(), n, replacement=False, generator=generator)
    mask = torch.ones(bt, n, dtype=torch.bool, device=attn.device)
    mask.scatter_(1, order[:, :n_vis], False)
    return with_cls(mask.view(batch, -1))


def make_mask(
    kind: str,
    batch: int,
    frames: int,
    height: int,
    width: int,
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Tensor:
    """A [B, 1 + T*h*w] mask of one of the non-attention strategies (cls visible)."""
    if kind == "attention":
        raise ValueError("mask type 'attention' needs the teacher's attention: use attention_mask(attn, ...)")
    if kind not in _GENERATORS:
        raise ValueError(f"mask type {kind!r} is not one of {', '.join(MASK_TYPES)}")
    return with_cls(_GENERATORS[kind](batch, frames, height, width, ratio, generator=generator, device=device))
