"""The CLIP teacher: official forward semantics, and its weights in the official extracted,
whole-OpenAI and Hugging Face layouts, mapped key for key."""

import pytest
import torch

from vmstream.models import CheckpointError, ClipTeacher
from vmstream.models.clip_teacher import clip_teacher

TINY = dict(input_resolution=32, patch_size=16, width=32, layers=2, heads=4, output_dim=24)


def _teacher(**kw):
    torch.manual_seed(0)
    return ClipTeacher(**{**TINY, **kw}).eval()


def to_hf(sd, layers):
    """The official layout written in transformers' CLIPModel names (CLIPVisionTransformer:
    embeddings.{class_embedding, patch_embedding, position_embedding}, pre_layrnorm,
    encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2},
    post_layernorm; CLIPModel.visual_projection without bias), plus a text-tower key."""
    v = "vision_model."
    hf = {
        v + "embeddings.class_embedding": sd["class_embedding"],
        v + "embeddings.patch_embedding.weight": sd["conv1.weight"][:, :, 0],
        v + "embeddings.position_embedding.weight": sd["positional_embedding"],
        v + "embeddings.position_ids": torch.arange(sd["positional_embedding"].shape[0])[None],
        v + "pre_layrnorm.weight": sd["ln_pre.weight"],
        v + "pre_layrnorm.bias": sd["ln_pre.bias"],
        v + "post_layernorm.weight": sd["ln_post.weight"],
        v + "post_layernorm.bias": sd["ln_post.bias"],
        "visual_projection.weight": sd["proj"].t(),
        "text_model.embeddings.token_embedding.weight": torch.zeros(3, 4),
        "logit_scale": torch.tensor(1.0),
    }
    for i in range(layers):
        o, h = f"transformer.resblocks.{i}.", f"{v}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, val = sd[o + f"attn.in_proj_{kind}"].chunk(3)
            hf[h + f"self_attn.q_proj.{kind}"], hf[h + f"self_attn.k_proj.{kind}"] = q, k
            hf[h + f"self_attn.v_proj.{kind}"] = val
            hf[h + f"self_attn.out_proj.{kind}"] = sd[o + f"attn.out_proj.{kind}"]
            hf[h + f"layer_norm1.{kind}"] = sd[o + f"ln_1.{kind}"]
            hf[h + f"layer_norm2.{kind}"] = sd[o + f"ln_2.{kind}"]
            hf[h + f"mlp.fc1.{kind}"] = sd[o + f"mlp.c_fc.{kind}"]
            hf[h + f"mlp.fc2.{kind}"] = sd[o + f"mlp.c_proj.{kind}"]
    return hf


def test_official_keys():
    keys = set(_teacher().state_dict())
    want = {
        "class_embedding",
        "positional_embedding",
        "proj",
        "conv1.weight",
        "ln_pre.weight",
        "ln_pre.bias",
        "ln_post.weight",
        "ln_post.bias",
    }
    for i in range(2):
        p = f"transformer.resblocks.{i}."
        want |= {
            p + s
            for s in (
                "attn.in_proj_weight",
                "attn.in_proj_bias",
                "attn.out_proj.weight",
                "attn.out_proj.bias",
                "ln_1.weight",
                "ln_1.bias",
                "mlp.c_fc.weight",
                "mlp.c_fc.bias",
                "mlp.c_proj.weight",
                "mlp.c_proj.bias",
                "ln_2.weight",
                "ln_2.bias",
            )
        }
    assert keys == want


@pytest.mark.parametrize("layout", ["official_3d", "official_2d", "openai_full", "huggingface"])
def test_layouts_load_to_same_outputs(layout, tmp_path):
    src = _teacher(clip_return_cls=True, return_attn=True)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if layout == "official_2d":  # vit_b16.pth as extracted: a 2D patch conv
        sd["conv1.weight"] = sd["conv1.weight"][:, :, 0]
    elif layout == "openai_full":
        sd = {
            **{"visual." + k: v for k, v in sd.items()},
            "transformer.resblocks.0.ln_1.weight": torch.ones(8),
            "token_embedding.weight": torch.zeros(3, 8),
        }
    elif layout == "huggingface":
        sd = to_hf(sd, 2)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    dst = clip_teacher("clip_b16", weights=str(path), **TINY, clip_return_cls=True, return_attn=True)
    assert not any(p.requires_grad for p in dst.parameters())
    torch.manual_seed(1)
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        a, attn_a = src(video)
        b, attn_b = dst(video)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn_a, attn_b, rtol=1e-5, atol=1e-6)


