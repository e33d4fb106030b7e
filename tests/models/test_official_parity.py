"""vmstream held to what OpenGVLab/VideoMamba's own code computes.

The fixtures under tests/fixtures/official/ were written by `scripts/record-official`,
which runs the official model code (commit in meta.json) on the CPU with only its CUDA /
Triton kernels swapped for the reference functions that ship beside them. Unlike the
oracles in tests/fixtures/videomamba.py, nothing here was written from our reading of
the official code: the numbers are what that code printed.

Each family's state dict is loaded with vmstream's own loader, the recorded inputs are
run, and every recorded output must agree to 1e-5 relative to its largest magnitude
(fp32). The guard tests change one weight and show the same comparison then fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vmstream.models import (
    ClipTeacher,
    VideoMambaPretrain,
    load_checkpoint,
    load_model,
    read_checkpoint,
)
from vmstream.training.distill_loss import distill_loss

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "official"
META = json.loads((FIXTURES / "meta.json").read_text())
RTOL = 1e-5


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over max |want|: a relative error that does not blow up on the
    entries that happen to be near zero."""
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    scale = want.abs().max().clamp_min(1e-30)
    return float((got.double() - want.double()).abs().max() / scale)


def assert_official(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    err = rel_err(got, want)
    assert err <= RTOL, f"{what}: relative difference {err:.3g} from the official output (allowed {RTOL})"


def io(name: str) -> dict:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def test_meta_names_the_official_commit():
    assert META["official_repo"] == "https://github.com/OpenGVLab/VideoMamba"
    assert len(META["official_commit"]) == 40 and int(META["official_commit"], 16) >= 0


def test_fixtures_stay_small():
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 5 * 2**20


# --------------------------------------------------------------------------- the classifier


def _classifier():
    # load_model infers the configuration from the official training save itself.
    return load_model(
        FIXTURES / "classifier_checkpoint.pth", num_frames=META["families"]["classifier"]["config"]["num_frames"]
    )


def test_classifier_features_and_logits_are_the_official_ones():
    rec = io("classifier_io.pt")
    model = _classifier()
    with torch.no_grad():
        feats = model.forward_features(rec["input"])
        logits = model(rec["input"])
    assert_official(feats, rec["features"], "classifier features")
    assert_official(logits, rec["logits"], "classifier logits")


def test_classifier_load_checkpoint_into_a_built_model():
    from vmstream.models import VideoMamba

    cfg = {
        k: v
        for k, v in META["families"]["classifier"]["config"].items()
        if k not in ("drop_path_rate", "fused_add_norm", "rms_norm", "residual_in_fp32", "bimamba")
    }
    model = VideoMamba(**cfg)
    load_checkpoint(model, FIXTURES / "classifier_checkpoint.pth")
    model.eval()
    rec = io("classifier_io.pt")
    with torch.no_grad():
        assert_official(model(rec["input"]), rec["logits"], "classifier logits")


def test_classifier_guard_one_changed_weight_fails():
    rec = io("classifier_io.pt")
    model = _classifier()
    with torch.no_grad():
        model.layers[1].mixer.x_proj_b.weight[3, 5] += 0.05  # one entry: the backward scan's dt projection
        err = rel_err(model(rec["input"]), rec["logits"])
    assert err > 10 * RTOL


# --------------------------------------------------------------------------- masked pretraining

MASKS = ("tube", "random", "attention")


def _student() -> VideoMambaPretrain:
    cfg = META["families"]["pretrain"]["student"]
    model = VideoMambaPretrain(**cfg)
    sd, _ = read_checkpoint(FIXTURES / "pretrain_student.pth")
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _teacher(return_attn: bool) -> ClipTeacher:
    model = ClipTeacher(**META["families"]["pretrain"]["teacher"], return_attn=return_attn)
    model.load_state_dict(torch.load(FIXTURES / "pretrain_teacher.pth", weights_only=True))
    return model.eval()


@pytest.mark.parametrize("mask_type", MASKS)
def test_pretrain_student_teacher_and_loss_are_the_official_ones(mask_type):
    rec = io("pretrain_io.pt")
    student, teacher = _student(), _teacher(return_attn=mask_type == "attention")
    mask = rec[f"{mask_type}/mask"]
    with torch.no_grad():
        if mask_type == "attention":
            target_all, attn = teacher(rec["videos"])
            assert_official(attn, rec["teacher_attn"], "teacher attention")
        else:
            target_all = teacher(rec["videos"])
        assert_official(target_all, rec[f"{mask_type}/teacher"], f"teacher features ({mask_type})")
        K, B, _, C = target_all.shape
        targets = target_all[~mask.unsqueeze(0).expand(K, -1, -1)].reshape(K, B, -1, C)
        assert_official(targets, rec[f"{mask_type}/targets"], f"teacher targets ({mask_type})")
        visible = student.forward_features(rec["videos"], mask)
        assert_official(visible, rec[f"{mask_type}/student_visible"], f"student visible features ({mask_type})")
        pred = student(rec["videos"], mask)
        assert_official(pred, rec[f"{mask_type}/student"], f"student predictions ({mask_type})")
        loss = distill_loss(pred, targets, "l2")
    assert_official(loss, rec[f"{mask_type}/loss"], f"loss ({mask_type})")


def test_pretrain_guard_one_changed_weight_fails():
    rec = io("pretrain_io.pt")
    student = _student()
    with torch.no_grad():
        student.layers[0].mixer.conv1d_b.weight[7, 0, 2] += 0.5
        err = rel_err(student(rec["videos"], rec["tube/mask"]), rec["tube/student"])
    assert err > 10 * RTOL


# --------------------------------------------------------------------------- the video-text model


def _videotext():
    bert = META["families"]["videotext"]["bert"]
    # load_model reads the official training save (its pickled EasyDict config as inert data).
    return load_model(FIXTURES / "videotext_checkpoint.pth", num_heads=bert["num_attention_heads"])


def _video_text_encodings(model, rec):
    video = model.encode_video(rec["images"].permute(0, 2, 1, 3, 4))  # official loaders give [B, T, C, H, W]
    text = model.encode_text(rec["input_ids"], rec["attention_mask"])
    return video, text


def test_videotext_encoders_similarity_and_itm_are_the_official_ones():
    rec = io("videotext_io.pt")
    model = _videotext()
    with torch.no_grad():
        video, text = _video_text_encodings(model, rec)
        assert_official(video.tokens, rec["vision_embeds"], "vision embeddings (ITM memory)")
        assert_official(video.pooled, rec["pooled_vision_embeds"], "pooled vision features")
        assert_official(model.vision_proj(video.pooled), rec["vision_proj"], "projected vision features")
        assert_official(text.tokens, rec["text_embeds"], "text states")
        assert_official(model.text_proj(text.tokens[:, 0]), rec["text_proj"], "projected text features")
        sim = model.similarity(video.features, text.features)
        assert_official(sim, rec["sim_i2t"], "retrieval similarity")
        assert_official(sim.T, rec["sim_t2i"], "retrieval similarity (text to video)")
        itm = model.itm_scores(video.tokens, rec["input_ids"], rec["attention_mask"])
        assert_official(itm, rec["itm_logits"][..., 1], "ITM logits")


def test_videotext_retrieval_scores_are_official_evaluation():
    from vmstream.pipeline.retrieval_eval import retrieval_scores

    rec = io("videotext_io.pt")
    model = _videotext()
    with torch.no_grad():
        video, text = _video_text_encodings(model, rec)
        i2t_x, t2i_x, i2t = retrieval_scores(
            model,
            video.features,
            list(video.tokens),
            text.tokens,
            rec["attention_mask"],
            text.features,
            k_test=META["families"]["videotext"]["k_test"],
        )
    assert_official(i2t, rec["eval_i2t_emb"], "evaluation() i2t_emb")
    assert_official(i2t.T, rec["eval_t2i_emb"], "evaluation() t2i_emb")
    # -100 outside each query's top k: the same places, and the same ITM scores inside.
    assert torch.equal(i2t_x == -100, rec["eval_i2t_x"] == -100)
    assert torch.equal(t2i_x == -100, rec["eval_t2i_x"] == -100)
    assert_official(i2t_x, rec["eval_i2t_x"], "evaluation() i2t_x")
    assert_official(t2i_x, rec["eval_t2i_x"], "evaluation() t2i_x")
    assert_official(
        torch.where(i2t_x == -100, 0, i2t_x),
        torch.where(i2t_x == -100, 0, rec["eval_i2t_x"]),
        "evaluation() i2t_x ITM entries",
    )


def test_videotext_tokenizer_gives_the_official_ids():
    from vmstream.models.tokenizer import BertTokenizer

    rec = io("videotext_io.pt")
    meta = META["families"]["videotext"]
    tok = BertTokenizer(FIXTURES / meta["vocab"], max_length=meta["max_txt_l"])
    batch = tok(meta["texts"], max_length=meta["max_txt_l"], padding="max_length", warn=False)
    assert torch.equal(batch.input_ids, rec["input_ids"])
    assert torch.equal(batch.attention_mask, rec["attention_mask"])


def test_videotext_guard_one_changed_weight_fails():
    rec = io("videotext_io.pt")
    model = _videotext()
    with torch.no_grad():
        model.text_encoder.encoder.layer[2].crossattention.self.key.weight[1, 2] += 0.5  # one fusion weight
        video, _ = _video_text_encodings(model, rec)
        err = rel_err(
            model.itm_scores(video.tokens, rec["input_ids"], rec["attention_mask"]), rec["itm_logits"][..., 1]
        )
    assert err > RTOL
