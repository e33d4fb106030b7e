"""The long-range memory task: proof that the carried state learns.

Each "long video" is S segments of T frames (32x32 by default). Only segment 0 holds
the answer: a square whose colour is the label. Every later segment is a distractor
(noise and moving grey squares, no colour at all). The label is asked for at the end,
from the last segment's logits, so a model can only answer by carrying what it saw in
segment 0 through its state:

* the model trained and evaluated with the state carried must reach >= 90 % accuracy;
* the same architecture trained and evaluated with the state reset at every segment
  sees only distractors at the end and stays at chance (1 / num_classes).

`run_memory_task(config)` trains both with streaming fine-tuning and ends by printing
``carried_state_accuracy=0.XX`` and ``reset_state_accuracy=0.XX``.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

# Saturated, mutually distinct colours (RGB 0-255); distractors are grey only.
PALETTE = np.array(
    [
        [230, 30, 30],
        [30, 200, 30],
        [40, 60, 240],
        [240, 220, 20],
        [220, 30, 220],
        [20, 220, 220],
        [250, 130, 0],
        [130, 40, 200],
    ],
    dtype=np.float32,
)


def make_memory_video(
    rng: np.random.Generator,
    label: int,
    segments: int,
    frames: int,
    size: int = 32,
    shape_size: int = 12,
    noise: float = 0.25,
    distractors: int = 2,
) -> np.ndarray:
    """One uint8 video [S, T, H, W, 3] whose first segment shows colour `label`."""
    if label >= len(PALETTE):
        raise ValueError(f"label {label}: the palette has {len(PALETTE)} colours")
    if shape_size >= size:
        raise ValueError(f"shape_size {shape_size} must be smaller than the frame size {size}")
    base = rng.uniform(70, 110, size=(segments, 1, 1, 1, 1)).astype(np.float32)
    v = base + rng.normal(0, noise * 255, size=(segments, frames, size, size, 3)).astype(np.float32)
    span = size - shape_size

    def square(s, value, speed):
        y, x = rng.integers(0, span + 1, size=2)
        dy, dx = rng.integers(-speed, speed + 1, size=2)
        for t in range(frames):
            yy, xx = int(np.clip(y + dy * t, 0, span)), int(np.clip(x + dx * t, 0, span))
            v[s, t, yy : yy + shape_size, xx : xx + shape_size] = value

    square(0, PALETTE[label], 1)  # the cue, drifting a little
    for s in range(1, segments):  # distractors: moving grey squares, no colour
        for _ in range(distractors):
            square(s, rng.uniform(20, 235), 2)
    return np.clip(v, 0, 255).astype(np.uint8)


def make_memory_videos(
    n: int,
    num_classes: int,
    segments: int,
    frames: int,
    size: int = 32,
    shape_size: int = 12,
    noise: float = 0.25,
    distractors: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 videos [n, S, T, H, W, 3] and int64 labels [n] (balanced)."""
    if num_classes > len(PALETTE):
        raise ValueError(f"num_classes {num_classes}: the palette has {len(PALETTE)} colours")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    vids = np.stack(
        [make_memory_video(rng, int(y), segments, frames, size, shape_size, noise, distractors) for y in labels]
    )
    return vids, labels


class MemoryTaskDataset(Dataset):
    """Items (x [S, 3, T, H, W] float normalised, label, index, skipped=[]).

    `fresh=True` (training) draws a new video at every access, seeded from numpy's
    global generator (so checkpoints and worker seeding decide it): the model never sees
    the same distractors twice and cannot memorise its way to the label. `fresh=False`
    (evaluation) keeps a fixed set made from `seed`.
    """

    def __init__(
        self,
        n: int,
        num_classes: int = 4,
        segments: int = 4,
        frames: int = 4,
        size: int = 32,
        shape_size: int = 12,
        noise: float = 0.25,
        distractors: int = 2,
        seed: int = 0,
        fresh: bool = False,
    ):
        self.n, self.num_classes, self.fresh = n, num_classes, fresh
        self.spec = dict(
            segments=segments, frames=frames, size=size, shape_size=shape_size, noise=noise, distractors=distractors
        )
        if fresh:
            self.videos, self.labels = None, np.arange(n) % num_classes
        else:
            self.videos, self.labels = make_memory_videos(n, num_classes, seed=seed, **self.spec)
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.fresh:
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
            label = int(rng.integers(self.num_classes))
            video = make_memory_video(rng, label, **self.spec)
        else:
            label, video = int(self.labels[i]), self.videos[i]
        v = torch.from_numpy(video).permute(0, 4, 1, 2, 3).float().div_(255.0)  # [S, 3, T, H, W]
        return (v - self.mean) / self.std, label, i, []


