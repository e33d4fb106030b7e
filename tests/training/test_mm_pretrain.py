"""Multimodal pretraining: the model's official keys and masked forward, the two stages
(the second without teacher, at its own lr), resume equal to the uninterrupted run, the
official schedule, the Table II recipes, `vmstream train` on real files (and torchrun),
the synthetic recipe from the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.videotext import official_names, randomize_videotext_
from vmstream.models import VideoMambaPretrain
from vmstream.models.videotext_checkpoint import official_pretrain_keys
from vmstream.training.mm_losses import SpecialTokens
from vmstream.training.mm_model import Criterion, VideoTextPretrain
from vmstream.training.mm_pretrain import build_mm_model, build_mm_teacher, multimodal_fit, stages
from vmstream.training.optim import official_mm_cosine
from vmstream.training.recipes import load_recipe
from vmstream.training.synthetic_multimodal import SyntheticPairs, write_vocab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTH = os.path.join(REPO, "configs", "pretrain", "synthetic_multimodal.yaml")
MM_DIR = os.path.join(REPO, "configs", "pretrain", "multimodal")
VISION = dict(
    img_size=32, patch_size=8, depth=2, embed_dim=32, num_frames=4, clip_output_dim=16, ssm_cfg={"d_state": 8}
)
TEXT = dict(
    vocab_size=16,
    hidden_size=24,
    num_layers=3,
    num_heads=2,
    intermediate_size=40,
    max_position_embeddings=16,
    fusion_layer=2,
)
SPECIAL = SpecialTokens(pad=0, cls=2, sep=3, mask=4, vocab_size=16)  # write_vocab's 16 tokens


def _model(seed=0):
    torch.manual_seed(seed)
    m = VideoTextPretrain(Criterion(SPECIAL), vision=VISION, text=TEXT, embed_dim=16)
    return randomize_videotext_(m, seed)


def _mask(B, n, visible, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 1 + n, dtype=torch.bool)
    mask[:, 0] = False
    for b in range(B):
        mask[b, 1 + torch.randperm(n, generator=g)[:visible]] = False
    return mask


def test_the_pretraining_model_has_the_official_keys():
    m = _model()
    names = official_names(depth=2, num_layers=3, fusion_layer=2)
    official = [
        ("text_encoder.bert." + n[len("text_encoder.") :]) if n.startswith("text_encoder.") else n for n in names
    ]
    official += [
        "text_encoder.cls.predictions." + k
        for k in (
            "bias",
            "transform.dense.weight",
            "transform.dense.bias",
            "transform.LayerNorm.weight",
            "transform.LayerNorm.bias",
            "decoder.weight",
            "decoder.bias",
        )
    ]
    assert sorted(official_pretrain_keys(m.state_dict())) == sorted(official)


def test_an_official_layout_checkpoint_loads_key_for_key(tmp_path):
    src = _model(1)
    sd = official_pretrain_keys(src.state_dict())
    sd["clip_teacher.conv1.weight"] = torch.zeros(4, 3, 1, 8, 8)  # the teacher rides along, unused
    sd["text_encoder.bert.embeddings.position_ids"] = torch.arange(16)[None]
    path = tmp_path / "official.pth"
    torch.save({"model": sd, "epoch": 9}, path)
    cfg = load_recipe(
        SYNTH,
        [
            f"finetune={path}",
            f"multimodal.vocab={write_vocab(str(tmp_path / 'v.txt'))}",
            "model_args={embed_dim: 32, depth: 2, patch_size: 8, ssm_cfg: {d_state: 8}}",
            "multimodal.text_args={hidden_size: 24, num_layers: 3, num_heads: 2, "
            "intermediate_size: 40, max_position_embeddings: 16, fusion_layer: 2}",
            "multimodal.embed_dim=16",
        ],
    )
    from vmstream.models.tokenizer import BertTokenizer

    dst = build_mm_model(cfg, BertTokenizer(cfg.multimodal.vocab))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert dst.text_encoder.cls.predictions.decoder.weight is dst.text_encoder.embeddings.word_embeddings.weight


def test_masked_forward_is_the_official_student():
    """The CLIP features of the masked video forward equal the masked-pretraining student's
    (same weights), and an image skips the temporal positions and uses the image table."""
    m = _model().eval()
    enc = m.vision_encoder
    kw = dict(
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        clip_decoder_embed_dim=32,
        clip_output_dim=16,
        ssm_cfg={"d_state": 8},
        clip_norm_type="l2",
    )
    sd = {k: v for k, v in enc.state_dict().items() if not k.startswith("pool_norm")}
    student = VideoMambaPretrain(num_frames=4, **kw).eval()
    student.load_state_dict(sd)
    x = torch.randn(2, 3, 4, 32, 32)
    mask = _mask(2, 64, 16, 0)
    with torch.no_grad():
        ours = enc.forward_pretrain(x, mask, use_image=False, keep_temporal=False)
        torch.testing.assert_close(F.normalize(ours.clip, dim=-1), student(x, mask), rtol=1e-4, atol=1e-5)
        assert ours.tokens.shape == (2, 16, 32) and ours.pooled.shape == (2, 1, 32)
        img_student = VideoMambaPretrain(num_frames=1, **kw).eval()
        img_student.load_state_dict(dict(sd, temporal_pos_embedding=torch.zeros(1, 1, 32)))
        xi, mi = torch.randn(2, 3, 1, 32, 32), _mask(2, 16, 8, 1)
        torch.testing.assert_close(
            F.normalize(enc.forward_pretrain(xi, mi, use_image=True).clip, dim=-1),
            img_student(xi, mi),
            rtol=1e-4,
            atol=1e-5,
        )


def test_unmasked_forward_pools_per_frame_as_the_retrieval_path():
    m = _model().eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        out = m.vision_encoder.forward_pretrain(x, None, use_image=False, keep_temporal=True)
        ref = m.encode_video(x)
    assert out.clip is None
    torch.testing.assert_close(out.pooled, ref.pooled)
    torch.testing.assert_close(out.tokens, ref.tokens)


def _cfg(tmp_path, *over):
    tmp_path.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(str(tmp_path / "vocab.txt"))
    base = [
        f"multimodal.vocab={vocab}",
        "epochs=2",
        "batch_size=4",
        "warmup_epochs=0.5",
        "multimodal.unmasked.batch_size=4",
        "multimodal.unmasked.lr_scale_divisor=4",
        "lr_scale_divisor=4",
        f"output_dir={tmp_path / 'run'}",
        "save_ckpt=true",
    ]
    return load_recipe(SYNTH, base + list(over))


def _fit(cfg, calls=None):
    from vmstream.models.tokenizer import BertTokenizer

    tok = BertTokenizer(cfg.multimodal.vocab, max_length=cfg.multimodal.max_txt_l)
    data = {"image": SyntheticPairs(8, "image", 4, 32, 1), "video": SyntheticPairs(8, "video", 4, 32, 2)}
    torch.manual_seed(0)
    model = build_mm_model(cfg, tok)
    torch.manual_seed(1)
    teacher = build_mm_teacher(cfg)
    if calls is not None:
        teacher.register_forward_hook(lambda *a: calls.append(1))
    return multimodal_fit(cfg, data, model=model, teacher=teacher, tokenizer=tok, print_fn=lambda *a: None)


def test_two_stages_the_second_without_teacher_at_its_own_lr(tmp_path):
    cfg = _cfg(tmp_path, "multimodal.unmasked.lr=5e-4", "multimodal.unmasked.min_lr=5e-6")
    calls = []
    res = _fit(cfg, calls)
    masked, unmasked = res["masked"], res["unmasked"]
    assert len(masked["history"]) == 2 and len(unmasked["history"]) == 1
    assert len(calls) == len(masked["record"])  # the teacher saw only masked-stage batches
    assert all(r["loss_uta"] > 0 for r in masked["record"])
    assert all(r["loss_uta"] == 0 for r in unmasked["record"])
    assert {r["media"] for r in unmasked["record"]} == {"image", "video"}
    steps = len(unmasked["record"])  # 4 batches, update_freq 1
    want = official_mm_cosine(5e-4, 0.01, steps, int(0.2 * steps))
    np.testing.assert_allclose(unmasked["history"][0]["lrs"], want)
    want_masked = official_mm_cosine(3e-3, 3e-5 / 3e-3, 2 * 4, 2)
    np.testing.assert_allclose(masked["history"][0]["lrs"] + masked["history"][1]["lrs"], want_masked)
    assert (tmp_path / "run" / "masked" / "checkpoint-latest.pth").exists()
    assert (tmp_path / "run" / "unmasked" / "checkpoint-latest.pth").exists()


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    full = _fit(_cfg(tmp_path / "a"))["model"].state_dict()
    first = _fit(_cfg(tmp_path / "b", "stop_after_epochs=1"))
    assert first["stopped"] and len(first["masked"]["history"]) == 1 and "unmasked" not in first
    second = _fit(_cfg(tmp_path / "b"))
    assert [h["epoch"] for h in second["masked"]["history"]] == [1]
    # The resumed record starts with the stage's first steps (the `*_first=` figures).
    assert second["masked"]["record"][:2] == first["masked"]["record"][:2]
    for k, v in second["model"].state_dict().items():
        assert torch.equal(v, full[k]), k
    third = _fit(_cfg(tmp_path / "b"))  # both stages done: nothing runs, the weights are the final ones
    assert third["masked"]["history"] == [] and third["unmasked"]["history"] == []
    for k, v in third["model"].state_dict().items():
        assert torch.equal(v, full[k]), k


def test_official_schedule():
    lrs = official_mm_cosine(1.0, 0.01, 10, 4)
    np.testing.assert_allclose(lrs[:4], [0.01, 0.25, 0.5, 0.75])  # max(min_lr_multi, step / warmup)
    assert lrs[4] == 1.0 and lrs[-1] == pytest.approx(max(0.01, 0.5 * (1 + np.cos(np.pi * 5 / 6))))
    assert official_mm_cosine(1.0, 0.01, 100, 0)[-1] == 0.01  # clamped at the floor, not shifted


@pytest.mark.parametrize("corpus, sources", [("5m", 2), ("17m", 6), ("25m", 6)])
def test_table_ii_multimodal_recipes(corpus, sources):
    cfg = load_recipe(os.path.join(MM_DIR, f"{corpus}.yaml"))
    mm = cfg.multimodal
    assert cfg.task == "pretrain_multimodal" and f"videomamba_middle_{corpus}" in cfg.source
    assert cfg.opt == "adamw" and cfg.opt_betas == [0.9, 0.999] and cfg.weight_decay == 0.05
    assert cfg.batch_size * cfg.reference_gpus == 2048 and cfg.lr_scale_divisor == 2048
    total = cfg.batch_size * cfg.reference_gpus
    assert cfg.lr * total / cfg.lr_scale_divisor == pytest.approx(4e-4) and cfg.min_lr == pytest.approx(4e-6)
    assert cfg.warmup_epochs == 1 and cfg.epochs == 10 and cfg.num_frames == 8 and cfg.drop_path == 0.25
    assert (mm.image_mask_ratio, mm.video_mask_ratio, mm.mlm_masking_prob) == (0.5, 0.8, 0.5)
    assert mm.video_mask_type == mm.image_mask_type == "attention" and cfg.flip and mm.crop_scale == [0.5, 1.0]
    assert mm.gradient_checkpointing and mm.vtm_hard_neg and mm.loss_weight.uta == 1.0
    assert len(mm.train_file) == sources and sum(len(c) == 3 for c in mm.train_file) == 1  # one video corpus
    masked, unmasked = stages(cfg)
    assert (unmasked.epochs, unmasked.lr, unmasked.warmup_epochs, unmasked.batch_size) == (1, 8e-5, 0.2, 64)
    assert unmasked.lr_scale_divisor == 64 * cfg.reference_gpus and not unmasked.masked and masked.masked


def _files(tmp_path):
    from PIL import Image

    from tests.fixtures.media import make_video

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "vid").mkdir()
    imgs = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        imgs.append({"image": f"{i}.png", "caption": ["a big red square", "a small red square"][i % 2]})
    vids = []
    for i in range(4):
        make_video(str(tmp_path / "vid" / f"{i}.mp4"), seconds=1, size=(48, 40), fps=8)
        vids.append({"video": f"{i}.mp4", "caption": "a big blue square moving"})
    (tmp_path / "img.json").write_text(json.dumps(imgs))
    (tmp_path / "vid.json").write_text(json.dumps(vids))
    vocab = write_vocab(str(tmp_path / "vocab.txt"))
    return [
        f"multimodal.vocab={vocab}",
        f"multimodal.train_file=[[{tmp_path / 'img.json'}, {tmp_path / 'img'}], "
        f"[{tmp_path / 'vid.json'}, {tmp_path / 'vid'}, video]]",
        "task=pretrain_multimodal",
        "batch_size=2",
        "epochs=1",
        "multimodal.unmasked.batch_size=2",
        "decode_short_side=40",
        "flip=true",
        "lr_scale_divisor=2",
        "multimodal.unmasked.lr_scale_divisor=2",
    ]


def test_vmstream_train_multimodal_on_image_and_video_files(tmp_path):
    from vmstream.training.trainer import train_main

    over = _files(tmp_path) + [f"output_dir={tmp_path / 'run'}", "save_ckpt=true"]
    assert train_main(SYNTH, over) == 0
    for stage in ("masked", "unmasked"):
        ck = torch.load(tmp_path / "run" / stage / "checkpoint-latest.pth", map_location="cpu", weights_only=False)
        assert ck["epoch"] == 0 and ck["step"] == 4  # 2 image + 2 video batches of 2
        assert "text_encoder.cls.predictions.bias" in ck["model"]  # the official pretraining keys
        assert "text_encoder.bert.embeddings.word_embeddings.weight" in ck["model"]
    # the pretrained model serves retrieval: load_model builds the video-text model from it
    from vmstream.models import VideoTextMamba, load_model

    served = load_model(str(tmp_path / "run" / "unmasked" / "checkpoint-latest.pth"), num_heads=2)
    assert isinstance(served, VideoTextMamba) and not hasattr(served.text_encoder, "cls")
    assert torch.equal(served.vision_proj.weight, ck["model"]["vision_proj.weight"])


def test_bad_annotation_from_the_command_line_is_one_line(tmp_path, capsys):
    from vmstream.training.trainer import train_main

    over = _files(tmp_path)
    (tmp_path / "img.json").write_text(json.dumps([{"image": "0.png", "caption": "ok"}, {"image": "1.png"}]))
    assert train_main(SYNTH, over) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vmstream train: ") and "img.json: entry 1: no 'caption' field" in err


def test_torchrun_two_cpu_processes_multimodal(tmp_path):
    """DDP on two CPU processes: VTC gathered across ranks, weights in sync at the end."""
    import socket

    over = _files(tmp_path) + [f"output_dir={tmp_path / 'run'}", "torch_threads=1"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PYTHONPATH=REPO)
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
        SYNTH,
        *over,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ranks_in_sync=true world_size=2" in r.stdout, r.stdout + r.stderr[-2000:]


def test_synthetic_recipe_from_the_command_line_short(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "vmstream.training",
        "train",
        "--config",
        SYNTH,
        "epochs=2",
        "multimodal.unmasked.epochs=1",
        "synthetic_multimodal.train_videos=32",
        "synthetic_multimodal.train_images=16",
        "synthetic_multimodal.heldout_videos=16",
    ]
    r = subprocess.run(
        cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    for key in (
        "vtc_loss_first",
        "vtc_loss_last",
        "mlm_loss_first",
        "uta_loss_last",
        "retrieval_r1_before",
        "retrieval_r1_after",
        "chance_r1",
    ):
        assert any(line.startswith(key + "=") for line in lines), key
    # Too short to be sure to learn: the exit code is the verdict on the printed figures
    # (train_main: 0 when retrieval R@1 rose by 0.2, else 1), never a crash's 1.
    fig = {k: float(v) for k, v in (ln.split("=", 1) for ln in lines if ln.startswith("retrieval_r1_"))}
    assert r.returncode == (0 if fig["retrieval_r1_after"] >= fig["retrieval_r1_before"] + 0.2 else 1), (
        fig,
        r.stderr[-3000:],
    )


@pytest.mark.slow
def test_synthetic_recipe_learns(capsys):
    from vmstream.training.trainer import train_main

    assert train_main(SYNTH) == 0
    out = {
        k: float(v)
        for k, v in (
            line.split("=")
            for line in capsys.readouterr().out.splitlines()
            if "=" in line and not line.startswith("epoch")
        )
    }
    assert out["retrieval_r1_after"] > out["retrieval_r1_before"] + 0.5
    assert out["vtc_loss_last"] < out["vtc_loss_first"] - 1.0


def test_weight_decay_groups_are_the_official_add_weight_decay():
    """video_mm's optimizer: no decay for 1-D tensors and biases only (so `temp`, 0-d, and
    mamba's A_log are decayed), as the stages build it (layer_decay_mode official)."""
    from vmstream.training.optim import parameter_groups

    _, specs = parameter_groups(_model(), 0.05, None, "official")
    decayed = {n for s in specs if s.weight_decay > 0 for n in s.param_names}
    assert {"temp", "vision_encoder.layers.0.mixer.A_log", "vision_encoder.pos_embed", "itm_head.weight"} <= decayed
    assert not {"itm_head.bias", "vision_encoder.pool_norm.weight", "text_encoder.cls.predictions.bias"} & decayed


