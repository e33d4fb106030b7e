"""The registry of sizes and official checkpoints, and the shipped class lists."""

import pytest

from vmstream.models import CHECKPOINTS, SIZES, class_names, create_model, get_checkpoint, list_checkpoints


def test_sizes():
    assert SIZES["videomamba_tiny"]["embed_dim"] == 192 and SIZES["videomamba_tiny"]["depth"] == 24
    assert SIZES["videomamba_small"]["embed_dim"] == 384 and SIZES["videomamba_small"]["depth"] == 24
    assert SIZES["videomamba_middle"]["embed_dim"] == 576 and SIZES["videomamba_middle"]["depth"] == 32
    m = create_model("videomamba_small", num_frames=16, num_classes=174, device="meta")
    assert (m.embed_dim, len(m.layers), m.num_frames, m.num_classes) == (384, 24, 16, 174)


@pytest.mark.parametrize("code", ["t16", "s16", "m16"])
def test_every_size_lists_its_official_checkpoints(code):
    names = set(CHECKPOINTS)
    for f in (8, 16, 32, 64):
        assert f"videomamba_{code}_k400_f{f}_res224" in names
    assert f"videomamba_{code}_k400_f64_res224to384" in names
    for f in (8, 16):
        assert f"videomamba_{code}_ssv2_f{f}_res224" in names
    assert f"videomamba_{code}_ssv2_f16_res224to288" in names
    for ds in ("breakfast", "coin"):
        for f in (32, 64):
            assert f"videomamba_{code}_{ds}_f{f}_res224" in names
    assert f"videomamba_{code}_in1k_res224" in names


def test_masked_variants_of_middle():
    for name in (
        "videomamba_m16_k400_mask_pt_f8_res224",
        "videomamba_m16_ssv2_mask_pt_f8_res224",
        "videomamba_m16_k400_mask_ft_f64_res224to384",
        "videomamba_m16_breakfast_mask_ft_f32_res224",
        "videomamba_m16_coin_mask_ft_f64_res224",
        "videomamba_m16_ssv2_mask_ft_f16_res224to288",
    ):
        assert get_checkpoint(name).size == "videomamba_middle"
    pt = get_checkpoint("videomamba_m16_k400_mask_pt_f8_res224")
    assert pt.num_classes == 0 and pt.class_list is None


def test_entry_metadata():
    c = get_checkpoint("videomamba_t16_k400_f16_res224.pth")
    assert (c.filename, c.size, c.dataset, c.num_frames, c.img_size, c.num_classes, c.top1) == (
        "videomamba_t16_k400_f16_res224.pth",
        "videomamba_tiny",
        "k400",
        16,
        224,
        400,
        78.1,
    )
    assert c.url == "https://huggingface.co/OpenGVLab/VideoMamba/resolve/main/videomamba_t16_k400_f16_res224.pth"
    assert get_checkpoint("videomamba_s16_k400_f64_res224to384").img_size == 384
    assert get_checkpoint("videomamba_m16_ssv2_f16_res224to288").img_size == 288
    assert get_checkpoint("videomamba_t16_breakfast_f64_res224").num_classes == 10
    assert get_checkpoint("videomamba_s16_coin_f32_res224").num_classes == 180
    assert get_checkpoint("videomamba_m16_ssv2_f8_res224").num_classes == 174
    img = get_checkpoint("videomamba_m16_in1k_res224to448")
    assert img.num_frames is None and img.img_size == 448 and img.num_classes == 1000
    assert len(list_checkpoints(size="videomamba_tiny", dataset="k400")) == 5
    with pytest.raises(KeyError, match="did you mean"):
        get_checkpoint("videomamba_t16_k400_f16_res22")


def test_create_model_from_a_checkpoint_name():
    m = create_model("videomamba_m16_coin_f64_res224", device="meta")
    assert (m.embed_dim, len(m.layers), m.num_frames, m.num_classes, m.img_size) == (576, 32, 64, 180, 224)


def test_kinetics400_class_names():
    names = class_names("k400")
    assert len(names) == 400 and len(set(names)) == 400
    assert names[0] == "abseiling" and names[-1] == "zumba"
    assert names == sorted(names)  # the official label order is alphabetical
    assert names[names.index("passing American football (in game)") + 1] == "passing American football (not in game)"
    for n in (
        "skiing (not slalom or crosscountry)",
        "massaging person's head",
        "tying knot (not on a tie)",
        "using remote controller (not gaming)",
        "punching person (boxing)",
        "hurling (sport)",
    ):
        assert n in names
    assert all(n == n.strip() and n for n in names)


def test_other_class_lists_are_numbered_placeholders():
    assert class_names("breakfast") == [f"class_{i:03d}" for i in range(10)]
    assert len(class_names("coin")) == 180 and len(class_names("ssv2")) == 174 and len(class_names("in1k")) == 1000
    with pytest.raises(KeyError, match="unknown class list"):
        class_names("ucf101")
