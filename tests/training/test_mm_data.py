"""Multimodal data: the official JSON formats (image and video corpora, caption lists, bad
entries), images as one-frame videos, videos from real files, the official caption
cleaning and frame sampling, the mixed image/video order."""

import json
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.fixtures.media import make_video
from vmstream.config_loader import ConfigError
from vmstream.training.mm_annotations import Corpus, load_anno, parse_corpora, pre_text
from vmstream.training.mm_data import MediaTextDataset, PairTransform, collate_pairs, rand_frame_indices
from vmstream.training.mm_loader import MixedLoader, media_order


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_official_corpus_forms():
    got = parse_corpora(
        [["a.json", "imgs"], ["b.json", "vids", "video"], {"anno": "c.json", "root": "r", "media": "video"}]
    )
    assert got == [Corpus("a.json", "imgs", "image"), Corpus("b.json", "vids", "video"), Corpus("c.json", "r", "video")]
    assert parse_corpora(["a.json", "imgs"]) == [Corpus("a.json", "imgs", "image")]  # one corpus, unwrapped
    with pytest.raises(ConfigError, match=r"train_file\[0\].*'video'"):
        parse_corpora([["a.json", "r", "audio"]])
    with pytest.raises(ConfigError, match="names no corpus"):
        parse_corpora([])


def test_image_and_video_json_with_caption_strings_and_lists(tmp_path):
    img = _write(
        tmp_path / "cc3m.json",
        [{"image": "a/1.jpg", "caption": "A dog."}, {"image": "2.jpg", "caption": ["one", "two"]}],
    )
    vid = _write(tmp_path / "webvid.json", [{"video": "v/1.mp4", "caption": "a man cooking"}])
    a = load_anno(Corpus(img, "/data/cc3m", "image"))
    assert [e.path for e in a] == ["/data/cc3m/a/1.jpg", "/data/cc3m/2.jpg"]
    assert a[0].captions == ("A dog.",) and a[1].captions == ("one", "two")
    v = load_anno(Corpus(vid, "/data/webvid", "video"))
    assert v[0].path == "/data/webvid/v/1.mp4"


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"image": "x.jpg"}, "entry 1: no 'caption' field"),
        ({"video": "x.mp4", "caption": "c"}, "entry 1: no 'image' field (it has 'video'"),
        ({"image": "x.jpg", "caption": 3}, "entry 1: 'caption' must be a string or a non-empty list"),
        ({"image": "x.jpg", "caption": []}, "entry 1: 'caption' must be"),
        ({"image": "x.jpg", "caption": "?!"}, "entry 1: the caption is empty after cleaning"),
        ({"image": "", "caption": "c"}, "entry 1: 'image' must be a non-empty path"),
        ("x.jpg", "entry 1: expected an object"),
    ],
)
def test_a_bad_entry_is_a_one_line_error_naming_file_and_entry(tmp_path, entry, message):
    path = _write(tmp_path / "bad.json", [{"image": "ok.jpg", "caption": "fine"}, entry])
    with pytest.raises(ValueError) as e:
        load_anno(Corpus(path, "", "image"))
    text = str(e.value)
    assert "\n" not in text and text.startswith(path) and message in text


def test_bad_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_anno(Corpus(str(bad), "", "image"))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_anno(Corpus(_write(tmp_path / "d.json", {"image": "a"}), "", "image"))
    with pytest.raises(ValueError, match="not found"):
        load_anno(Corpus(str(tmp_path / "none.json"), "", "image"))


def test_caption_cleaning_is_the_official_pre_text():
    assert pre_text("A Man's  dog, (running)! <person> well-known/big") == "a mans dog running person well known big"


def test_rand_sampling_takes_one_frame_per_interval():
    rng = random.Random(0)
    for _ in range(50):
        idx = rand_frame_indices(8, 100, rng)
        assert idx == sorted(idx) and len(idx) == 8
        for k, i in enumerate(idx):
            assert int(np.linspace(0, 100, 9)[k]) <= i < int(np.linspace(0, 100, 9)[k + 1])
    short = rand_frame_indices(8, 3, rng)
    assert short[:3] == [0, 1, 2] and short[3:] == [2] * 5  # padded with the last


def test_an_image_is_a_one_frame_video(tmp_path):
    from PIL import Image

    arr = np.zeros((50, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    anno = _write(tmp_path / "a.json", [{"image": "a.png", "caption": ["A White-and-black picture."]}])
    ds = MediaTextDataset(load_anno(Corpus(anno, str(tmp_path), "image")), "image", PairTransform(32), num_frames=8)
    item = ds[0]
    assert item["x"].shape == (3, 1, 32, 32) and item["x"].dtype == torch.float32
    assert item["caption"] == "a white and black picture" and item["idx"] == 0 and item["media"] == "image"


def test_videos_from_files_and_the_same_crop_for_every_frame(tmp_path):
    make_video(str(tmp_path / "v.mp4"), seconds=1, size=(64, 48), fps=10)
    anno = _write(tmp_path / "v.json", [{"video": "v.mp4", "caption": "a pattern"}] * 3)
    ds = MediaTextDataset(load_anno(Corpus(anno, str(tmp_path), "video")), "video", PairTransform(32), num_frames=4)
    batch = collate_pairs([ds[0], ds[2]])
    assert batch["x"].shape == (2, 3, 4, 32, 32) and batch["idx"].tolist() == [0, 2] and batch["media"] == "video"
    still = torch.full((4, 3, 40, 60), 100, dtype=torch.uint8)
    still[..., :30] = 200
    out = PairTransform(32)(still)
    for t in range(1, 4):
        assert torch.equal(out[:, t], out[:, 0])


def test_an_unreadable_file_is_replaced_by_another_entry(tmp_path, caplog):
    from PIL import Image

    Image.fromarray(np.full((20, 20, 3), 9, dtype=np.uint8)).save(tmp_path / "ok.png")
    anno = _write(tmp_path / "a.json", [{"image": "missing.png", "caption": "x"}, {"image": "ok.png", "caption": "y"}])
    ds = MediaTextDataset(load_anno(Corpus(anno, str(tmp_path), "image")), "image", PairTransform(16))
    random.seed(0)
    item = ds[0]
    assert item["caption"] in ("x", "y") and "missing.png" in caplog.text


def test_mixed_order_holds_every_batch_and_agrees_across_ranks():
    order = media_order({"image": 3, "video": 5}, seed=1, epoch=0)
    assert sorted(order) == ["image"] * 3 + ["video"] * 5
    assert order == media_order({"image": 3, "video": 5}, seed=1, epoch=0)
    assert any(media_order({"image": 3, "video": 5}, seed=1, epoch=e) != order for e in range(1, 5))


def test_mixed_loader_yields_one_media_type_a_batch():
    def items(media, n, frames):
        return [{"x": torch.zeros(3, frames, 4, 4), "caption": "c", "idx": i, "media": media} for i in range(n)]

    loaders = {
        "image": DataLoader(items("image", 6, 1), batch_size=2, collate_fn=collate_pairs),
        "video": DataLoader(items("video", 4, 2), batch_size=2, collate_fn=collate_pairs),
    }
    mixed = MixedLoader(loaders, seed=0)
    batches = list(mixed)
    assert len(mixed) == len(batches) == 5
    assert sorted(b["media"] for b in batches) == ["image"] * 3 + ["video"] * 2
    assert all(b["x"].shape[2] == (1 if b["media"] == "image" else 2) for b in batches)