def test_stop_after_epochs_counts_both_stages(tmp_path):
    first = _fit(_cfg(tmp_path, "stop_after_epochs=2"))  # the masked stage's 2 epochs, then stop
    assert first["stopped"] and len(first["masked"]["history"]) == 2 and "unmasked" not in first
    second = _fit(_cfg(tmp_path, "stop_after_epochs=2"))
    assert not second["stopped"] and second["masked"]["history"] == [] and len(second["unmasked"]["history"]) == 1


def test_resume_names_the_checkpoint_to_continue(tmp_path):
    """`resume: PATH` continues the stage that saved PATH (it used to be refused), in
    another output directory, and repeats the uninterrupted run: a checkpoint of the
    masked stage resumes its epoch 1 then runs the unmasked stage; one of the unmasked
    stage skips the masked stage."""
    full = _fit(_cfg(tmp_path / "a"))["model"].state_dict()
    _fit(_cfg(tmp_path / "b", "stop_after_epochs=1"))
    masked_ckpt = tmp_path / "b" / "run" / "masked" / "checkpoint-latest.pth"
    res = _fit(_cfg(tmp_path / "c", f"resume={masked_ckpt}"))
    assert [h["epoch"] for h in res["masked"]["history"]] == [1] and len(res["unmasked"]["history"]) == 1
    for k, v in res["model"].state_dict().items():
        assert torch.equal(v, full[k]), k
    unmasked_ckpt = tmp_path / "a" / "run" / "unmasked" / "checkpoint-latest.pth"
    done = _fit(_cfg(tmp_path / "d", f"resume={unmasked_ckpt}"))
    assert done["masked"]["history"] == [] and done["unmasked"]["history"] == []
    for k, v in done["model"].state_dict().items():
        assert torch.equal(v, full[k]), k
    from vmstream.config_loader import ConfigError

    with pytest.raises(ConfigError, match="resume: .*does not exist"):
        _fit(_cfg(tmp_path / "e", f"resume={tmp_path / 'nowhere.pth'}"))


