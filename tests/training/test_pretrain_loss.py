"""Distillation losses and targets on hand-checkable cases."""

import math

import pytest
import torch

from vmstream.training.distill_loss import distill_loss, visible_targets


def test_cosine_loss_hand_values():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    pred = torch.stack([e1, e1, e1])[None]  # [1, 3, 2]
    target = torch.stack([e1, e2, -e1])[None]
    # same -> 0, orthogonal -> 2, opposite -> 4; mean 2
    assert distill_loss(pred, target, "l2").item() == pytest.approx(2.0)
    v = torch.tensor([math.cos(0.3), math.sin(0.3)])
    assert distill_loss(e1[None], v[None], "l2").item() == pytest.approx(2 - 2 * math.cos(0.3))
    # for unit vectors it is the squared distance
    assert distill_loss(e1[None], v[None], "l2").item() == pytest.approx(((e1 - v) ** 2).sum().item())


def test_mse_and_smooth_l1_hand_values():
    pred = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([[0.5, 2.0], [1.0, -3.0]])
    assert distill_loss(pred, target, "mse").item() == pytest.approx((0.25 + 4 + 1 + 9) / 4)
    # smooth L1 (beta 1): 0.5 d^2 below 1, |d| - 0.5 above
    assert distill_loss(pred, target, "smooth_l1").item() == pytest.approx((0.125 + 1.5 + 0.5 + 2.5) / 4)


def test_bad_loss_inputs():
    with pytest.raises(ValueError, match="not one of"):
        distill_loss(torch.zeros(2), torch.zeros(2), "cos")
    with pytest.raises(ValueError, match="differ in shape"):
        distill_loss(torch.zeros(2), torch.zeros(3))


def test_visible_targets_keep_order_cls_first():
    t = torch.arange(2 * 2 * 4 * 1, dtype=torch.float32).view(2, 2, 4, 1)  # K=2, B=2, 1+3 tokens
    mask = torch.tensor([[False, True, False, True], [False, False, True, True]])
    v = visible_targets(t, mask)
    assert v.shape == (2, 2, 2, 1)
    assert v[0, 0, :, 0].tolist() == [0.0, 2.0] and v[0, 1, :, 0].tolist() == [4.0, 5.0]
    assert v[1, 0, :, 0].tolist() == [8.0, 10.0]
    assert visible_targets(t[0], mask).tolist() == v[0].tolist()
    with pytest.raises(ValueError, match="clip_return_cls"):
        visible_targets(t[:, :, 1:], mask)
