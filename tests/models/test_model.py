"""VideoMamba: official parameter layout, initialisation, and the official clip forward."""

import copy
import math

import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model, oracle_features
from vmstream.models import VideoMamba, create_model
from vmstream.models.videomamba import Mamba, resample_temporal_pos

# The official Mamba (bimamba) mixer's keys, in the official registration order.
MIXER_KEYS = [
    "A_log",
    "D",
    "A_b_log",
    "D_b",
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "conv1d_b.weight",
    "conv1d_b.bias",
    "x_proj_b.weight",
    "dt_proj_b.weight",
    "dt_proj_b.bias",
    "out_proj.weight",
]


def test_state_dict_has_the_official_keys_and_shapes():
    m = VideoMamba(embed_dim=192, depth=24, num_frames=16, num_classes=400, device="meta")
    sd = m.state_dict()
    expected = {
        "cls_token": (1, 1, 192),
        "pos_embed": (1, 197, 192),
        "temporal_pos_embedding": (1, 16, 192),
        "patch_embed.proj.weight": (192, 3, 1, 16, 16),
        "patch_embed.proj.bias": (192,),
        "head.weight": (400, 192),
        "head.bias": (400,),
        "norm_f.weight": (192,),
    }
    layer = {
        "A_log": (384, 16),
        "D": (384,),
        "A_b_log": (384, 16),
        "D_b": (384,),
        "in_proj.weight": (768, 192),
        "conv1d.weight": (384, 1, 4),
        "conv1d.bias": (384,),
        "x_proj.weight": (44, 384),
        "dt_proj.weight": (384, 12),
        "dt_proj.bias": (384,),
        "conv1d_b.weight": (384, 1, 4),
        "conv1d_b.bias": (384,),
        "x_proj_b.weight": (44, 384),
        "dt_proj_b.weight": (384, 12),
        "dt_proj_b.bias": (384,),
        "out_proj.weight": (192, 384),
    }
    for i in range(24):
        expected.update({f"layers.{i}.mixer.{k}": v for k, v in layer.items()})
        expected[f"layers.{i}.norm.weight"] = (192,)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert [k.split("mixer.")[1] for k in sd if k.startswith("layers.0.mixer.")] == MIXER_KEYS


@pytest.mark.parametrize(
    "size,millions", [("videomamba_tiny", 7.03), ("videomamba_small", 25.6), ("videomamba_middle", 73.9)]
)
def test_parameter_counts_at_16_frames(size, millions):
    m = create_model(size, num_frames=16, num_classes=400, device="meta")
    n = sum(p.numel() for p in m.parameters()) / 1e6
    digits = len(str(millions).split(".")[1])
    assert math.floor(n * 10**digits + 0.5) / 10**digits == pytest.approx(millions, abs=0.011), n


def test_initialisation_matches_the_official_model():
    m = VideoMamba(img_size=32, depth=3, embed_dim=32, num_classes=4, num_frames=4)
    mixer = m.layers[1].mixer
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1, 17.0)).repeat(64, 1))
    assert torch.equal(mixer.A_b_log, mixer.A_log)
    assert torch.equal(mixer.D, torch.ones(64)) and torch.equal(mixer.D_b, torch.ones(64))
    for p in (mixer.A_log, mixer.D, mixer.A_b_log, mixer.D_b):
        assert p._no_weight_decay
    assert m.no_weight_decay() == {"pos_embed", "cls_token", "temporal_pos_embedding"}
    assert m.get_num_layers() == 3
    assert torch.count_nonzero(m.cls_token) == 0 and torch.count_nonzero(m.temporal_pos_embedding) == 0
    assert 0.01 < m.pos_embed.std() < 0.03
    # The official VisionMamba re-initialises every Linear (trunc_normal 0.02, zero bias),
    # which also overrides the mixer's own dt_proj init; out_proj is kaiming / sqrt(depth).
    assert torch.count_nonzero(mixer.dt_proj.bias) == 0 and mixer.dt_proj.bias._no_reinit
    assert 0.01 < mixer.in_proj.weight.std() < 0.03
    bound = 1 / math.sqrt(64) / math.sqrt(3)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-6
    assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    assert torch.equal(m.norm_f.weight, torch.ones(32))


def test_standalone_mixer_dt_init_is_inverse_softplus():
    torch.manual_seed(0)
    mixer = Mamba(64, dt_min=0.001, dt_max=0.1)
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert mixer.dt_proj.weight.abs().max() <= 4**-0.5  # dt_rank = ceil(64 / 16)


def test_forward_features_equals_the_official_semantics_oracle():
    model = make_tiny_model(seed=1)
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ours = model.forward_features(clip)
        logits = model(clip)
    ref = oracle_features(model, clip)
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits, model.head(ours))
    assert ours.shape == (2, 32) and logits.shape == (2, 5)


def test_oracle_comparison_is_sensitive_to_the_backward_direction():
    """Guard: the oracle test above would catch a backward direction that is dropped or
    not flipped (outputs of the two models differ by far more than the tolerance)."""
    model = make_tiny_model(seed=1)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        base = model.forward_features(clip)
        for layer in model.layers:
            layer.mixer.D_b.mul_(0.0).add_(3.0)
        changed = model.forward_features(clip)
    assert (base - changed).abs().max() > 1e-2