def _synth_cfg(tmp_path, *over):
    return load_recipe(SYNTH, [f"multimodal.vocab={write_vocab(str(tmp_path / 'v.txt'))}", *over])


def test_vision_encoder_from_an_official_mask_pt_student(tmp_path):
    from vmstream.models.tokenizer import BertTokenizer
    from vmstream.models.videomamba import resample_temporal_pos

    torch.manual_seed(3)
    student = VideoMambaPretrain(
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_frames=8,
        clip_decoder_embed_dim=32,
        clip_output_dim=16,
        ssm_cfg={"d_state": 8},
    )
    torch.save({"model": student.state_dict()}, tmp_path / "m16_k400_mask_pt.pth")
    cfg = _synth_cfg(tmp_path, f"multimodal.vision_pretrained={tmp_path / 'm16_k400_mask_pt.pth'}")
    model = build_mm_model(cfg, BertTokenizer(cfg.multimodal.vocab))
    enc = model.vision_encoder
    assert torch.equal(enc.layers[1].mixer.A_log, student.layers[1].mixer.A_log)
    assert torch.equal(enc.clip_decoder[0].head.weight, student.clip_decoder[0].head.weight)
    torch.testing.assert_close(enc.temporal_pos_embedding, resample_temporal_pos(student.temporal_pos_embedding, 4))
    bad = {k: v for k, v in student.state_dict().items() if not k.startswith("layers.1.")}
    torch.save(bad, tmp_path / "bad.pth")
    from vmstream.config_loader import ConfigError

    with pytest.raises(ConfigError, match="vision_pretrained: .* missing"):
        build_mm_model(
            _synth_cfg(tmp_path, f"multimodal.vision_pretrained={tmp_path / 'bad.pth'}"),
            BertTokenizer(cfg.multimodal.vocab),
        )


