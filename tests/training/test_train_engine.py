"""Whole training runs on a small generated dataset: the loss decreases over two epochs,
a resumed run repeats the uninterrupted one exactly, checkpoints have the official
layout, multi-view testing averages the right number of views, recipes validate."""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import pytest
import torch

from vmstream.config_loader import ConfigError
from vmstream.training import checkpoint as ckpt
from vmstream.training.recipes import load_recipe, recipe_path
from vmstream.training.trainer import build_datasets, fit, train_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(train_videos, out, **kw):
    base = dict(
        task="classification",
        model="videomamba_tiny",
        model_args={"embed_dim": 32, "depth": 2, "patch_size": 16},
        data_set="custom",
        data_path=train_videos,
        prefix=train_videos,
        split=",",
        nb_classes=4,
        num_frames=2,
        input_size=32,
        short_side_size=32,
        decode_short_side=40,
        num_workers=0,
        aa="rand-m5-n2-mstd0.25-inc1",
        reprob=0.0,
        mixup=0.0,
        cutmix=0.0,
        smoothing=0.1,
        num_sample=1,
        lr=2e-3,
        lr_scale_divisor=8,
        min_lr=1e-5,
        warmup_lr=1e-5,
        warmup_epochs=0,
        weight_decay=0.05,
        layer_decay=0.75,
        drop_path=0.0,
        epochs=2,
        batch_size=8,
        test_num_segment=2,
        test_num_crop=3,
        output_dir=str(out),
        seed=3,
        device="cpu",
        torch_threads=1,
        log_every=0,
    )
    base.update(kw)
    return load_recipe(None, **base)


