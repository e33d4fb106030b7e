"""Video-text checkpoints: the official training-save and bare layouts, pretraining and
retrieval key names, a pickled EasyDict config read without running it, architecture
inference from shapes, registry names through the HF cache (offline)."""

import sys
import types

import pytest
import torch

from tests.fixtures.videotext import make_tiny_videotext
from vmstream.models import CheckpointError, VideoTextMamba, get_checkpoint, load_checkpoint, load_model

TEXT = dict(hidden_size=128, num_heads=2, intermediate_size=64)  # heads = width / 64: inferable


def _pretraining_sd(model):
    """The official pretraining model's keys: BertForMaskedLM's `bert.` and `cls.`, the CLIP
    teacher, BERT's saved position ids."""
    sd = {}
    for k, v in model.state_dict().items():
        sd[k.replace("text_encoder.", "text_encoder.bert.", 1) if k.startswith("text_encoder.") else k] = v
    h, vocab = model.text_width, model.text_encoder.config.vocab_size
    sd["text_encoder.bert.embeddings.position_ids"] = torch.arange(16)[None]
    sd["text_encoder.cls.predictions.bias"] = torch.zeros(vocab)
    sd["text_encoder.cls.predictions.transform.dense.weight"] = torch.randn(h, h)
    sd["text_encoder.cls.predictions.decoder.weight"] = torch.randn(vocab, h)
    sd["clip_teacher.conv1.weight"] = torch.randn(4, 3, 2, 2)
    return sd


@pytest.fixture
def easydict_module(tmp_path):
    """An `utils.easydict.EasyDict` (the official config class) that leaves a marker file
    if it is ever constructed or has its state set; importable only while saving."""
    marker = tmp_path / "ran"
    mod, pkg = types.ModuleType("utils.easydict"), types.ModuleType("utils")
    pkg.easydict = mod

    class EasyDict(dict):
        def __init__(self, d=None, **kw):
            super().__init__()
            for k, v in dict(d or {}, **kw).items():
                setattr(self, k, v)

        def __setattr__(self, name, value):
            if isinstance(value, dict) and not isinstance(value, EasyDict):
                value = EasyDict(value)
            super().__setattr__(name, value)
            super().__setitem__(name, value)

        def __setstate__(self, state):
            marker.write_text("EasyDict code ran")
            self.__dict__.update(state)

    EasyDict.__module__, EasyDict.__qualname__ = "utils.easydict", "EasyDict"
    mod.EasyDict = EasyDict
    saved = {k: sys.modules.get(k) for k in ("utils", "utils.easydict")}
    sys.modules.update({"utils": pkg, "utils.easydict": mod})
    yield EasyDict, marker
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_official_training_save_with_pretraining_keys_and_an_easydict_config(tmp_path, easydict_module):
    EasyDict, marker = easydict_module
    src = make_tiny_videotext(seed=1, text=TEXT)
    config = EasyDict(
        model=dict(model_cls="UMT_VIDEOMAMBA", embed_dim=16, text_encoder=dict(fusion_layer=2)), batch_size=8
    )
    path = tmp_path / "videomamba_m16_5M_f8_res224.pth"
    torch.save(
        {
            "model": _pretraining_sd(src),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "scheduler": {"last_epoch": 3},
            "config": config,
            "epoch": 3,
            "global_step": 12,
        },
        path,
    )
    for k in ("utils", "utils.easydict"):  # as on a user's machine: the class is not importable
        sys.modules.pop(k, None)

    model = load_model(path)
    assert isinstance(model, VideoTextMamba) and not model.training
    _same_weights(src, model)
    assert not marker.exists()
    notes = "\n".join(model.card.load_notes)
    assert "utils.easydict.EasyDict" in notes and "not imported" in notes
    assert "text_encoder.bert.* as text_encoder.*" in notes
    for unused in ("clip_teacher.*", "text_encoder.cls.*", "text_encoder.embeddings.position_ids*"):
        assert unused in notes, unused
    assert model.card.name == "videomamba_m16_5M_f8_res224"
    assert model.text_encoder.config.fusion_layer == 2 and model.text_encoder.config.num_heads == 2

    fresh = make_tiny_videotext(seed=9, text=TEXT)
    report = load_checkpoint(fresh, path)
    _same_weights(src, fresh)
    assert any("clip_teacher" in n for n in report.notes) and report.digest == fresh.card.checkpoint_digest
    assert not marker.exists()