def test_bert_from_hugging_face_bert_base_layout(tmp_path):
    """bert.* and cls.predictions.* load; the pooler and the NSP head are ignored; the
    fusion layers' cross-attention stays initialised, as with the official from_pretrained."""
    from vmstream.models.tokenizer import BertTokenizer

    cfg = _synth_cfg(tmp_path)
    tok = BertTokenizer(cfg.multimodal.vocab)
    torch.manual_seed(5)
    donor = build_mm_model(cfg, tok).text_encoder
    hf = {}
    for k, v in donor.state_dict().items():
        if "crossattention" in k:
            continue
        hf[k if k.startswith("cls.") else "bert." + k] = v.clone()
    hf["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    hf["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    hf["bert.embeddings.position_ids"] = torch.arange(16)[None]
    # the released .bin's legacy LayerNorm names
    hf["bert.embeddings.LayerNorm.gamma"] = hf.pop("bert.embeddings.LayerNorm.weight")
    hf["bert.embeddings.LayerNorm.beta"] = hf.pop("bert.embeddings.LayerNorm.bias")
    torch.save(hf, tmp_path / "pytorch_model.bin")
    torch.manual_seed(6)
    model = build_mm_model(_synth_cfg(tmp_path, f"multimodal.text_pretrained={tmp_path / 'pytorch_model.bin'}"), tok)
    te = model.text_encoder
    assert torch.equal(
        te.encoder.layer[0].attention.self.query.weight, donor.encoder.layer[0].attention.self.query.weight
    )
    assert torch.equal(te.cls.predictions.transform.dense.weight, donor.cls.predictions.transform.dense.weight)
    assert torch.equal(te.cls.predictions.decoder.weight, donor.embeddings.word_embeddings.weight)  # tied
    assert torch.equal(te.embeddings.LayerNorm.weight, donor.embeddings.LayerNorm.weight)
    assert not torch.equal(
        te.encoder.layer[2].crossattention.self.key.weight, donor.encoder.layer[2].crossattention.self.key.weight
    )
