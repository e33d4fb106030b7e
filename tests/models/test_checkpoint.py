"""Checkpoint loading: official layouts, safe unpickling, resampling, strict key checks,
architecture inference, digests, and resolving registry names through the HF cache
(offline: no test touches the network)."""

import argparse
import hashlib
import logging
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.videomamba import make_tiny_model
from vmstream.models import (
    CHECKPOINT_DIR_ENV,
    CheckpointError,
    CheckpointNotFound,
    VideoMamba,
    infer_config,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
)


def _save(obj, path):
    torch.save(obj, path)
    return path


def _same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not k.startswith(skip):
            assert torch.equal(sa[k], sb[k]), k


def test_official_finetuning_layout_loads_with_args_and_prefixes(tmp_path):
    src = make_tiny_model(seed=1)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    args = argparse.Namespace(model="videomamba_tiny", nb_classes=5, num_frames=4, window_size=(4, 2, 2))
    path = _save(
        {
            "model": sd,
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 7,
            "scaler": {"scale": 65536.0},
            "args": args,
        },
        tmp_path / "checkpoint-best.pth",
    )
    dst = make_tiny_model(seed=2)
    report = load_checkpoint(dst, path)
    _same_weights(src, dst)
    assert report.args.model == "videomamba_tiny" and report.notes == []
    assert report.digest == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert dst.card.checkpoint_digest == report.digest


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"module": sd},
        lambda sd: {"state_dict": {"backbone." + k: v for k, v in sd.items()}},
        lambda sd: {"model": {"encoder." + k: v for k, v in sd.items()}},
    ],
)
def test_state_dict_nesting_and_prefixes(tmp_path, wrap):
    src = make_tiny_model(seed=3)
    path = _save(wrap(src.state_dict()), tmp_path / "ck.pth")
    model = load_model(path)
    _same_weights(src, model)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), src(clip))


def test_load_model_infers_the_architecture(tmp_path):
    src = make_tiny_model(
        seed=4,
        depth=3,
        embed_dim=48,
        num_frames=8,
        img_size=48,
        ssm_cfg={"d_state": 4, "d_conv": 3, "expand": 1},
        num_classes=7,
    )
    path = _save({"model": src.state_dict()}, tmp_path / "custom.pth")
    cfg = infer_config(torch.load(path, weights_only=True)["model"])
    assert cfg == {
        "img_size": 48,
        "patch_size": 16,
        "depth": 3,
        "embed_dim": 48,
        "channels": 3,
        "num_classes": 7,
        "kernel_size": 1,
        "bimamba": True,
        "rms_norm": True,
        "num_frames": 8,
        "ssm_cfg": {"d_state": 4, "d_conv": 3, "expand": 1},
    }
    model = load_model(path)
    assert not model.training
    _same_weights(src, model)
    assert model.card.num_frames == 8 and model.card.name == "custom"


def test_other_variants_are_inferred(tmp_path):
    src = make_tiny_model(seed=5, bimamba=False, rms_norm=False, kernel_size=2)
    cfg = infer_config(src.state_dict())
    assert cfg["bimamba"] is False and cfg["rms_norm"] is False and cfg["kernel_size"] == 2
    assert cfg["num_frames"] == 4
    model = load_model(_save(src.state_dict(), tmp_path / "v.pth"))
    _same_weights(src, model)


def test_temporal_and_spatial_resampling_reads_sizes_from_the_tensors(tmp_path, caplog):
    src = make_tiny_model(seed=6)  # 4 frames, 32x32 = 2x2 patches
    path = _save({"model": src.state_dict()}, tmp_path / "ck.pth")
    with caplog.at_level(logging.INFO, logger="vmstream.models.checkpoint"):
        model = load_model(path, num_frames=8, img_size=64)
    tp = src.temporal_pos_embedding.detach()
    want_t = F.interpolate(tp.transpose(1, 2), size=8, mode="linear", align_corners=False).transpose(1, 2)
    torch.testing.assert_close(model.temporal_pos_embedding.detach(), want_t)
    pe = src.pos_embed.detach()
    grid = pe[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    want_s = (
        F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, -1)
    )
    assert torch.equal(model.pos_embed[:, :1], pe[:, :1])  # cls position kept
    torch.testing.assert_close(model.pos_embed.detach()[:, 1:], want_s)
    notes = " | ".join(model.card.load_notes)
    assert "temporal_pos_embedding 4 -> 8" in notes and "pos_embed 2x2 -> 4x4" in notes
    assert "resampled temporal_pos_embedding" in caplog.text and "resampled pos_embed" in caplog.text
    _same_weights(src, model, skip=("pos_embed", "temporal_pos_embedding"))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 64, 64)).shape == (1, 5)