def mamba_dt_init_(model: torch.nn.Module, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> None:
    """Give every block's step size Δ = softplus(dt_proj bias) mamba's own starting range
    (log-uniform in [dt_min, dt_max]).

    The official VideoMamba init zeroes all Linear biases, dt_proj's included, so Δ starts
    at softplus(0) = 0.69 and the state forgets ~half of itself per token: harmless when
    fine-tuning clips, but a model trained from scratch to remember across segments then
    starts with its memory wiped within one segment and gradients through the state
    vanish. Mamba's range starts with slow channels that keep what they saw.
    """
    for name, p in model.named_parameters():
        if name.endswith(("dt_proj.bias", "dt_proj_b.bias")):
            with torch.no_grad():
                dt = torch.exp(torch.rand(p.shape[0]) * (np.log(dt_max) - np.log(dt_min)) + np.log(dt_min))
                dt = dt.clamp(min=floor)
                p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus


def collate_videos(batch):
    return {
        "x": torch.stack([b[0] for b in batch]),
        "y": torch.tensor([b[1] for b in batch]),
        "index": torch.tensor([b[2] for b in batch]),
        "skipped": [],
    }


def _train_one(cfg, carry_state: bool, train_set, val_set, device) -> dict:
    from . import distributed as dist
    from .engine import train_one_epoch
    from .model_setup import build_model, seed_everything
    from .optim import build_optimizer, cosine_schedule
    from .streaming import streaming_accuracy, streaming_step

    seed_everything(cfg.seed)
    model = build_model(cfg)
    if cfg.synthetic.mamba_dt_init:
        mamba_dt_init_(model)
    model = model.to(device)
    if dist.is_dist():
        for t in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(t.data, 0)
    optimizer, _ = build_optimizer(
        model, cfg.lr, cfg.weight_decay, tuple(cfg.opt_betas), cfg.opt_eps, cfg.layer_decay, cfg.layer_decay_mode
    )
    sampler = torch.utils.data.DistributedSampler(
        train_set, dist.world_size(), dist.rank(), shuffle=True, seed=cfg.seed, drop_last=True
    )
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, collate_fn=collate_videos, num_workers=0
    )
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    lr_values = cosine_schedule(cfg.lr, cfg.min_lr, cfg.epochs, steps, cfg.warmup_epochs, cfg.warmup_lr)
    step_fn = streaming_step(tbptt_k=cfg.streaming.tbptt_k, loss="last", carry_state=carry_state, device=device)
    val_sampler = torch.utils.data.DistributedSampler(val_set, dist.world_size(), dist.rank(), shuffle=False)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, sampler=val_sampler, collate_fn=collate_videos)
    history = []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        st = train_one_epoch(
            model,
            loader,
            optimizer,
            step_fn,
            epoch=epoch,
            steps_per_epoch=steps,
            start_step=epoch * steps,
            lr_values=lr_values,
            clip_grad=cfg.clip_grad,
            manual_grad_reduce=True,
            log_every=0,
        )
        history.append(st.loss)
        if dist.is_main():
            log.info(
                "memory task (%s state) epoch %d loss %.4f (%.1fs)",
                "carried" if carry_state else "reset",
                epoch,
                st.loss,
                st.seconds,
            )
    if dist.is_dist():
        dist.check_ranks_in_sync(model)
    acc = streaming_accuracy(model, val_loader, carry_state=carry_state, device=device)
    other = streaming_accuracy(model, val_loader, carry_state=not carry_state, device=device)
    return {
        "accuracy": acc,
        "other_mode_accuracy": other,
        "losses": history,
        "seconds": time.perf_counter() - t0,
        "model": model,
    }


def run_memory_task(cfg, device: Optional[torch.device] = None, print_fn=print) -> dict:
    """Train the carried-state model (and the reset control); print the two result lines."""
    device = device or torch.device("cpu")
    sc, st = cfg.synthetic, cfg.streaming
    common = dict(
        num_classes=sc.num_classes,
        segments=st.segments,
        frames=st.segment_frames,
        size=sc.img_size,
        shape_size=sc.shape_size,
        noise=sc.noise,
        distractors=sc.distractor_shapes,
    )
    train_set = MemoryTaskDataset(sc.train_videos, seed=sc.seed, fresh=True, **common)
    val_set = MemoryTaskDataset(sc.val_videos, seed=sc.seed + 1, **common)
    carried = _train_one(cfg, True, train_set, val_set, device)
    result = {
        "carried_state_accuracy": carried["accuracy"],
        "carried_model_reset_eval_accuracy": carried["other_mode_accuracy"],
        "carried_losses": carried["losses"],
        "carried_seconds": carried["seconds"],
        "chance": 1.0 / sc.num_classes,
        "model": carried["model"],
    }
    if sc.train_reset_control:
        reset = _train_one(cfg, False, train_set, val_set, device)
        result.update(
            reset_state_accuracy=reset["accuracy"], reset_losses=reset["losses"], reset_seconds=reset["seconds"]
        )
    else:
        result["reset_state_accuracy"] = carried["other_mode_accuracy"]
    from . import distributed as dist

    if dist.is_main():
        print_fn(f"chance_accuracy={result['chance']:.2f}")
        print_fn(f"carried_model_reset_eval_accuracy={result['carried_model_reset_eval_accuracy']:.2f}")
        print_fn(f"carried_state_accuracy={result['carried_state_accuracy']:.2f}")
        print_fn(f"reset_state_accuracy={result['reset_state_accuracy']:.2f}")
    return result
