"""Mask strategies: ratio, per-frame structure, cls visible (official semantics)."""

import pytest
import torch

from vmstream.training.masking import MASK_TYPES, attention_mask, make_mask, with_cls

B, T, H, W = 3, 4, 5, 6


def _grid(mask):
    assert mask.dtype == torch.bool and mask.shape == (B, 1 + T * H * W)
    assert not mask[:, 0].any(), "cls must stay visible"
    return mask[:, 1:].view(B, T, H, W)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_tube_same_patches_every_frame():
    g = _grid(make_mask("tube", B, T, H, W, 0.8, generator=_gen()))
    assert (g.sum(dim=(2, 3)) == int(0.8 * H * W)).all()
    assert (g == g[:, :1]).all()
    assert not (g[0] == g[1]).all()  # samples differ


def test_random_ratio_over_clip_and_frames_differ():
    g = _grid(make_mask("random", B, T, H, W, 0.75, generator=_gen()))
    assert (g.sum(dim=(1, 2, 3)) == int(0.75 * T * H * W)).all()
    assert not (g == g[:, :1]).all()


def test_tube_row_whole_rows_per_frame():
    g = _grid(make_mask("tube_row", B, T, H, W, 0.6, generator=_gen()))
    rows = g.all(dim=3)
    assert (g.any(dim=3) == rows).all(), "a row is either fully masked or fully visible"
    assert (rows.sum(dim=2) == int(0.6 * H)).all(), "each frame loses int(ratio*h) rows"
    assert not (rows == rows[:, :1]).all(), "rows are drawn afresh per frame"


def test_random_row_rows_over_clip():
    torch.manual_seed(0)
    counts = set()
    for seed in range(20):
        g = _grid(make_mask("random_row", B, T, H, W, 0.6, generator=_gen(seed)))
        rows = g.all(dim=3)
        assert (g.any(dim=3) == rows).all()
        assert (rows.sum(dim=(1, 2)) == T * int(0.6 * H)).all()
        counts.update(rows.sum(dim=2).flatten().tolist())
    assert len(counts) > 1, "per-frame row counts vary (rows are chosen over the clip)"


def test_attention_mask_per_frame_count_and_bias():
    n = H * W
    attn = torch.full((B * T, n), 1e-3)
    attn[:, :3] = 10.0  # the teacher looks at patches 0..2 of every frame
    m = attention_mask(attn.softmax(-1), B, 0.8, generator=_gen())
    g = _grid(m).view(B, T, n)
    n_vis = n - int(n * 0.8)
    assert ((~g).sum(-1) == n_vis).all(), "N - int(N*ratio) visible per frame"
    assert (~g[..., :3]).all(), "the attended patches are kept"


def test_attention_mask_follows_distribution():
    n = 10
    probs = torch.linspace(1, 10, n)
    keep = torch.zeros(n)
    g = _gen(1)
    for _ in range(300):
        keep += (~attention_mask(probs[None].repeat(2, 1), 1, 0.9, generator=g)[0, 1:]).float().view(2, n).sum(0)
    assert keep[-1] > 3 * keep[0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="ratio"):
        make_mask("tube", B, T, H, W, 1.0)
    with pytest.raises(ValueError, match="not one of"):
        make_mask("blocks", B, T, H, W, 0.5)
    with pytest.raises(ValueError, match="attention"):
        make_mask("attention", B, T, H, W, 0.5)
    with pytest.raises(ValueError, match=r"\[B\*T, N\]"):
        attention_mask(torch.rand(5, 4), 2, 0.5)
    assert MASK_TYPES == ("tube", "random", "tube_row", "random_row", "attention")
    assert with_cls(torch.ones(2, 3, dtype=torch.bool)).tolist() == [[False, True, True, True]] * 2