def test_wrong_keys_are_listed(tmp_path):
    sd = make_tiny_model(seed=7).state_dict()
    del sd["layers.1.mixer.D_b"]
    sd["layers.0.mixer.extra"] = torch.zeros(3)
    sd["layers.0.mixer.x_proj.weight"] = torch.zeros(3, 64)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(make_tiny_model(), sd)
    msg = str(err.value)
    assert "missing (1): layers.1.mixer.D_b" in msg
    assert "unexpected (1): layers.0.mixer.extra" in msg
    assert "mis-shaped (1): layers.0.mixer.x_proj.weight: checkpoint (3, 64) vs model (18, 64)" in msg


def test_a_different_head_needs_reset_head(tmp_path):
    src = make_tiny_model(seed=8)  # 5 classes
    path = _save(src.state_dict(), tmp_path / "ck.pth")
    target = make_tiny_model(seed=9, num_classes=3)
    head_before = target.head.weight.detach().clone()
    with pytest.raises(CheckpointError, match="head has 5 classes but the model's has 3.*reset_head=True"):
        load_checkpoint(target, path)
    report = load_checkpoint(target, path, reset_head=True)
    assert torch.equal(target.head.weight, head_before)
    _same_weights(src, make_tiny_model(seed=8))
    assert "reset the head" in report.notes[0]
    feats = load_model(path, num_classes=0, reset_head=True)
    assert isinstance(feats.head, torch.nn.Identity)
    with pytest.raises(CheckpointError, match="reset_head"):
        load_model(path, num_classes=9)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": make_tiny_model().state_dict(), "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load .*could run code.*GLOBAL posix.system"):
        load_model(path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(make_tiny_model(), path)
    assert not marker.exists()


def test_corrupt_and_foreign_files_fail_clearly(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(bad)
    other = _save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a VideoMamba checkpoint"):
        load_model(other)
    empty = _save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_model(empty)
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        load_model(tmp_path / "missing.pth")


def test_imagenet_image_checkpoint_is_inflated(tmp_path):
    video = make_tiny_model(seed=10, num_classes=11)
    sd = {k: v for k, v in video.state_dict().items() if k != "temporal_pos_embedding"}
    w3 = sd["patch_embed.proj.weight"]
    sd["patch_embed.proj.weight"] = w3[:, :, 0]  # [D, 3, 16, 16]: the image model's Conv2d
    path = _save(sd, tmp_path / "videomamba_x_in1k_res32.pth")
    model = load_model(path, num_frames=4)
    assert torch.equal(model.patch_embed.proj.weight, w3)
    assert torch.count_nonzero(model.temporal_pos_embedding) == 0
    notes = " | ".join(model.card.load_notes)
    assert "inflated" in notes and "temporal_pos_embedding starts at zero" in notes
    tube = load_model(path, num_frames=4, kernel_size=2)  # centre frame of a 2-frame tubelet
    w = tube.patch_embed.proj.weight
    assert torch.count_nonzero(w[:, :, 0]) == 0 and torch.equal(w[:, :, 1], w3[:, :, 0])


def test_masked_pretraining_checkpoint_gives_a_feature_backbone(tmp_path):
    src = make_tiny_model(seed=11, num_classes=0)
    sd = src.state_dict()
    sd["norm.weight"] = sd.pop("norm_f.weight")
    sd["clip_decoder.0.head.weight"] = torch.zeros(8, 32)
    sd["clip_decoder.0.norm.weight"] = torch.ones(8)
    path = _save({"model": sd}, tmp_path / "pt.pth")
    model = load_model(path)
    assert model.num_classes == 0 and isinstance(model.head, torch.nn.Identity)
    _same_weights(src, model)
    notes = " | ".join(model.card.load_notes)
    assert "dropped 2 key(s) of the masked-pretraining CLIP decoder" in notes and "'norm' as 'norm_f'" in notes
    with pytest.raises(CheckpointError, match="no classes.*reset_head"):
        load_checkpoint(make_tiny_model(), path)


# ------------------------------------------------------------------ hub / registry


def _fake_hf_cache(root, filename, payload_path):
    repo = root / "models--OpenGVLab--VideoMamba"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(payload_path.read_bytes())
    return snap / filename


def _k400_like_tiny(tmp_path):
    src = make_tiny_model(seed=12, num_classes=400, num_frames=8)
    return src, _save({"model": src.state_dict()}, tmp_path / "src.pth")


def test_registry_name_resolves_from_a_prepopulated_hf_cache_offline(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_DIR_ENV, raising=False)
    src, payload = _k400_like_tiny(tmp_path)
    name = "videomamba_t16_k400_f8_res224"
    cached = _fake_hf_cache(tmp_path / "hub", name + ".pth", payload)
    assert resolve_checkpoint(name, cache_dir=tmp_path / "hub", local_files_only=True) == cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(name, cache_dir=tmp_path / "hub")
    _same_weights(src, model)
    card = model.card
    assert card.name == name and card.class_list == "k400" and card.architecture == "videomamba_tiny"
    assert card.class_names[0] == "abseiling" and card.class_names[399] == "zumba"
    assert card.checkpoint_digest == hashlib.sha256(cached.read_bytes()).hexdigest()[:16]
    assert model.init_state(1).tag == card.checkpoint_digest


def test_offline_without_the_file_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFound) as err:
        load_model("videomamba_s16_k400_f16_res224", cache_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "https://huggingface.co/OpenGVLab/VideoMamba/resolve/main/videomamba_s16_k400_f16_res224.pth" in msg
    assert CHECKPOINT_DIR_ENV in msg and "--checkpoint" in msg and "offline" in msg
    assert re.search(r"(hf|huggingface-cli) download OpenGVLab/VideoMamba videomamba_s16_k400_f16_res224\.pth", msg)


def test_local_checkpoint_dir_override(tmp_path, monkeypatch):
    src, payload = _k400_like_tiny(tmp_path)
    d = tmp_path / "weights"
    d.mkdir()
    (d / "videomamba_t16_k400_f8_res224.pth").write_bytes(payload.read_bytes())
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(d))
    model = load_model("videomamba_t16_k400_f8_res224", local_files_only=True)
    _same_weights(src, model)
    # A path to a downloaded official file keeps the registry's metadata (labels).
    direct = load_model(d / "videomamba_t16_k400_f8_res224.pth")
    assert direct.card.class_list == "k400"


def test_unknown_names_and_missing_paths(tmp_path):
    with pytest.raises(CheckpointNotFound, match="did you mean videomamba_t16_k400_f16_res224"):
        resolve_checkpoint("videomamba_t16_k400_f16_res244")
    with pytest.raises(CheckpointNotFound, match="does not exist; to use the official"):
        resolve_checkpoint(str(tmp_path / "videomamba_t16_k400_f16_res224.pth"))
    with pytest.raises(CheckpointNotFound, match="is a directory"):
        resolve_checkpoint(tmp_path)


def test_load_checkpoint_accepts_a_loaded_state_dict():
    src = make_tiny_model(seed=13)
    dst = VideoMamba(
        **{**dict(img_size=32, depth=2, embed_dim=32, num_classes=5, num_frames=4), "ssm_cfg": {"d_state": 8}}
    )
    report = load_checkpoint(dst, {"model": src.state_dict()})
    assert report.source == "<state dict>"
    _same_weights(src, dst)


@pytest.mark.parametrize("poison", ["nan_all", "inf_head", "nan_some"])
def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, poison):
    sd = make_tiny_model(seed=12).state_dict()
    if poison == "nan_all":
        sd = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in sd.items()}
    elif poison == "inf_head":
        sd["head.weight"][0, 0] = math.inf
        sd["head.weight"][1, 1] = -math.inf
    else:
        sd["layers.1.mixer.A_log"][0, 0] = math.nan
    path = _save({"model": sd}, tmp_path / "bad.pth")
    for load in (lambda: load_model(path), lambda: load_checkpoint(make_tiny_model(seed=1), path)):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = str(e.value)
        assert "\n" not in msg and "bad.pth" in msg and "non-finite weights (NaN or Inf)" in msg
        if poison == "nan_all":
            n = sum(1 for v in sd.values() if v.is_floating_point())
            assert f"in {n} tensor(s)" in msg and f"and {n - 5} more" in msg
        elif poison == "inf_head":
            assert "in 1 tensor(s): head.weight (0 NaN, 2 Inf of 160)" in msg
        else:
            assert "in 1 tensor(s): layers.1.mixer.A_log (1 NaN, 0 Inf" in msg


@pytest.mark.parametrize(
    "key, shape",
    [
        ("patch_embed.proj.weight", (32, 3, 1, 16, 0)),
        ("patch_embed.proj.weight", (0, 3, 1, 16, 16)),
        ("pos_embed", (1, 0, 32)),
        ("layers.0.mixer.A_log", (0, 8)),
    ],
)
def test_zero_size_tensors_are_a_clear_error(tmp_path, key, shape):
    sd = make_tiny_model(seed=13).state_dict()
    sd[key] = torch.zeros(shape)
    with pytest.raises(CheckpointError, match=rf"not a usable VideoMamba checkpoint: {key} has shape"):
        infer_config(sd)
    with pytest.raises(CheckpointError, match=key):
        load_model(_save({"model": sd}, tmp_path / "z.pth"))
