"""The masked-pretraining loop: resume repeats the uninterrupted run, gradient
accumulation equals the large batch, checkpoints load into the classifier, the
synthetic-distillation recipe runs end to end (marked slow)."""

import glob
import os

import pytest
import torch

from vmstream.models import VideoMamba, load_checkpoint
from vmstream.training.pretrain import build_student, build_teacher, pretrain_fit
from vmstream.training.recipes import load_recipe
from vmstream.training.synthetic_distill import DistillVideos, synthetic_teacher

RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pretrain", "synthetic_distill.yaml")


def _cfg(tmp_path=None, **kw):
    base = dict(epochs=2, batch_size=4, warmup_epochs=0, **{"model_args.depth": 2})
    base.update(kw)
    overrides = [f"{k}={v}" for k, v in base.items()]
    if tmp_path is not None:
        overrides.append(f"output_dir={tmp_path}")
        overrides.append("save_ckpt=true")
    return load_recipe(RECIPE, overrides)


def _run(cfg, n=16):
    data = DistillVideos(n, 4, cfg.num_frames, cfg.input_size, seed=5)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg)
    return pretrain_fit(cfg, data, student=student, teacher=synthetic_teacher(cfg), print_fn=lambda *a: None)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    full = _run(_cfg(tmp_path / "a"))["model"].state_dict()
    first = _run(_cfg(tmp_path / "b", stop_after_epochs=1))
    assert len(first["history"]) == 1
    second = _run(_cfg(tmp_path / "b"))  # auto-resumes at epoch 1
    assert [h["epoch"] for h in second["history"]] == [1]
    for k, v in second["model"].state_dict().items():
        assert torch.equal(v, full[k]), k


def test_gradient_accumulation_equals_large_batch():
    # mask ratio 0 draws nothing random, so the two runs see the same targets
    kw = {"pretrain.mask_type": "random", "pretrain.mask_ratio": 0.0, "epochs": 1}
    big = _run(_cfg(batch_size=8, update_freq=1, **kw))["model"].state_dict()
    acc = _run(_cfg(batch_size=4, update_freq=2, **kw))["model"].state_dict()
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-4, atol=1e-5, msg=k)


def test_checkpoint_is_official_layout_and_loads_into_classifier(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    student = _run(cfg)["model"]
    path = tmp_path / "checkpoint-latest.pth"
    assert path.exists()
    ck = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ck["model"]) == set(student.state_dict())
    assert any(k.startswith("clip_decoder.0.head") for k in ck["model"]) and "norm.weight" in ck["model"]
    clf = VideoMamba(img_size=32, patch_size=8, depth=2, embed_dim=64, num_frames=4, num_classes=3)
    load_checkpoint(clf, str(path), reset_head=True)
    assert torch.equal(clf.norm_f.weight, student.norm.weight)
    # and continues as a student, key for key (an official *_mask_pt_* checkpoint the same way)
    again = build_student(cfg.model_copy(update={"finetune": str(path)}))
    assert torch.equal(again.layers[0].mixer.A_log, student.layers[0].mixer.A_log)


def test_teacher_from_recipe_weights(tmp_path):
    cfg = _cfg()
    src = synthetic_teacher(cfg)
    p = tmp_path / "vit.pth"
    torch.save({"visual." + k: v for k, v in src.state_dict().items()}, p)
    t = build_teacher(
        cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"clip_teacher_weights": str(p)})})
    )
    assert torch.equal(t.proj, src.proj) and t.return_attn


def test_pretrain_recipes_validate():
    files = sorted(glob.glob(os.path.join(os.path.dirname(RECIPE), "**", "[!_]*.yaml"), recursive=True))
    assert len(files) >= 3
    for f in files:
        cfg = load_recipe(f)
        assert cfg.task in ("pretrain", "synthetic_distill", "pretrain_multimodal", "synthetic_multimodal"), f
        if cfg.task in ("pretrain", "pretrain_multimodal"):
            assert cfg.source, f"{f} must cite its source"


@pytest.mark.slow
def test_synthetic_distill_recipe_end_to_end(capsys):
    from vmstream.training.trainer import train_main

    assert train_main(RECIPE) == 0
    out = capsys.readouterr().out
    for key in (
        "distill_cosine_before=",
        "distill_cosine_after=",
        "probe_accuracy_pretrained=",
        "probe_accuracy_random_init=",
        "chance_accuracy=",
    ):
        assert key in out


def test_table_ii_values():
    from vmstream.training.optim import scaled_lr

    k400 = load_recipe(os.path.join(os.path.dirname(RECIPE), "k400", "videomamba_middle_mask_pt_f8x224.yaml"))
    ssv2 = load_recipe(os.path.join(os.path.dirname(RECIPE), "ssv2", "videomamba_middle_mask_pt_f8x224.yaml"))
    for c in (k400, ssv2):
        assert c.batch_size * c.reference_gpus == 2048
        assert scaled_lr(c.lr, c.batch_size, c.reference_gpus) == pytest.approx(1.2e-3)
        assert c.opt_betas == [0.9, 0.95] and c.weight_decay == 0.05 and c.warmup_epochs == 40
        assert c.epochs == 800 and c.num_frames == 8 and c.drop_path == 0.4
        assert c.pretrain.mask_ratio == 0.8 and c.pretrain.mask_type == "attention"
        assert c.pretrain.crop == "multi_scale"
    assert k400.flip and not ssv2.flip