def test_missing_and_unexpected_keys_are_named():
    sd = _teacher().state_dict()
    del sd["ln_post.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing \['ln_post.bias'\].*unexpected \['extra.weight'\]"):
        _teacher().load_state_dict(sd)
    hf = to_hf(_teacher().state_dict(), 2)
    del hf["visual_projection.weight"]
    with pytest.raises(CheckpointError, match="visual_projection"):
        _teacher().load_state_dict(hf)


def test_kernel_size_inflation_centre_frame():
    t = _teacher(kernel_size=3)
    sd2d = {k: v for k, v in _teacher().state_dict().items()}
    sd2d["conv1.weight"] = torch.randn(32, 3, 16, 16)
    t.load_state_dict(sd2d)
    w = t.conv1.weight
    assert torch.equal(w[:, :, 1], sd2d["conv1.weight"]) and not w[:, :, 0].any() and not w[:, :, 2].any()


def test_forward_semantics_frames_cls_mean_attention():
    # proj = identity and no normalisation so the raw block outputs are visible
    t = _teacher(output_dim=32, clip_norm_type="none", clip_return_cls=True, return_attn=True)
    with torch.no_grad():
        t.proj.copy_(torch.eye(32))
    torch.manual_seed(2)
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        out, attn = t(video)
        frames = [t(video[:, :, i : i + 1]) for i in range(3)]
    assert out.shape == (1, 2, 1 + 3 * 4, 32) and attn.shape == (2 * 3, 4)
    for i, (f, a) in enumerate(frames):
        torch.testing.assert_close(out[:, :, 1 + 4 * i : 1 + 4 * (i + 1)], f[:, :, 1:])  # frames are independent
        torch.testing.assert_close(attn.view(2, 3, 4)[:, i], a)
    torch.testing.assert_close(out[:, :, 0], torch.stack([f[0][:, :, 0] for f in frames]).mean(0))
    assert (attn > 0).all() and (attn.sum(-1) < 1).all()  # the cls row, without its own column
    # without clip_return_cls: only patches, through ln_post
    t.clip_return_cls = False
    with torch.no_grad():
        plain, _ = t(video)
        block_out = out[:, :, 1:]
    torch.testing.assert_close(plain, t.ln_post(block_out))


def test_return_layers_and_l2():
    t = _teacher(clip_return_layer=2, clip_return_cls=True)
    out = t(torch.randn(1, 3, 2, 32, 32))
    assert out.shape == (2, 1, 9, 24)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 1, 9))
    assert t.return_index == [1, 0]
    with pytest.raises(ValueError, match="teacher input"):
        t(torch.randn(1, 3, 2, 16, 16))


def test_official_b16_and_l14_sizes():
    b16 = ClipTeacher(
        input_resolution=224,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        output_dim=512,
        clip_norm_type="l2",
        kernel_size=1,
        return_attn=False,
        clip_return_layer=1,
        clip_return_interval=1,
        clip_return_cls=True,
    )
    sd = b16.state_dict()
    assert sd["conv1.weight"].shape == (768, 3, 1, 16, 16) and sd["positional_embedding"].shape == (197, 768)
    assert sd["proj"].shape == (768, 512) and sd["transformer.resblocks.11.attn.in_proj_weight"].shape == (2304, 768)
    assert len(sd) == 8 + 12 * 12
    from vmstream.models import CLIP_TEACHERS

    l14 = CLIP_TEACHERS["clip_l14"]
    assert (l14["patch_size"], l14["width"], l14["layers"], l14["heads"], l14["output_dim"]) == (14, 1024, 24, 16, 768)
