"""The masked-pretraining student: official keys, token dropping, the distillation head,
loading into the classifier."""

import pytest
import torch

from vmstream.models import VideoMamba, VideoMambaPretrain, load_checkpoint
from vmstream.models.videomamba_pretrain import sinusoid_table
from vmstream.training.masking import make_mask

KW = dict(
    img_size=32,
    patch_size=16,
    depth=3,
    embed_dim=32,
    num_frames=4,
    clip_decoder_embed_dim=32,
    clip_output_dim=24,
    clip_norm_type="l2",
)
N = 1 + 4 * 2 * 2


def _student(**kw):
    torch.manual_seed(0)
    return VideoMambaPretrain(**{**KW, **kw}).eval()


def official_keys(depth, K, embed_dim=32, out_dim=24, tokens=4, frames=4, d_state=16):
    """Key -> shape of the official `VisionMamba` (video_sm/models/videomamba_pretrain.py),
    written from its module tree: PatchEmbed.proj, cls/pos/temporal, mamba_simple.Mamba with
    bimamba v2 (*_b), the Block's RMSNorm, the final `norm`, Linear_Decoder (head, norm)."""
    d_in, rank = 2 * embed_dim, -(-embed_dim // 16)
    keys = {
        "cls_token": (1, 1, embed_dim),
        "pos_embed": (1, tokens + 1, embed_dim),
        "temporal_pos_embedding": (1, frames, embed_dim),
        "patch_embed.proj.weight": (embed_dim, 3, 1, 16, 16),
        "patch_embed.proj.bias": (embed_dim,),
        "norm.weight": (embed_dim,),
    }
    for i in range(depth):
        p = f"layers.{i}.mixer."
        keys.update(
            {
                p + "A_log": (d_in, d_state),
                p + "D": (d_in,),
                p + "in_proj.weight": (2 * d_in, embed_dim),
                p + "conv1d.weight": (d_in, 1, 4),
                p + "conv1d.bias": (d_in,),
                p + "x_proj.weight": (rank + 2 * d_state, d_in),
                p + "dt_proj.weight": (d_in, rank),
                p + "dt_proj.bias": (d_in,),
                p + "A_b_log": (d_in, d_state),
                p + "conv1d_b.weight": (d_in, 1, 4),
                p + "conv1d_b.bias": (d_in,),
                p + "x_proj_b.weight": (rank + 2 * d_state, d_in),
                p + "dt_proj_b.weight": (d_in, rank),
                p + "dt_proj_b.bias": (d_in,),
                p + "D_b": (d_in,),
                p + "out_proj.weight": (embed_dim, d_in),
                f"layers.{i}.norm.weight": (embed_dim,),
            }
        )
    for k in range(K):
        keys.update(
            {
                f"clip_decoder.{k}.head.weight": (out_dim, embed_dim),
                f"clip_decoder.{k}.head.bias": (out_dim,),
                f"clip_decoder.{k}.norm.weight": (out_dim,),
                f"clip_decoder.{k}.norm.bias": (out_dim,),
            }
        )
    return keys


@pytest.mark.parametrize("K", [1, 2])
def test_official_keys_load_key_for_key(K):
    m = _student(clip_return_layer=K)
    sd = m.state_dict()
    want = official_keys(3, K)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    torch.manual_seed(1)
    official = {k: torch.randn(s) for k, s in want.items()}
    m.load_state_dict(official, strict=True)
    assert torch.equal(m.state_dict()["norm.weight"], official["norm.weight"])


def test_sinusoid_table_hand_values():
    t = sinusoid_table(3, 4)[0]
    assert t.shape == (3, 4)
    assert torch.allclose(t[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    p = 2.0
    want = torch.tensor(
        [
            torch.sin(torch.tensor(p)),
            torch.cos(torch.tensor(p)),
            torch.sin(torch.tensor(p / 100.0)),
            torch.cos(torch.tensor(p / 100.0)),
        ]
    )
    assert torch.allclose(t[2], want, atol=1e-6)


def _by_hand(m, video, mask):
    """The official forward written out per sample: gather the visible tokens by explicit
    index lists, run every block in full (the last mixer too), take the residual entering
    the last mixer, add the table rows of the visible places, decode."""
    tokens = m.embed(video)
    outs = []
    for b in range(video.shape[0]):
        idx = [i for i in range(mask.shape[1]) if not mask[b, i]]
        h = tokens[b : b + 1, idx]
        residual = None
        for layer in m.layers:
            h, residual, _ = layer(h, residual)
        pos = m.clip_pos_embed[:, idx]
        outs.append(m.clip_decoder[0](residual + pos))
    return torch.cat(outs, dim=0)[None]


@pytest.mark.parametrize("kind", ["tube", "random", "random_row"])
def test_token_dropping_matches_dense_reference(kind):
    m = _student()
    torch.manual_seed(2)
    video = torch.randn(3, 3, 4, 32, 32)
    mask = make_mask(kind, 3, 4, 2, 2, 0.5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = m(video, mask)
        ref = _by_hand(m, video, mask)
    assert out.shape == (1, 3, 1 + 8, 24)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(1, 3, 9), atol=1e-5)  # l2


def test_masked_patches_do_not_matter_visible_ones_do():
    m = _student()
    torch.manual_seed(4)
    video = torch.randn(1, 3, 4, 32, 32)
    mask = make_mask("tube", 1, 4, 2, 2, 0.5, generator=torch.Generator().manual_seed(0))
    grid = mask[0, 1:].view(4, 2, 2)
    t, y, x = [int(v) for v in grid.nonzero()[0]]  # a masked patch
    tv, yv, xv = [int(v) for v in (~grid).nonzero()[0]]  # a visible one
    changed_masked, changed_visible = video.clone(), video.clone()
    changed_masked[:, :, t, 16 * y : 16 * y + 16, 16 * x : 16 * x + 16] += 5
    changed_visible[:, :, tv, 16 * yv : 16 * yv + 16, 16 * xv : 16 * xv + 16] += 5
    with torch.no_grad():
        base = m(video, mask)
        assert torch.equal(m(changed_masked, mask), base)
        assert not torch.allclose(m(changed_visible, mask), base)


def test_two_return_layers_order_and_shared_norm():
    m = _student(clip_return_layer=2)
    assert m.return_index == [2, 1]
    video = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("tube", 2, 4, 2, 2, 0.5)
    with torch.no_grad():
        feats = m.forward_features(video, mask)
        tokens = m.embed(video)[~mask].view(2, -1, 32)
        h, r, _ = m.layers[0](tokens, None)
        h, r, _ = m.layers[1](h, r)
        h2, r2, _ = m.layers[2](h, r)  # residual entering block 2's mixer: layer 1's output added
    assert feats.shape == (2, 2, 9, 32)
    torch.testing.assert_close(feats[0], m.norm(r2), rtol=1e-5, atol=1e-5)  # layer 1, normed (lower first)
    torch.testing.assert_close(feats[1], r2)  # the last layer: un-normalised residual


def test_pretrained_student_loads_into_classifier():
    m = _student()
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
    clf = VideoMamba(img_size=32, patch_size=16, depth=3, embed_dim=32, num_frames=4, num_classes=5)
    report = load_checkpoint(clf, m.state_dict(), reset_head=True)
    assert torch.equal(clf.norm_f.weight, m.norm.weight)
    assert torch.equal(clf.layers[1].mixer.in_proj.weight, m.layers[1].mixer.in_proj.weight)
    assert "norm_f" in str(report)
    # the classifier's embedding is the student's (cls + spatial + temporal positions)
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf.embed(video), m.embed(video))


def test_bad_inputs():
    m = _student()
    video = torch.randn(2, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        m(video, torch.zeros(2, N - 1, dtype=torch.bool))
    bad = torch.zeros(2, N, dtype=torch.bool)
    bad[:, 0] = True
    with pytest.raises(ValueError, match="cls"):
        m(video, bad)
    uneven = torch.zeros(2, N, dtype=torch.bool)
    uneven[0, 3] = True
    with pytest.raises(ValueError, match="same number of visible"):
        m(video, uneven)
    with pytest.raises(ValueError, match="video must be"):
        m(torch.randn(2, 3, 2, 32, 32), torch.zeros(2, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="clip_decoder_embed_dim"):
        VideoMambaPretrain(**{**KW, "clip_decoder_embed_dim": 16})


def test_official_middle_student_size_matches_official_keys():
    """videomamba_middle_pretrain as the official K400/SSv2 scripts build it."""
    m = VideoMambaPretrain(
        img_size=224,
        patch_size=16,
        depth=32,
        embed_dim=576,
        num_frames=8,
        clip_decoder_embed_dim=576,
        clip_output_dim=512,
        clip_norm_type="l2",
        clip_return_layer=1,
        clip_student_return_interval=1,
    )
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == official_keys(32, 1, embed_dim=576, out_dim=512, tokens=196, frames=8)
    assert m.clip_pos_embed.shape == (1, 8 * 196 + 1, 576) and m.return_index == [31]
