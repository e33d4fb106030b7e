"""The CPU proof that masked distillation transfers (`configs/pretrain/synthetic_distill.yaml`).

Synthetic clips: a coloured object (its hue family is the label, its shade, size,
place and drift random) among grey distractor squares on a noisy background. A tiny
student distils a fixed, randomly initialised tiny CLIP teacher on these clips with the
recipe's masking (80 % attention masking), through the real pretraining loop
(`pretrain.pretrain_fit`). Then both the pretrained student and the same student before
pretraining are loaded into the classifier (`models.load_checkpoint`, the fine-tuning
path), their final cls features are frozen, and a linear probe is trained on a labelled
set and scored on another. Printed, one figure a line:

    distill_cosine_before=   mean cos(student, teacher) at the visible places, held-out clips
    distill_cosine_after=
    probe_accuracy_pretrained=
    probe_accuracy_random_init=
    chance_accuracy=

The teacher's cls embedding is zeroed (`teacher_zero_cls`) so its frame-averaged cls
summarises the clip instead of being a near-constant vector.

Why the random student is a fair, weak baseline: the official init sets every dt bias to
0, so each scan step forgets about half its state, and a random student's cls token
hears only the few tokens next to it; distillation of the teacher's frame-averaged cls
has to teach it to gather the whole clip.
"""

from __future__ import annotations

import copy
import logging
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vmstream.models import ClipTeacher, VideoMamba, load_checkpoint
from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD

from .model_setup import scan_backend, seed_everything
from .pretrain import build_student, draw_mask_and_targets, pretrain_fit
from .recipes import TrainConfig

__all__ = [
    "make_distill_video",
    "DistillVideos",
    "run_synthetic_distill",
    "probe_accuracy",
    "distill_cosine",
    "synthetic_teacher",
]

log = logging.getLogger(__name__)

# Hue families (RGB 0-255): the label. Each video's object gets a random shade of one.
HUES = np.array(
    [[220, 40, 40], [40, 200, 40], [40, 70, 230], [230, 210, 30], [210, 40, 210], [30, 210, 210]], dtype=np.float32
)