def test_two_epochs_decrease_loss_checkpoint_layout_and_views(train_videos, tmp_path):
    cfg = _cfg(train_videos, tmp_path / "run", epochs=2, batch_size=2, num_sample=2, smoothing=0.0, lr=6e-3, aa=None)
    lines = []
    res = fit(cfg, print_fn=lines.append)
    h = res["history"]
    assert len(h) == 2 and all(len(r["losses"]) == 8 for r in h)  # 16 videos / 2 per step
    assert h[-1]["train_loss"] < h[0]["train_loss"], [r["losses"] for r in h]
    assert res["test"]["num_views"] == 6 and res["test"]["n"] == 4
    assert any(l.startswith("test_top1=") and "views=6" in l for l in lines)
    latest = tmp_path / "run" / "checkpoint-latest.pth"
    assert latest.exists() and (tmp_path / "run" / "checkpoint-best.pth").exists()
    # the official layout, loadable the way the official code and our model loader do
    raw = torch.load(latest, map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(raw)
    assert raw["epoch"] == 1 and isinstance(raw["args"], argparse.Namespace) and raw["args"].nb_classes == 4
    assert "scale" in raw["scaler"]
    from vmstream.models import load_model

    m = load_model(str(latest))
    assert m.num_classes == 4 and m.embed_dim == 32


def test_resume_reproduces_the_uninterrupted_run(train_videos, tmp_path):
    kw = dict(epochs=3, aa="rand-m7-n4-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, num_sample=2, drop_path=0.1)
    full = fit(_cfg(train_videos, tmp_path / "full", **kw), print_fn=lambda *_: None)
    # the same run stopped after 2 epochs, then resumed from its output dir
    fit(_cfg(train_videos, tmp_path / "cut", stop_after_epochs=2, **kw), print_fn=lambda *_: None)
    cut = torch.load(tmp_path / "cut" / "checkpoint-latest.pth", weights_only=False)
    assert cut["epoch"] == 1
    resumed = fit(_cfg(train_videos, tmp_path / "cut", **kw), print_fn=lambda *_: None)
    assert [r["epoch"] for r in resumed["history"]] == [2]
    assert resumed["history"][0]["losses"] == full["history"][2]["losses"]  # bit for bit
    a = torch.load(tmp_path / "full" / "checkpoint-latest.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint-latest.pth", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_request_ends_after_the_epoch_and_the_run_resumes(train_videos, tmp_path):
    """Ctrl-C during `vmstream train` (StopSignals -> should_stop): the epoch finishes,
    its checkpoint is saved, the run ends there (no test pass), the same command resumes."""
    kw = dict(epochs=3, num_sample=1, batch_size=4)
    lines = []
    cut = fit(_cfg(train_videos, tmp_path / "cut", **kw), print_fn=lines.append, should_stop=lambda: True)
    assert cut["stopped"] and [r["epoch"] for r in cut["history"]] == [0] and "test" not in cut
    assert any(ln.startswith("stopped after epoch 0") and str(tmp_path / "cut") in ln for ln in lines)
    assert torch.load(tmp_path / "cut" / "checkpoint-latest.pth", weights_only=False)["epoch"] == 0
    rest = fit(_cfg(train_videos, tmp_path / "cut", **kw), print_fn=lambda *_: None, should_stop=lambda: False)
    assert not rest["stopped"] and [r["epoch"] for r in rest["history"]] == [1, 2]


def test_a_stop_without_checkpoints_says_the_rerun_starts_over(train_videos, tmp_path):
    """With save_ckpt off nothing is saved, so "the same command resumes" would be false
    (it was said by every training loop, the synthetic proofs included)."""
    lines = []
    cut = fit(
        _cfg(train_videos, tmp_path / "nosave", epochs=3, num_sample=1, batch_size=4, save_ckpt=False),
        print_fn=lines.append,
        should_stop=lambda: True,
    )
    assert cut["stopped"] and not (tmp_path / "nosave" / "checkpoint-latest.pth").exists()
    (line,) = [ln for ln in lines if ln.startswith("stopped after epoch 0")]
    assert "starts over" in line and "resumes" not in line
    assert "resumes" in ckpt.stop_line("the masked stage", str(tmp_path), True)
    assert "starts over" in ckpt.stop_line("epoch 2", "", True)


def test_rng_state_roundtrip_and_safe_load(tmp_path):
    import random

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    s = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(s)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": {}, "x": Boom()}, evil)
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        ckpt.load_checkpoint_file(str(evil))


def test_auto_resume_order(tmp_path):
    assert ckpt.find_resume(str(tmp_path)) is None
    for n in ("checkpoint-3.pth", "checkpoint-12.pth"):
        (tmp_path / n).write_bytes(b"")
    assert ckpt.find_resume(str(tmp_path)).endswith("checkpoint-12.pth")
    (tmp_path / "checkpoint-best.pth").write_bytes(b"")
    assert ckpt.find_resume(str(tmp_path)).endswith("checkpoint-best.pth")
    (tmp_path / "checkpoint-latest.pth").write_bytes(b"")
    assert ckpt.find_resume(str(tmp_path)).endswith("checkpoint-latest.pth")


def test_every_shipped_recipe_validates():
    paths = glob.glob(os.path.join(REPO, "configs", "train", "**", "*.yaml"), recursive=True)
    paths = [p for p in paths if not os.path.basename(p).startswith("_")]
    assert len(paths) >= 60
    from vmstream.models import get_checkpoint

    for p in paths:
        cfg = load_recipe(p)
        assert cfg.source or cfg.task == "synthetic_memory", p
        if cfg.finetune and cfg.data_set != "imagenet":  # ImageNet: 2D image checkpoints
            assert get_checkpoint(cfg.finetune), p  # every initialisation is an official checkpoint
    t = load_recipe(recipe_path("k400/videomamba_tiny_f8x224"))
    assert (t.weight_decay, t.drop_path, t.lr, t.epochs, t.num_sample, t.smoothing, t.cutmix) == (
        0.1,
        0.1,
        2e-4,
        70,
        2,
        0.1,
        1.0,
    )
    m = load_recipe(recipe_path("k400/videomamba_middle_mask_f16x224"))
    assert (m.drop_path, m.layer_decay, m.finetune) == (0.4, 0.8, "videomamba_m16_k400_mask_pt_f8_res224")
    hi = load_recipe(recipe_path("k400/videomamba_small_f64x224to384"))
    assert (hi.weight_decay, hi.input_size, hi.lr, hi.warmup_epochs) == (1e-8, 384, 5e-6, 1)
    s2 = load_recipe(recipe_path("ssv2/videomamba_small_f16x224"))
    assert s2.flip is False and s2.nb_classes == 174 and s2.drop_path == 0.35
    lvu = load_recipe(recipe_path("lvu/videomamba_tiny_class_trim"))
    assert (lvu.trimmed, lvu.time_stride) == (60.0, 16.0)


def test_recipe_errors_name_the_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("lr: fast\n")
    with pytest.raises(ConfigError, match=r"lr: "):
        load_recipe(str(p))
    p.write_text("lrr: 0.1\n")
    with pytest.raises(ConfigError, match="lrr"):
        load_recipe(str(p))
    assert train_main(str(p)) == 2
    c = load_recipe(recipe_path("k400/videomamba_tiny_f8x224"), ["lr=3e-4", "streaming.tbptt_k=2"])
    assert c.lr == 3e-4 and c.streaming.tbptt_k == 2


def test_lvu_recipe_builds_trimmed_datasets(train_videos):
    cfg = load_recipe(
        recipe_path("lvu/videomamba_tiny_class_trim"),
        [
            f"prefix={train_videos}",
            f"train_list={train_videos}/lvu.csv",
            f"val_list={train_videos}/lvu.csv",
            f"test_list={train_videos}/absent.csv",
            "trimmed=1.0",
            "time_stride=0.5",
            "nb_classes=4",
            "data_set=custom",
        ],
    )
    train, val, test, _ = build_datasets(cfg)
    assert len(train) > 16 and train.entries[1].start == 0.5 and len(val) == len(train) and test is None


def test_regression_streaming_eval_and_finetune_resampling(train_videos, tmp_path, capsys, caplog):
    import logging

    # LVU-style regression (like / view): float targets, z-scored, MSE
    reg = fit(
        _cfg(
            train_videos,
            tmp_path / "reg",
            task="regression",
            nb_classes=1,
            epochs=1,
            num_sample=1,
            batch_size=4,
            test_num_segment=1,
            test_num_crop=1,
        ),
        print_fn=lambda *_: None,
    )
    assert "mse" in reg["test"] and np.isfinite(reg["history"][0]["train_loss"])
    ck = torch.load(tmp_path / "reg" / "checkpoint-latest.pth", weights_only=False)
    assert ck["target_norm"]["std"] > 0

    # streaming fine-tuning from a video list: 2 segments of 2 frames per video
    st = fit(
        _cfg(
            train_videos,
            tmp_path / "stream",
            task="streaming",
            epochs=1,
            batch_size=4,
            num_sample=1,
            streaming={"segments": 2, "segment_frames": 2, "tbptt_k": 1, "loss": "last"},
        ),
        print_fn=lambda *_: None,
    )
    assert len(st["history"][0]["losses"]) == 4 and st["test"]["n"] == 4

    # eval_main on the clip checkpoint of a fresh run (the CLI's `vmstream eval`)
    fit(_cfg(train_videos, tmp_path / "clip", epochs=1, num_sample=1, batch_size=4), print_fn=lambda *_: None)
    import yaml

    rp = tmp_path / "r.yaml"
    base = _cfg(train_videos, tmp_path / "x", test_num_segment=2, test_num_crop=3).model_dump()
    rp.write_text(yaml.safe_dump(base))
    capsys.readouterr()
    from vmstream.training import eval_main

    assert eval_main(str(rp), [f"finetune={tmp_path / 'clip' / 'checkpoint-best.pth'}"]) == 0
    out = capsys.readouterr().out
    assert "test_top1=" in out and "views=6" in out

    # fine-tuning a 2-frame checkpoint at 4 frames resamples the temporal positions, and says so
    with caplog.at_level(logging.INFO, logger="vmstream"):
        fit(
            _cfg(
                train_videos,
                tmp_path / "long",
                epochs=1,
                num_sample=1,
                batch_size=4,
                num_frames=4,
                finetune=str(tmp_path / "clip" / "checkpoint-best.pth"),
            ),
            print_fn=lambda *_: None,
        )
    assert any("temporal" in r.getMessage().lower() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_device_torch_cannot_use_is_a_recipe_error_naming_the_key(capsys):
    from vmstream.training.model_setup import recipe_device

    with pytest.raises(ConfigError, match=r"^device: device 'gpu0' is not a device name"):
        recipe_device(load_recipe(None, ["device=gpu0"]))
    assert train_main(os.path.join(REPO, "configs", "train", "synthetic_memory.yaml"), ["device=gpu0"]) == 2
    assert "vmstream train: device: device 'gpu0'" in capsys.readouterr().err