def test_vmstream_train_pretrains_on_video_files(train_videos, tmp_path):
    """`vmstream train` with the K400 recipe shrunk to a tiny student and teacher, on real
    decoded clips (multi-scale crop, flip), two epochs, then resumed for a third."""
    from vmstream.training.trainer import train_main

    recipe = os.path.join(os.path.dirname(RECIPE), "k400", "videomamba_middle_mask_pt_f8x224.yaml")
    over = [
        f"data_path={train_videos}",
        f"prefix={train_videos}",
        f"output_dir={tmp_path}",
        "model=videomamba_tiny",
        "model_args={embed_dim: 32, depth: 2, patch_size: 8}",
        "input_size=32",
        "num_frames=4",
        "batch_size=4",
        "update_freq=2",
        "epochs=2",
        "warmup_epochs=1",
        "num_workers=0",
        "device=cpu",
        "decode_short_side=48",
        "short_side_size=32",
        "pretrain.clip_decoder_embed_dim=32",
        "pretrain.clip_output_dim=16",
        "pretrain.clip_input_resolution=32",
        "pretrain.teacher_args={patch_size: 8, width: 32, layers: 1, heads: 2, output_dim: 16}",
    ]
    assert train_main(recipe, over) == 0
    ck = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 1 and ck["step"] == 2 * 2  # 16 clips / (4 x 2) = 2 steps an epoch
    assert train_main(recipe, over + ["epochs=3"]) == 0
    assert torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=False)["epoch"] == 2


def test_torchrun_two_cpu_processes_pretraining(train_videos, tmp_path):
    """DDP (find_unused_parameters: the last mixer and the final norm get no gradient)."""
    recipe = dict(
        task="pretrain",
        model="videomamba_tiny",
        model_args={"embed_dim": 32, "depth": 2, "patch_size": 8},
        data_path=train_videos,
        prefix=train_videos,
        split=",",
        num_frames=4,
        input_size=32,
        short_side_size=32,
        decode_short_side=40,
        num_workers=0,
        batch_size=2,
        epochs=1,
        max_steps_per_epoch=2,
        warmup_epochs=0,
        output_dir=str(tmp_path / "run"),
        device="cpu",
        torch_threads=1,
        log_every=1,
        pretrain=dict(
            mask_type="attention",
            mask_ratio=0.8,
            clip_decoder_embed_dim=32,
            clip_output_dim=16,
            clip_input_resolution=32,
            teacher_args=dict(patch_size=8, width=32, layers=1, heads=2, output_dim=16),
        ),
    )
    r = _torchrun(recipe, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ranks_in_sync=true world_size=2" in r.stdout, r.stdout + r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint-latest.pth").exists()


def _torchrun(recipe: dict, tmp_path):
    import socket
    import subprocess
    import sys

    import yaml

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PYTHONPATH=repo)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "vmstream.training",
        "train",
        "--config",
        str(path),
    ]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def test_teacher_input_resize_and_grid_mismatch():
    from vmstream.config_loader import ConfigError
    from vmstream.training.pretrain import draw_mask_and_targets, teacher_input

    x = torch.randn(2, 3, 4, 32, 32)
    assert teacher_input(x, 32) is x
    y = teacher_input(x, 48)
    assert y.shape == (2, 3, 4, 48, 48)
    torch.testing.assert_close(
        y[:, :, 1], torch.nn.functional.interpolate(x[:, :, 1], size=(48, 48), mode="bicubic", align_corners=False)
    )
    cfg = _cfg()
    student = build_student(cfg)
    wrong = _cfg(**{"pretrain.teacher_args": "{patch_size: 16, width: 64, layers: 1, heads: 4, output_dim: 32}"})
    with pytest.raises(ConfigError, match="attention masking needs"):
        draw_mask_and_targets(student, synthetic_teacher(wrong), x, wrong.pretrain)


def test_bad_recipe_inputs_are_one_line_errors(tmp_path, capsys):
    from vmstream.training.trainer import train_main

    recipe = os.path.join(os.path.dirname(RECIPE), "k400", "videomamba_middle_mask_pt_f8x224.yaml")
    assert train_main(recipe, ["device=cpu"]) == 2
    assert "names no training list" in capsys.readouterr().err
    cfg = _cfg(**{"pretrain.clip_teacher_weights": str(tmp_path / "none.pth")})
    from vmstream.config_loader import ConfigError

    with pytest.raises(ConfigError, match="clip_teacher_weights.*does not exist"):
        build_teacher(cfg)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="missing"):
        build_teacher(_cfg(**{"pretrain.clip_teacher_weights": str(tmp_path / "bad.pth")}))
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 64)}}, tmp_path / "student.pth")
    with pytest.raises(ConfigError, match="not a checkpoint of this student"):
        build_student(_cfg(finetune=str(tmp_path / "student.pth")))