def test_larger_image_and_ssm_config_also_match_the_oracle():
    model = make_tiny_model(seed=2, img_size=64, depth=3, ssm_cfg={"d_state": 4, "d_conv": 3, "expand": 1})
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        ours = model.forward_features(clip)
    torch.testing.assert_close(ours.double(), oracle_features(model, clip), atol=2e-5, rtol=1e-4)


def test_layernorm_variant_without_bimamba_runs_and_matches_shapes():
    model = make_tiny_model(rms_norm=False, bimamba=False)
    assert "norm_f.bias" in model.state_dict() and "layers.0.mixer.A_b_log" not in model.state_dict()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)


def test_clear_errors_for_bad_clips():
    model = make_tiny_model()
    with pytest.raises(ValueError, match="frames are 48x48"):
        model(torch.randn(1, 3, 4, 48, 48))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.randn(3, 4, 32, 32))
    tube = make_tiny_model(kernel_size=2)
    with pytest.raises(ValueError, match="kernel_size=2"):
        tube(torch.randn(1, 3, 3, 32, 32))


def test_resample_temporal_pos_is_linear_interpolation():
    pos = torch.arange(4.0).reshape(1, 4, 1).repeat(1, 1, 3)
    same = resample_temporal_pos(pos, 4)
    assert same is pos
    up = resample_temporal_pos(pos, 8)
    # align_corners=False: output j samples input at (j + 0.5) * 4/8 - 0.5, clamped.
    want = torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    torch.testing.assert_close(up[0, :, 0], want)
    assert resample_temporal_pos(pos, 1).shape == (1, 1, 3)


def test_eval_mode_ignores_dropout_and_drop_path_training_uses_them():
    model = make_tiny_model(depth=3, drop_path_rate=0.5, drop_rate=0.2, fc_drop_rate=0.3)
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        a, b = model(clip), model(clip)
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(0)
        c = model(clip)
        torch.manual_seed(1)
        d = model(clip)
    assert not torch.allclose(c, d)
    # Official stochastic-depth schedule: block i gets linspace(0, rate, depth)[i - 1].
    assert [getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.layers] == [0.0, 0.0, 0.25]
    assert model.drop_path.drop_prob == 0.5


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 4, 32, 32)
    grads = []
    for use in (False, True):
        model = make_tiny_model(seed=3, use_checkpoint=use, checkpoint_num=2).train()
        loss = model(clip).square().sum() + model.forward_segment(clip).logits.sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_runs_under_bfloat16_autocast():
    model = make_tiny_model()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_segment(clip)
        feats = model.forward_features(clip)
    assert out.state.dtype == torch.float32
    with torch.no_grad():
        ref = model.forward_features(clip)
        # The yardstick: how far the fp32 model moves when only its weights and input are
        # rounded to bf16 (what any bf16 run starts from). Autocast rounds a few more
        # matmul inputs of that size, so it lands within a small multiple of it (~1x
        # measured), and within a few units of bf16's roundoff 2^-8 (the features are
        # RMS-normed, O(1)). The old bound allowed 20 %, fifty times the roundoff.
        rounded = copy.deepcopy(model)
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        inherent = rounded.forward_features(clip.to(torch.bfloat16).float())
    rel = lambda a: float((a.float() - ref).norm() / ref.norm())  # noqa: E731
    assert 0 < rel(inherent) < 2**-6
    assert rel(feats) < 3 * rel(inherent), (rel(feats), rel(inherent))


def test_card_describes_the_input():
    model = create_model("videomamba_tiny", num_frames=16, device="meta")
    card = model.card
    assert card.num_frames == 16 and card.img_size == 224 and card.input_size == (3, 16, 224, 224)
    assert card.mean == (0.485, 0.456, 0.406) and card.std == (0.229, 0.224, 0.225)
    assert (card.architecture, card.embed_dim, card.depth, card.patch_size) == ("videomamba_tiny", 192, 24, 16)


def test_cached_A_follows_weight_changes():
    model = make_tiny_model(seed=12)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.inference_mode():
        a = model.forward_features(clip)
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.A_log.sub_(4.0)  # bumps the version counter: the cache must not serve stale A
            layer.mixer.A_b_log.sub_(4.0)
    with torch.inference_mode():
        b = model.forward_features(clip)
    torch.testing.assert_close(b.double(), oracle_features(model, clip), atol=2e-5, rtol=1e-4)
    assert (a - b).abs().max() > 1e-3
    fresh = make_tiny_model(seed=13)
    model.load_state_dict(fresh.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(model.forward_features(clip), fresh.forward_features(clip))


def test_frozen_A_trains_after_inference_calls():
    """A cached under inference_mode must never reach autograd (inference tensors cannot be
    saved for backward), e.g. fine-tuning with A frozen after a validation pass."""
    model = make_tiny_model(seed=14)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.inference_mode():
        model.forward_segment(clip)
    for layer in model.layers:
        layer.mixer.A_log.requires_grad_(False)
        layer.mixer.A_b_log.requires_grad_(False)
    model.train()
    model.forward_segment(clip).logits.sum().backward()
    assert model.layers[0].mixer.in_proj.weight.grad is not None
