"""Scan backend and precision belong to a model, not to the process (issue 21): each is a
constructor argument (or `set_scan_backend` / `set_precision` on a built model, or the
loader's keyword), held by the model's own Mamba and PatchEmbed modules, so two models
in one process each keep their own."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.fixtures.videomamba import TINY, make_tiny_model
from tests.fixtures.videotext import TINY_TEXT, TINY_VISION
from vmstream.models import (
    VideoMamba,
    VideoMambaPretrain,
    VideoTextMamba,
    load_model,
    set_precision,
    set_scan_backend,
)
from vmstream.models.ops import dispatch, numba_scan
from vmstream.models.precision import precision_of
from vmstream.models.scan_backend import scan_backend_of
from vmstream.models.videomamba import Mamba, PatchEmbed


@pytest.fixture
def ran(monkeypatch):
    """Which scan implementation each call reached: wraps the reference and numba scans."""
    seen = []
    for mod, name, tag in ((dispatch, "selective_scan_ref", "ref"), (numba_scan, "selective_scan_numba", "numba")):
        orig = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _o=orig, _t=tag, **k: (seen.append(_t), _o(*a, **k))[1])
    return seen


def _mixers(model):
    return [m for m in model.modules() if isinstance(m, Mamba)]


def _clip(seed=0):
    return torch.randn(1, 3, TINY["num_frames"], 32, 32, generator=torch.Generator().manual_seed(seed))


def test_two_models_in_one_process_each_run_on_their_own_backend(ran):
    a = make_tiny_model(seed=1, scan_backend="ref")
    b = make_tiny_model(seed=1, scan_backend="numba")
    clip = _clip()
    scans = TINY["depth"] * 2  # two directions a layer
    with torch.inference_mode():
        out_a = a.forward_segment(clip).features
        assert ran == ["ref"] * scans
        out_b = b.forward_segment(clip).features
        assert ran[scans:] == ["numba"] * scans
        again_a = a.forward_segment(clip).features  # b ran in between: a is still on its own
    assert ran[2 * scans :] == ["ref"] * scans
    assert torch.equal(out_a, again_a)
    # Same weights, different kernels: the same answer to float rounding.
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-4)


def test_set_scan_backend_changes_one_built_model_only(ran):
    a = make_tiny_model(seed=1)
    b = copy.deepcopy(a)
    assert set_scan_backend(a, "numba") is a
    assert {m.scan_backend for m in _mixers(a)} == {"numba"}
    assert {m.scan_backend for m in _mixers(b)} == {None}
    set_scan_backend(b, "ref")
    with torch.inference_mode():
        a.forward_segment(_clip())
        b.forward_segment(_clip())
    assert ran == ["numba"] * 4 + ["ref"] * 4
    with pytest.raises(ValueError, match="unknown scan backend 'fast'"):
        set_scan_backend(a, "fast")
    with pytest.raises(ValueError, match="Linear has no VideoMamba layers"):
        set_scan_backend(torch.nn.Linear(2, 2), "ref")


def test_every_model_family_gives_its_backend_to_every_mixer():
    families = {
        "classifier": VideoMamba(**TINY, scan_backend="ref"),
        "student": VideoMambaPretrain(
            img_size=32,
            patch_size=16,
            depth=2,
            embed_dim=32,
            num_frames=4,
            clip_decoder_embed_dim=32,
            scan_backend="ref",
        ),
        "video-text": VideoTextMamba(vision=TINY_VISION, text=TINY_TEXT, embed_dim=16, scan_backend="ref"),
    }
    for name, model in families.items():
        mixers = _mixers(model)
        assert len(mixers) == 2 and {m.scan_backend for m in mixers} == {"ref"}, name
        assert scan_backend_of(model) == "ref"
    assert scan_backend_of(VideoMamba(**TINY)) is None  # automatic by default


def test_a_bf16_and_an_fp32_model_side_by_side():
    torch.manual_seed(7)
    fp32 = VideoMamba(**TINY)
    torch.manual_seed(7)
    bf16 = VideoMamba(**TINY, precision="bf16")
    # The constructor's bf16 is the fp32 initialisation rounded, as set_precision makes it.
    expect = set_precision(copy.deepcopy(fp32), "bf16")
    for (name, p), q, r in zip(bf16.named_parameters(), expect.parameters(), fp32.parameters()):
        assert p.dtype == q.dtype and torch.equal(p, q), name
        assert r.dtype == torch.float32, name
    assert precision_of(bf16) == "bf16" and precision_of(fp32) == "fp32"
    for m in bf16.modules():
        if isinstance(m, (Mamba, PatchEmbed)):
            assert m.matmul_dtype is torch.bfloat16
    for m in fp32.modules():
        if isinstance(m, (Mamba, PatchEmbed)):
            assert m.matmul_dtype is None
    fresh = copy.deepcopy(fp32)  # never ran beside a bf16 model
    clip = _clip(2)
    with torch.inference_mode():
        a = fp32.forward_segment(clip).features
        b = bf16.forward_segment(clip).features
        a_again = fp32.forward_segment(clip).features
        want_a = fresh.forward_segment(clip).features
        want_b = expect.forward_segment(clip).features
    assert torch.equal(a, want_a) and torch.equal(a_again, want_a)
    assert torch.equal(b, want_b)
    assert not torch.equal(a, b)  # the bf16 one really ran in bf16
    torch.testing.assert_close(b, a, atol=5e-2, rtol=5e-2)


def test_a_bad_precision_is_refused_before_building():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        VideoMamba(**TINY, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        VideoTextMamba(vision=TINY_VISION, text=TINY_TEXT, embed_dim=16, precision="half")


def test_load_model_takes_the_backend_and_precision(tiny_ckpt):
    plain = load_model(tiny_ckpt)
    model = load_model(tiny_ckpt, scan_backend="ref", precision="bf16")
    assert {m.scan_backend for m in _mixers(model)} == {"ref"}
    assert precision_of(model) == "bf16" and precision_of(plain) == "fp32"
    assert scan_backend_of(plain) is None
    expect = set_precision(copy.deepcopy(plain), "bf16")
    for (name, p), q in zip(model.named_parameters(), expect.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="unknown scan backend 'fast'"):
        load_model(tiny_ckpt, scan_backend="fast")
