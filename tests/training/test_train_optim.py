"""Parameter groups (no weight decay sets, layer-wise lr decay) against the recipe, and the
per-step cosine schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vmstream.models import create_model
from vmstream.training.optim import (
    apply_schedule,
    build_optimizer,
    cosine_schedule,
    layer_scales,
    parameter_groups,
    scaled_lr,
)
from vmstream.training.recipes import load_recipe, recipe_path

DEPTH = 4


@pytest.fixture(scope="module")
def model():
    return create_model("videomamba_tiny", depth=DEPTH, embed_dim=64, img_size=32, num_frames=4, num_classes=5)


def _where(specs):
    return {n: s for s in specs for n in s.param_names}


def test_no_weight_decay_set(model):
    _, specs = parameter_groups(model, 0.05, None)
    where = _where(specs)
    no_decay = {n for n, s in where.items() if s.weight_decay == 0}
    for name in (
        "cls_token",
        "pos_embed",
        "temporal_pos_embedding",
        "norm_f.weight",
        "head.bias",
        "patch_embed.proj.bias",
        "layers.0.mixer.A_log",
        "layers.0.mixer.A_b_log",
        "layers.1.mixer.D",
        "layers.1.mixer.D_b",
        "layers.2.mixer.conv1d.bias",
        "layers.2.mixer.dt_proj.bias",
        "layers.3.norm.weight",
    ):
        assert name in no_decay, name
    for name in (
        "patch_embed.proj.weight",
        "head.weight",
        "layers.0.mixer.in_proj.weight",
        "layers.3.mixer.out_proj.weight",
        "layers.1.mixer.x_proj_b.weight",
        "layers.2.mixer.conv1d.weight",
    ):
        assert where[name].weight_decay == 0.05, name
    assert len(where) == len(list(model.parameters()))


def test_layer_decay_by_depth(model):
    groups, specs = parameter_groups(model, 0.1, 0.75, "depth")
    where = _where(specs)
    scales = layer_scales(0.75, DEPTH)
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.75 ** (DEPTH + 1))
    assert where["patch_embed.proj.weight"].layer_id == 0
    assert where["cls_token"].layer_id == 0 and where["temporal_pos_embedding"].layer_id == 0
    for i in range(DEPTH):
        s = where[f"layers.{i}.mixer.in_proj.weight"]
        assert s.layer_id == i + 1 and s.lr_scale == pytest.approx(0.75 ** (DEPTH - i))
        assert s.name == f"layer_{i + 1}_decay"
    assert where["head.weight"].lr_scale == 1.0 and where["norm_f.weight"].layer_id == DEPTH + 1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_layer_decay_official_mode(model):
    _, specs = parameter_groups(model, 0.1, 0.75, "official")
    where = _where(specs)
    assert where["pos_embed"].layer_id == 0 and where["patch_embed.proj.bias"].layer_id == 0
    # the released code's assigner has its 'layers.' branch commented out: blocks keep scale 1
    assert where["layers.0.mixer.in_proj.weight"].lr_scale == 1.0
    assert where["temporal_pos_embedding"].lr_scale == 1.0
    assert where["layers.0.mixer.A_log"].weight_decay == 0.1  # the official code decays it
    assert sorted(s.name for s in specs) == [
        "layer_0_decay",
        "layer_0_no_decay",
        f"layer_{DEPTH + 1}_decay",
        f"layer_{DEPTH + 1}_no_decay",
    ]


def test_groups_match_the_recipe(model):
    cfg = load_recipe(recipe_path("k400/videomamba_small_f8x224"))
    assert (cfg.weight_decay, cfg.layer_decay, cfg.drop_path) == (0.05, 0.75, 0.35)
    opt, specs = build_optimizer(
        model, 1e-3, cfg.weight_decay, tuple(cfg.opt_betas), cfg.opt_eps, cfg.layer_decay, cfg.layer_decay_mode
    )
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {0.0, 0.05}
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    apply_schedule(opt, 3, np.full(10, 2e-4), np.full(10, 0.07))
    for g, s in zip(opt.param_groups, specs):
        assert g["lr"] == pytest.approx(2e-4 * s.lr_scale)
        assert g["weight_decay"] == (0.07 if s.weight_decay > 0 else 0.0)


def test_cosine_schedule():
    s = cosine_schedule(1e-3, 1e-6, epochs=10, steps_per_epoch=20, warmup_epochs=2, start_warmup_value=1e-6)
    assert len(s) == 200
    assert s[0] == pytest.approx(1e-6) and s[39] == pytest.approx(1e-3)  # end of warmup
    assert s[40] == pytest.approx(1e-3)  # cosine starts at the peak
    assert np.all(np.diff(s[40:]) <= 1e-15) and s[-1] == pytest.approx(1e-6, abs=1e-7)
    mid = 40 + 80
    assert s[mid] == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-3)
    assert np.all(cosine_schedule(0.05, 0.05, 3, 7) == 0.05)
    assert len(cosine_schedule(1.0, 0.0, 2, 5, warmup_steps=3)) == 10


def test_lr_scaling_official():
    # K400 Ti f8: lr 2e-4, batch 64 x 8 GPUs, num_sample 2 -> 2e-4 * 1024 / 256
    assert scaled_lr(2e-4, 64, 8, 1, 2) == pytest.approx(8e-4)
    assert scaled_lr(5e-4, 512, 1, 1, 1, divisor=512) == pytest.approx(5e-4)
