"""Clip-consistent augmentation, RandAugment policy parsing, mixup / cutmix targets."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vmstream.training.augment import (
    EvalTransform,
    TrainTransform,
    parse_rand_augment,
    random_resized_crop_params,
    spatial_views,
)
from vmstream.training.mixup import (
    LabelSmoothingCrossEntropy,
    Mixup,
    SoftTargetCrossEntropy,
    mixup_target,
    smooth_one_hot,
)


def _frames(t=4, h=40, w=56, same=True, seed=0):
    g = np.random.default_rng(seed)
    f = g.integers(0, 255, size=(1 if same else t, h, w, 3), dtype=np.uint8)
    return np.repeat(f, t, axis=0) if same else f


def test_parse_rand_augment():
    s = parse_rand_augment("rand-m7-n4-mstd0.5-inc1")
    assert (s.magnitude, s.num_ops, s.magnitude_std, s.increasing) == (7, 4, 0.5, True)
    s = parse_rand_augment("rand-m5-n2-mstd0.25-inc1")
    assert (s.magnitude, s.num_ops, s.magnitude_std) == (5, 2, 0.25)
    with pytest.raises(ValueError, match="expected 'rand-m"):
        parse_rand_augment("v0")
    with pytest.raises(ValueError, match="unknown key"):
        parse_rand_augment("rand-m7-q3")


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_is_consistent_across_frames(seed):
    # identical frames in -> identical frames out: every random choice is per clip
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    tt = TrainTransform(crop_size=32, rand_augment="rand-m9-n4-mstd0.5-inc1", reprob=0.0)
    x = tt(_frames())
    assert x.shape == (3, 4, 32, 32)
    for t in range(1, 4):
        assert torch.allclose(x[:, 0], x[:, t])


def test_each_randaugment_op_is_consistent_across_frames():
    from torchvision.transforms import InterpolationMode

    from vmstream.training.augment import RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, _apply_op, _level_to_arg

    clip = torch.from_numpy(_frames()).permute(0, 3, 1, 2).contiguous()
    for name in set(RAND_TRANSFORMS) | set(RAND_INCREASING_TRANSFORMS):
        out = _apply_op(name, clip, _level_to_arg(name, 7.0), InterpolationMode.BILINEAR)
        assert out.shape == clip.shape and out.dtype == torch.uint8, name
        assert all(torch.equal(out[0], out[t]) for t in range(4)), name


def test_flip_off_for_ssv2_and_erasing_per_frame():
    f = _frames(same=False)
    random.seed(0)
    flips = set()
    for s in range(20):
        random.seed(s)
        a = TrainTransform(
            crop_size=32, rand_augment=None, flip=False, reprob=0, scale=(1, 1), ratio=(56 / 40, 56 / 40)
        )(f)
        flips.add(a.flatten()[:5].tolist().__repr__())
    assert len(flips) == 1  # no flip, full-frame crop: always the same output
    random.seed(3)
    x = TrainTransform(crop_size=32, rand_augment=None, flip=False, reprob=1.0, erase_per_frame=True)(_frames())
    assert not torch.allclose(x[:, 0], x[:, 1])  # boxes differ between frames (official)


def test_random_resized_crop_params_within_bounds():
    random.seed(0)
    for _ in range(200):
        i, j, h, w = random_resized_crop_params(48, 64)
        assert 0 <= i and 0 <= j and i + h <= 48 and j + w <= 64 and h > 0 and w > 0


def test_eval_views_three_crops_along_long_side():
    f = torch.arange(32 * 60).view(1, 1, 32, 60).float()
    v = spatial_views(f, 32, 3)
    assert [int(x[0, 0, 0, 0]) for x in v] == [0, 14, 28]
    assert len(EvalTransform(32, 32, 3, "views")(_frames(h=40, w=56))) == 3


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("alphas", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixup_cutmix_targets_sum_to_one(mode, alphas):
    np.random.seed(0)
    m = Mixup(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mode=mode, label_smoothing=0.1, num_classes=5)
    for _ in range(10):
        x = torch.randn(6, 3, 4, 16, 16)
        y = torch.randint(0, 5, (6,))
        xm, t = m(x.clone(), y)
        assert xm.shape == x.shape and t.shape == (6, 5)
        assert torch.allclose(t.sum(1), torch.ones(6), atol=1e-6)
        assert (t >= 0).all()


def test_cutmix_pastes_same_box_in_every_frame_and_lambda_is_area():
    np.random.seed(1)
    m = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="batch", label_smoothing=0.0, num_classes=2)
    x = torch.zeros(2, 3, 4, 20, 20)
    x[1] = 1.0
    y = torch.tensor([0, 1])
    xm, t = m(x.clone(), y)
    pasted = xm[0, 0, 0]
    for f in range(4):
        assert torch.equal(xm[0, :, f], xm[0, :, 0])
    frac = float(pasted.mean())  # share of sample 0 covered by sample 1
    assert t[0, 1] == pytest.approx(frac, abs=1e-6)
    assert t[0, 0] == pytest.approx(1 - frac, abs=1e-6)


def test_losses():
    logits = torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    hard = smooth_one_hot(y, 5, 0.0)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert SoftTargetCrossEntropy()(logits, hard) == pytest.approx(float(ce), rel=1e-5)
    ls = LabelSmoothingCrossEntropy(0.1)(logits, y)
    soft = mixup_target(y, 5, 1.0, 0.1)  # lam 1: just smoothing (timm: s/C off, 1-s+s/C on)
    assert ls == pytest.approx(float(SoftTargetCrossEntropy()(logits, soft)), rel=1e-5)
    with pytest.raises(ValueError, match="even batch"):
        Mixup(num_classes=5)(torch.zeros(3, 3, 1, 4, 4), torch.zeros(3, dtype=torch.long))


def test_multi_scale_crop_official_sizes_and_fixed_offsets():
    """GroupMultiScaleCrop(224, [1, .875, .75, .66]) of the official pretraining: sides from
    the short side times the scales (within 3 px of the crop size snapped to it), adjacent
    scales at most, at one of the 13 fixed offsets."""
    from vmstream.training.augment import multi_scale_crop_params

    random.seed(0)
    sides = {256, 224, 192, 168}  # 256 * (1, .875 -> 224, .75, .66)
    seen = set()
    for _ in range(400):
        top, left, h, w = multi_scale_crop_params(256, 340, 224)
        assert h in sides and w in sides
        assert abs(sorted(sides).index(h) - sorted(sides).index(w)) <= 1
        hs, ws = (256 - h) // 4, (340 - w) // 4
        assert (hs == 0 or top % hs == 0) and (ws == 0 or left % ws == 0)
        if hs and ws:
            seen.add((top // hs, left // ws))
    assert seen <= {
        (0, 0),
        (0, 4),
        (4, 0),
        (4, 4),
        (2, 2),
        (2, 0),
        (2, 4),
        (4, 2),
        (0, 2),
        (1, 1),
        (1, 3),
        (3, 1),
        (3, 3),
    }
    assert len(seen) == 13
    assert multi_scale_crop_params(226, 300, 224, scales=(1.0,))[2:] == (224, 224)  # 226 snaps to 224
    assert multi_scale_crop_params(230, 300, 224, scales=(1.0,))[2:] == (230, 230)