def make_distill_video(rng: np.random.Generator, label: int, frames: int, size: int) -> np.ndarray:
    """One uint8 clip [T, H, W, 3]: a drifting object of hue `label`, grey distractors, noise."""
    if label >= len(HUES):
        raise ValueError(f"label {label}: there are {len(HUES)} hue families")
    v = rng.uniform(60, 120) + rng.normal(0, 30, size=(frames, size, size, 3)).astype(np.float32)

    def square(value, side, speed):
        span = size - side
        y, x = rng.integers(0, span + 1, size=2)
        dy, dx = rng.integers(-speed, speed + 1, size=2)
        for t in range(frames):
            yy, xx = int(np.clip(y + dy * t, 0, span)), int(np.clip(x + dx * t, 0, span))
            v[t, yy : yy + side, xx : xx + side] = value

    for _ in range(2):
        square(rng.uniform(30, 220), int(rng.integers(size // 6, size // 3)), 2)
    shade = HUES[label] * rng.uniform(0.7, 1.1) + rng.normal(0, 12, size=3)
    square(shade, int(rng.integers(size // 4, size // 2)), 2)
    return np.clip(v, 0, 255).astype(np.uint8)


class DistillVideos(Dataset):
    """A fixed set of `n` labelled clips (balanced), items as the training collate wants:
    (x [3, T, H, W] normalised float, label, index, skipped=[])."""

    def __init__(self, n: int, num_classes: int, frames: int, size: int, seed: int):
        rng = np.random.default_rng(seed)
        self.labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        vids = np.stack([make_distill_video(rng, int(y), frames, size) for y in self.labels])
        x = torch.from_numpy(vids).permute(0, 4, 1, 2, 3).float().div_(255.0)  # [n, 3, T, H, W]
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
        self.x = (x - mean) / std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.x[i], int(self.labels[i]), i, []


@torch.no_grad()
def distill_cosine(
    student: nn.Module, teacher: ClipTeacher, data: DistillVideos, cfg: TrainConfig, seed: int = 0, batch_size: int = 64
) -> float:
    """Mean cosine between the student's predictions and the teacher's targets at the
    visible places of the recipe's masks (drawn from a fixed generator, so "before" and
    "after" see the same masks when the student's grid is the same)."""
    g = torch.Generator().manual_seed(seed)
    student.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        x = data.x[i : i + batch_size]
        mask, targets = draw_mask_and_targets(student, teacher, x, cfg.pretrain, generator=g)
        pred = student(x, mask).float()
        cos = nn.functional.cosine_similarity(pred, targets, dim=-1)
        total += float(cos.sum())
        count += cos.numel()
    return total / count


@torch.no_grad()
def _features(model: VideoMamba, x: Tensor, batch_size: int = 64) -> Tensor:
    model.eval()
    return torch.cat([model.forward_features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def probe_accuracy(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    num_classes: int,
    epochs: int,
    lr: float,
    seed: int = 0,
) -> float:
    """A linear probe (standardised features, softmax regression, full-batch Adam)."""
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    a, b = (train_f - mean) / std, (test_f - mean) / std
    gen = torch.Generator().manual_seed(seed)
    probe = nn.Linear(a.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=gen) * 0.01)
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        _fit_probe(probe, opt, a, train_y, epochs)
    with torch.no_grad():
        return float((probe(b).argmax(1) == test_y).float().mean())


def _fit_probe(probe: nn.Linear, opt, a: Tensor, y: Tensor, epochs: int) -> None:
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(probe(a), y).backward()
        opt.step()


def _classifier(cfg: TrainConfig, student: nn.Module, state: dict) -> VideoMamba:
    """The fine-tuning model of the student's shape with `state` loaded through the
    checkpoint loader (decoder dropped, norm -> norm_f), as fine-tuning starts."""
    clf = VideoMamba(
        img_size=cfg.input_size,
        patch_size=student.patch_embed.patch_size[0],
        depth=student.depth,
        embed_dim=student.embed_dim,
        num_frames=cfg.num_frames,
        kernel_size=cfg.tubelet_size,
        num_classes=0,
        drop_path_rate=0.0,
        scan_backend=scan_backend(cfg),
    )
    load_checkpoint(clf, state)
    return clf


def synthetic_teacher(cfg: TrainConfig) -> ClipTeacher:
    p = cfg.pretrain
    torch.manual_seed(cfg.synthetic_distill.teacher_seed)
    kw = dict(
        input_resolution=p.clip_input_resolution,
        kernel_size=cfg.tubelet_size,
        clip_norm_type=p.clip_norm_type,
        return_attn=p.clip_return_attn or p.mask_type == "attention",
        clip_return_layer=p.clip_return_layer,
        clip_return_interval=p.clip_return_interval,
        clip_return_cls=p.clip_return_cls,
    )
    kw.update(p.teacher_args)
    teacher = ClipTeacher(**kw)
    if cfg.synthetic_distill.teacher_zero_cls:
        # A random CLIP's cls starts from a large constant embedding and stays nearly the
        # same for every clip (mean pairwise cosine ~0.97 here); from zero it is a pure
        # summary of the clip (~0.77), which is what a trained CLIP's cls is.
        with torch.no_grad():
            teacher.class_embedding.zero_()
            teacher.positional_embedding[0].zero_()
    return teacher.eval().requires_grad_(False)


def run_synthetic_distill(cfg: TrainConfig, print_fn=print, should_stop=None) -> Optional[dict]:
    """Distil, probe, print the five lines; returns the figures (None when stopped early)."""
    sd = cfg.synthetic_distill
    seed_everything(cfg.seed)
    size, frames, n_cls = cfg.input_size, cfg.num_frames, sd.num_classes
    mk = lambda n, s: DistillVideos(n, n_cls, frames, size, s)  # noqa: E731
    train, heldout = mk(sd.train_videos, sd.data_seed), mk(sd.heldout_videos, sd.data_seed + 1)
    probe_train, probe_test = mk(sd.probe_train_videos, sd.data_seed + 2), mk(sd.probe_test_videos, sd.data_seed + 3)
    teacher = synthetic_teacher(cfg)
    seed_everything(cfg.seed)
    student = build_student(cfg)
    initial = copy.deepcopy(student.state_dict())
    before = distill_cosine(student, teacher, heldout, cfg)
    res = pretrain_fit(cfg, train, student=student, teacher=teacher, print_fn=print_fn, should_stop=should_stop)
    if res["stopped"]:
        return None
    after = distill_cosine(student, teacher, heldout, cfg)
    ty, ey = torch.from_numpy(probe_train.labels), torch.from_numpy(probe_test.labels)
    accs = {}
    for name, state in (("pretrained", student.state_dict()), ("random_init", initial)):
        clf = _classifier(cfg, student, state)
        accs[name] = probe_accuracy(
            _features(clf, probe_train.x),
            ty,
            _features(clf, probe_test.x),
            ey,
            n_cls,
            sd.probe_epochs,
            sd.probe_lr,
            seed=cfg.seed,
        )
    out = {
        "distill_cosine_before": before,
        "distill_cosine_after": after,
        "probe_accuracy_pretrained": accs["pretrained"],
        "probe_accuracy_random_init": accs["random_init"],
        "chance_accuracy": 1.0 / n_cls,
    }
    for k, v in out.items():
        print_fn(f"{k}={v:.4f}")
    return out
