"""VideoTextMamba against hand-written references of the official formulas.

The references below read the weights by their official names and follow the official
code's equations (xbert.py's post-norm BERT with the -10000 padding bias and erf GELU;
PretrainVideoMamba's "cls+avg" pooling with keep_temporal; retrieval_utils' get_sim and
ITM path), in float64, sharing no code with vmstream.models.bert / videotext. The Mamba
blocks' oracle is the classifier's (tests/fixtures/videomamba.py).
"""

import math

import pytest
import torch

from tests.fixtures.videomamba import oracle_embed, oracle_forward
from tests.fixtures.videotext import TINY_TEXT, TINY_VISION, make_tiny_videotext, official_names
from vmstream.models import VideoTextMamba

TOL = dict(atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------- references


def _sd(model):
    return {k: v.double() for k, v in model.state_dict().items()}


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _attention(sd, prefix, x, src, bias, heads, eps):
    B, L, D = x.shape
    d = D // heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3)

    q, k, v = (
        split(_lin(sd, prefix + ".self.query", x)),
        split(_lin(sd, prefix + ".self.key", src)),
        split(_lin(sd, prefix + ".self.value", src)),
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        scores = scores + bias
    ctx = (torch.softmax(scores, -1) @ v).permute(0, 2, 1, 3).reshape(B, L, D)
    return _ln(
        _lin(sd, prefix + ".output.dense", ctx) + x,
        sd[prefix + ".output.LayerNorm.weight"],
        sd[prefix + ".output.LayerNorm.bias"],
        eps,
    )


def ref_bert(sd, ids, mask, layers, *, embeds=None, memory=None, heads, eps=1e-12):
    """xbert BertModel over `layers` (a range), text states or fused states [B, L, D]."""
    p = "text_encoder."
    if embeds is None:
        L = ids.shape[1]
        x = (
            sd[p + "embeddings.word_embeddings.weight"][ids]
            + sd[p + "embeddings.token_type_embeddings.weight"][0]
            + sd[p + "embeddings.position_embeddings.weight"][:L]
        )
        x = _ln(x, sd[p + "embeddings.LayerNorm.weight"], sd[p + "embeddings.LayerNorm.bias"], eps)
    else:
        x = embeds
    bias = (1.0 - mask.double())[:, None, None, :] * -10000.0
    for i in layers:
        lp = p + f"encoder.layer.{i}"
        x = _attention(sd, lp + ".attention", x, x, bias, heads, eps)
        if lp + ".crossattention.self.query.weight" in sd:
            x = _attention(sd, lp + ".crossattention", x, memory, None, heads, eps)
        h = _gelu(_lin(sd, lp + ".intermediate.dense", x))
        x = _ln(
            _lin(sd, lp + ".output.dense", h) + x,
            sd[lp + ".output.LayerNorm.weight"],
            sd[lp + ".output.LayerNorm.bias"],
            eps,
        )
    return x


def ref_vision(model, clip):
    """(patch tokens, per-frame pooled, per-frame normalised projected features), official."""
    sd = _sd(model)
    vis = {k[len("vision_encoder.") :]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    vis["norm_f.weight"] = vis["norm.weight"]  # the oracle's name for the final norm
    tokens = oracle_forward(vis, oracle_embed(vis, clip, TINY_VISION["num_frames"]), TINY_VISION["depth"])
    return ref_pool(sd, tokens, clip.shape[2])


def ref_pool(sd, tokens, T):
    x_cls, x_vis = tokens[:, :1], tokens[:, 1:]
    B, _, C = x_vis.shape
    pooled = _ln(
        x_cls + x_vis.view(B, T, -1, C).mean(2),
        sd["vision_encoder.pool_norm.weight"],
        sd["vision_encoder.pool_norm.bias"],
        1e-5,
    )
    proj = _lin(sd, "vision_proj", pooled)
    return x_vis, pooled, proj / proj.norm(dim=-1, keepdim=True)


def ref_text_feature(sd, ids, mask):
    states = ref_bert(sd, ids, mask, range(TINY_TEXT["fusion_layer"]), heads=TINY_TEXT["num_heads"])
    proj = _lin(sd, "text_proj", states[:, 0])
    return states, proj / proj.norm(dim=-1, keepdim=True)


def ref_similarity(vproj, tproj):
    """get_sim, pair by pair: mean over frames of the cosine."""
    out = torch.zeros(vproj.shape[0], tproj.shape[0], dtype=torch.float64)
    for i in range(vproj.shape[0]):
        for j in range(tproj.shape[0]):
            cos = [
                torch.dot(vproj[i, t] / vproj[i, t].norm(), tproj[j] / tproj[j].norm()) for t in range(vproj.shape[1])
            ]
            out[i, j] = sum(cos) / len(cos)
    return out


def ref_itm(sd, video_tokens, text_states, mask):
    out = torch.zeros(video_tokens.shape[0], text_states.shape[0], dtype=torch.float64)
    for i in range(video_tokens.shape[0]):
        for j in range(text_states.shape[0]):
            fused = ref_bert(
                sd,
                None,
                mask[j : j + 1],
                range(TINY_TEXT["fusion_layer"], TINY_TEXT["num_layers"]),
                embeds=text_states[j : j + 1],
                memory=video_tokens[i : i + 1],
                heads=TINY_TEXT["num_heads"],
            )
            out[i, j] = _lin(sd, "itm_head", fused[:, 0])[0, 1]
    return out


# ---------------------------------------------------------------------- inputs


def _clip(b=2, t=4, seed=0):
    return torch.randn(b, 3, t, 32, 32, generator=torch.Generator().manual_seed(seed))


def _text(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY_TEXT["vocab_size"], (3, 9), generator=g)
    ids[:, 0] = 2  # a [CLS]-like id
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # padding must change nothing but the padded positions
    mask[1, 7:] = 0
    ids[mask == 0] = 0
    return ids, mask


# ----------------------------------------------------------------------- tests


def test_state_dict_names_are_the_official_ones_key_for_key():
    model = make_tiny_videotext()
    expected = official_names(TINY_VISION["depth"], TINY_TEXT["num_layers"], TINY_TEXT["fusion_layer"])
    assert sorted(model.state_dict()) == sorted(expected)


def test_default_constructor_is_the_official_videomamba_m_with_bert_base():
    # Full depth would build 200M parameters; the depths are checked on the config.
    m = VideoTextMamba(vision=dict(depth=1), text=dict(num_layers=10))
    assert VideoTextMamba.__init__.__defaults__[-2:] == (512, 0.07)
    from vmstream.models.videotext import TEXT_DEFAULTS, VISION_DEFAULTS

    assert VISION_DEFAULTS["depth"] == 32 and TEXT_DEFAULTS["num_layers"] == 12 and TEXT_DEFAULTS["fusion_layer"] == 9
    sd = m.state_dict()
    assert sd["vision_encoder.pos_embed"].shape == (1, 197, 576)
    assert sd["vision_encoder.temporal_pos_embedding"].shape == (1, 8, 576)
    assert sd["text_encoder.embeddings.word_embeddings.weight"].shape == (30522, 768)
    assert sd["text_encoder.encoder.layer.9.crossattention.self.key.weight"].shape == (768, 576)
    assert "text_encoder.encoder.layer.8.crossattention.self.key.weight" not in sd
    assert sd["vision_proj.weight"].shape == (512, 576) and sd["itm_head.weight"].shape == (2, 768)
    assert sd["vision_encoder.clip_decoder.0.head.weight"].shape == (512, 576)
    assert m.card.crop == "direct" and m.card.interpolation == "bicubic" and m.card.num_frames == 8


def test_encode_video_matches_the_official_pooling_per_frame():
    model = make_tiny_videotext(seed=1)
    clip = _clip()
    with torch.no_grad():
        v = model.encode_video(clip)
    tokens, pooled, feats = ref_vision(model, clip)
    assert v.tokens.shape == (2, 4 * 4, 32) and v.pooled.shape == (2, 4, 32) and v.features.shape == (2, 4, 16)
    torch.testing.assert_close(v.tokens.double(), tokens, **TOL)
    torch.testing.assert_close(v.pooled.double(), pooled, **TOL)
    torch.testing.assert_close(v.features.double(), feats, **TOL)


def test_encode_text_is_the_cls_after_the_text_only_layers():
    model = make_tiny_videotext(seed=2)
    ids, mask = _text()
    with torch.no_grad():
        t = model.encode_text(ids, mask)
    states, feats = ref_text_feature(_sd(model), ids, mask)
    assert t.tokens.shape == (3, 9, 24) and t.features.shape == (3, 16)
    torch.testing.assert_close(t.tokens.double(), states, **TOL)
    torch.testing.assert_close(t.features.double(), feats, **TOL)
    # the fusion layers do not take part: changing them leaves the text feature alone
    with torch.no_grad():
        model.text_encoder.encoder.layer[2].output.dense.weight.mul_(3)
        torch.testing.assert_close(model.encode_text(ids, mask).features, t.features)


def test_padding_changes_nothing_but_padded_positions():
    model = make_tiny_videotext(seed=3)
    ids, mask = _text()
    with torch.no_grad():
        full = model.encode_text(ids, mask).features
        alone = model.encode_text(ids[:1, :5], mask[:1, :5]).features
    torch.testing.assert_close(full[:1], alone, **TOL)


def test_similarity_is_the_mean_over_frames_of_the_cosine_without_temperature():
    model = make_tiny_videotext(seed=4)
    clip, (ids, mask) = _clip(seed=1), _text(seed=1)
    with torch.no_grad():
        v, t = model.encode_video(clip), model.encode_text(ids, mask)
        sim = model.similarity(v.features, t.features)
    _, _, vref = ref_vision(model, clip)
    _, tref = ref_text_feature(_sd(model), ids, mask)
    assert sim.shape == (2, 3)
    torch.testing.assert_close(sim.double(), ref_similarity(vref, tref), **TOL)


def test_itm_scores_are_logit_1_of_the_fusion_cls_over_the_patch_tokens():
    model = make_tiny_videotext(seed=5)
    clip, (ids, mask) = _clip(seed=2), _text(seed=2)
    with torch.no_grad():
        v = model.encode_video(clip)
        itm = model.itm_scores(v.tokens, ids, mask)
        itm_chunked = model.itm_scores(v.tokens, ids, mask, chunk=2)
    tokens, _, _ = ref_vision(model, clip)
    states, _ = ref_text_feature(_sd(model), ids, mask)
    ref = ref_itm(_sd(model), tokens, states, mask)
    assert itm.shape == (2, 3)
    torch.testing.assert_close(itm.double(), ref, **TOL)
    torch.testing.assert_close(itm_chunked, itm)


def test_itm_needs_the_video_tokens_in_fusion_layers():
    model = make_tiny_videotext()
    ids, mask = _text()
    with torch.no_grad(), pytest.raises(ValueError, match="cross-attention"):
        model.text_encoder(ids, mask, mode="multi_modal")


def test_segment_embedding_inner_product_is_the_official_similarity():
    model = make_tiny_videotext(seed=6)
    clip, (ids, mask) = _clip(seed=3), _text(seed=3)
    with torch.no_grad():
        seg = model.forward_segment(clip)
        v, t = model.encode_video(clip), model.encode_text(ids, mask)
    assert seg.features.shape == (2, 16)
    torch.testing.assert_close(seg.features @ t.features.T, model.similarity(v.features, t.features), **TOL)
    torch.testing.assert_close(
        model.similarity(seg.features, t.features), model.similarity(v.features, t.features), **TOL
    )