def test_bare_retrieval_state_dict_file_and_mapping(tmp_path):
    src = make_tiny_videotext(seed=2, text=TEXT)
    path = tmp_path / "ret.pth"
    torch.save(src.state_dict(), path)
    model = load_model(path)
    _same_weights(src, model)
    assert model.card.load_notes == ()
    other = make_tiny_videotext(seed=3, text=TEXT)
    load_checkpoint(other, src.state_dict())
    _same_weights(src, other)


def test_architecture_is_inferred_from_shapes(tmp_path):
    src = make_tiny_videotext(seed=4, vision=dict(depth=3, num_frames=2), text=dict(TEXT, num_layers=4, fusion_layer=1))
    path = tmp_path / "m.pth"
    torch.save({"model": src.state_dict()}, path)
    model = load_model(path)
    cfg = model.config
    assert cfg["vision"]["depth"] == 3 and cfg["vision"]["num_frames"] == 2 and cfg["vision"]["img_size"] == 32
    assert cfg["vision"]["embed_dim"] == 32 and cfg["embed_dim"] == 16
    t = model.text_encoder.config
    assert (
        t.num_layers,
        t.fusion_layer,
        t.hidden_size,
        t.num_heads,
        t.vocab_size,
        t.max_position_embeddings,
        t.encoder_width,
    ) == (4, 1, 128, 2, 60, 16, 32)
    # heads cannot be read from shapes: width / 64 unless told
    narrow = make_tiny_videotext(seed=5)  # width 24, 2 heads
    torch.save(narrow.state_dict(), tmp_path / "n.pth")
    assert load_model(tmp_path / "n.pth").text_encoder.config.num_heads == 1
    told = load_model(tmp_path / "n.pth", num_heads=2)
    ids = torch.randint(1, 60, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(told.encode_text(ids).features, narrow.encode_text(ids).features)


def test_frames_and_size_overrides_resample_positions(tmp_path):
    src = make_tiny_videotext(seed=6)
    torch.save(src.state_dict(), tmp_path / "m.pth")
    model = load_model(tmp_path / "m.pth", num_frames=8)
    assert model.vision_encoder.temporal_pos_embedding.shape[1] == 8
    assert any("temporal positions" in n for n in model.card.load_notes)
    bigger = load_model(tmp_path / "m.pth", img_size=64)
    assert bigger.vision_encoder.pos_embed.shape == (1, 1 + 16, 32) and bigger.card.img_size == 64
    assert any("spatial positions" in n for n in bigger.card.load_notes)


def test_missing_and_misshaped_keys_are_listed(tmp_path):
    src = make_tiny_videotext(seed=7)
    sd = src.state_dict()
    del sd["itm_head.weight"]
    sd["text_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"missing \(1\): itm_head.weight(.|\n)*mis-shaped.*text_proj.weight"):
        load_checkpoint(make_tiny_videotext(), sd)


def test_non_finite_weights_are_refused_by_both_loaders(tmp_path):
    """The classifier's rule (issue 11) holds for the video-text family too."""
    sd = make_tiny_videotext(seed=8, text=TEXT).state_dict()
    sd["itm_head.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="itm_head.weight"):
        load_model(path)
    with pytest.raises(CheckpointError, match="itm_head.weight"):
        load_checkpoint(make_tiny_videotext(text=TEXT), sd)


def test_a_pickled_function_is_still_refused(tmp_path):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": make_tiny_videotext().state_dict(), "config": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused.*posix.system"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


def test_registry_names_resolve_through_the_hf_cache_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("VMSTREAM_CHECKPOINT_DIR", raising=False)
    src = make_tiny_videotext(seed=8, text=TEXT)
    name = "videomamba_m16_25M_f8_res224"
    info = get_checkpoint(name)
    assert info.kind == "videotext" and info.filename == name + ".pth" and info.num_frames == 8
    snap = tmp_path / "hub" / "models--OpenGVLab--VideoMamba" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "hub" / "models--OpenGVLab--VideoMamba" / "refs").mkdir()
    (tmp_path / "hub" / "models--OpenGVLab--VideoMamba" / "refs" / "main").write_text("0" * 40)
    torch.save({"model": _pretraining_sd(src)}, snap / info.filename)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model(name, cache_dir=tmp_path / "hub")
    _same_weights(src, model)
    assert model.card.name == name and model.init_state(1).tag == model.card.checkpoint_digest
    for n in ("videomamba_m16_5M_f8_res224", "videomamba_m16_17M_f8_res224"):
        assert get_checkpoint(n).kind == "videotext"
    from vmstream.models import create_model

    untrained = create_model("videomamba_m16_17M_f8_res224", depth=1)
    assert isinstance(untrained, VideoTextMamba) and untrained.card.num_frames == 8
