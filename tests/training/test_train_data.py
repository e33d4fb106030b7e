"""Training data: official list formats, LVU trimming, TSN sampling, multi-view test
views, repeated augmentation, and corrupt / missing videos skipped and counted."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD
from vmstream.training.annotations import (
    AnnotationError,
    TargetNorm,
    VideoEntry,
    check_labels,
    lvu_windows,
    read_video_list,
    trim_entries,
)
from vmstream.training.augment import TrainTransform
from vmstream.training.datasets import VideoClsDataset, collate, view_frame_indices, window_frames


def test_read_list_space_comma_tab_prefix(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("dir/a b.mp4 3\n\n# comment\nx.mp4 0\n")
    e = read_video_list(str(p), " ", prefix="/data")
    assert [(x.path, x.label) for x in e] == [("/data/dir/a b.mp4", 3), ("/data/x.mp4", 0)]
    p.write_text("a.mp4,1\nb.mp4,2\n")
    assert [x.label for x in read_video_list(str(p), ",")] == [1, 2]
    p.write_text("a.mp4\t1\t60.5\n")
    e = read_video_list(str(p), "\\t", with_duration=True)
    assert e[0].duration == 60.5 and e[0].label == 1
    p.write_text("a.mp4,0.37\n")
    assert read_video_list(str(p), ",", regression=True)[0].label == pytest.approx(0.37)


def test_read_list_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a.mp4,1\nb.mp4,cat\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:2: label 'cat'"):
        read_video_list(str(p), ",")
    p.write_text("a.mp4\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:1: expected 2 columns"):
        read_video_list(str(p), ",")
    with pytest.raises(AnnotationError, match="does not exist"):
        read_video_list(str(tmp_path / "nope.csv"))
    e = [VideoEntry("a.mp4", 5, line=7)]
    with pytest.raises(AnnotationError, match=r":7: label 5 is outside \[0, 4\)"):
        check_labels(e, 4)


def test_lvu_windows_official_rule():
    assert lvu_windows(30, 60, 16) == [(0.0, 30.0)]  # shorter than a window: whole video
    # 100 s: starts 0,16,...,96; 48->100 cut short but >= 30 s kept; 80 (20 s) and 96 dropped
    w = lvu_windows(100, 60, 16)
    assert w == [(0, 60), (16, 76), (32, 92), (48, 100.0), (64, 100.0)][: len(w)]
    assert (48, 100.0) in w and all(e - s >= 30 for s, e in w)
    assert [s for s, _ in w] == [0, 16, 32, 48, 64]  # 64 -> 36 s kept; 80 -> 20 s dropped
    assert lvu_windows(60, 60, 16)[0] == (0, 60)
    entries = trim_entries([VideoEntry("v.mp4", 2, duration=100.0)], 60, 16)
    assert len(entries) == 5 and {e.label for e in entries} == {2}
    assert entries[1].start == 16 and entries[1].name == "v@16-76"
    with pytest.raises(AnnotationError, match="no duration"):
        trim_entries([VideoEntry("v.mp4", 2)], 60, 16)


def test_target_norm_roundtrip():
    n = TargetNorm.fit([1.0, 2.0, 3.0, 4.0])
    z = [n.apply(v) for v in (1.0, 4.0)]
    assert z[0] < 0 < z[1] and n.invert(z[1]) == pytest.approx(4.0)


def test_view_frame_indices_and_window():
    idx = [view_frame_indices(81, 8, c, 4) for c in range(4)]
    for a in idx:
        assert len(a) == 8 and a.min() >= 0 and a.max() <= 80 and np.all(np.diff(a) > 0)
    assert all(np.all(idx[c + 1] >= idx[c]) for c in range(3))  # later clips sit later in each chunk
    assert not np.array_equal(idx[0], idx[3])
    assert window_frames(VideoEntry("a", 0, 1.0, 2.0), 100, 25.0) == (25, 50)
    assert window_frames(VideoEntry("a", 0), 100, 25.0) == (0, 99)


def _small_tt(**kw):
    return TrainTransform(crop_size=32, rand_augment="rand-m7-n4-mstd0.5-inc1", **kw)


def test_train_dataset_shapes_norm_and_repeated_aug(train_videos):
    e = read_video_list(os.path.join(train_videos, "train.csv"), ",", prefix=train_videos)
    ds = VideoClsDataset(
        e, "train", num_frames=4, crop_size=32, train_transform=_small_tt(), num_sample=2, decode_short_side=48
    )
    x, y, i, skipped = ds[5]
    assert isinstance(x, list) and len(x) == 2 and x[0].shape == (3, 4, 32, 32)
    assert x[0].dtype == torch.float32 and not torch.equal(x[0], x[1])  # two augmentations
    b = collate([ds[0], ds[5]])
    assert b["x"].shape == (4, 3, 4, 32, 32) and b["y"].tolist() == [0, 0, 1, 1]
    assert b["index"].tolist() == [0, 0, 5, 5] and b["skipped"] == []


def test_val_dataset_is_normalised_centre_crop(train_videos):
    e = read_video_list(os.path.join(train_videos, "val.csv"), ",", prefix=train_videos)
    ds = VideoClsDataset(e, "val", num_frames=4, crop_size=32, short_side_size=32)
    x, y, _, _ = ds[0]
    assert x.shape == (3, 4, 32, 32)
    # a red clip: the red channel, normalised, is far above the blue one
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    rgb = (x * std + mean).mean(dim=(1, 2, 3))
    assert y == 0 and rgb[0] > 0.6 and rgb[2] < 0.35
    assert torch.equal(x, ds[0][0])  # deterministic


def test_test_dataset_returns_all_views(train_videos):
    e = read_video_list(os.path.join(train_videos, "test.csv"), ",", prefix=train_videos)
    ds = VideoClsDataset(e, "test", num_frames=4, crop_size=32, short_side_size=32, test_num_segment=2, test_num_crop=3)
    x, _, _, _ = ds[0]
    assert ds.num_views == 6 and x.shape == (6, 3, 4, 32, 32)
    # 3 spatial crops of a 64x48 clip at short side 32 (43x32): left, centre, right differ
    assert not torch.equal(x[0], x[2])


def test_corrupt_and_missing_videos_are_skipped_and_counted(train_videos):
    e = read_video_list(os.path.join(train_videos, "train_bad.csv"), ",", prefix=train_videos)
    ds = VideoClsDataset(e, "train", num_frames=4, crop_size=32, train_transform=_small_tt())
    x, y, i, skipped = ds[1]  # missing -> corrupt -> the next good one
    assert i == 3 and y == 1 and x.shape == (3, 4, 32, 32)
    assert [os.path.basename(s.path) for s in skipped] == ["missing.mp4", "corrupt.mp4"]
    ev = VideoClsDataset(e, "val", num_frames=4, crop_size=32, short_side_size=32)
    b = collate([ev[0], ev[1], ev[2], ev[3]])
    assert b["x"].shape[0] == 2 and len(b["skipped"]) == 2  # dropped from evaluation, counted


def test_lvu_trimmed_dataset_reads_windows(train_videos):
    e = read_video_list(os.path.join(train_videos, "lvu.csv"), ",", prefix=train_videos, with_duration=True)
    e = trim_entries(e, window=1.0, stride=0.5)
    assert len(e) > 16  # each ~2 s clip gives several windows
    ds = VideoClsDataset(e, "val", num_frames=4, crop_size=32, short_side_size=32)
    assert ds[1][0].shape == (3, 4, 32, 32)


def test_train_sampling_follows_global_seed(train_videos):
    e = read_video_list(os.path.join(train_videos, "train.csv"), ",", prefix=train_videos)
    ds = VideoClsDataset(e, "train", num_frames=4, crop_size=32, train_transform=_small_tt())

    def draw(seed):
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        return ds[3][0]

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))


def test_reader_returns_the_frames_at_the_indices_asked(tmp_path):
    import av

    from vmstream.training.video_reader import VideoReader

    path = str(tmp_path / "ramp.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"qp": "0"}
        for k in range(20):
            img = np.full((48, 64, 3), 10 * k + 20, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    r = VideoReader()
    assert r.probe(path)[:2] == (20, 10.0)
    f = r.read(path, [0, 5, 5, 19, 3], short_side=32)
    assert f.shape == (5, 32, 48, 3)  # 64x48 at short side 32 -> 43x32, sides rounded to 16
    levels = f.reshape(5, -1).mean(1)
    assert np.allclose(levels, [20, 70, 70, 210, 50], atol=4), levels


def test_dataloader_workers_and_pickling(train_videos):
    import pickle

    from torch.utils.data import DataLoader

    e = read_video_list(os.path.join(train_videos, "val.csv"), ",", prefix=train_videos)
    ds = VideoClsDataset(e, "val", num_frames=2, crop_size=32, short_side_size=32)
    clone = pickle.loads(pickle.dumps(ds))  # spawn-started workers get a pickled copy
    assert torch.equal(clone[1][0], ds[1][0])
    batches = list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate))
    assert sum(b["x"].shape[0] for b in batches) == len(ds)
