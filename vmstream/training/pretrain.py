"""Masked pretraining distilled from a CLIP teacher (the official
``run_videomamba_pretraining.py`` + ``engine_for_pretraining_videomamba.py`` flow).

Per batch (`distill_step`): the frozen teacher sees the whole clip (resized to its
resolution when the clip's differs, bicubic, as the official engine) and returns its
L2-normalised features and, for attention masking, its cls-to-patch attention; the mask
is drawn (from the attention, or by the recipe's generator); the targets are the
teacher's features at the visible places; the student sees only the visible tokens and
predicts them; loss = clip_loss_ratio * distill_loss. Everything around the step is the
fine-tuning loop's (`engine.train_one_epoch`): per-step cosine lr / weight decay,
gradient accumulation (`update_freq`, so fewer GPUs reach the recipe's total batch),
clipping, bf16 autocast on CUDA; DDP with `find_unused_parameters` as the official run
(the last block's mixer and, with one return layer, the final norm get no gradient).

Checkpoints (`checkpoint-latest.pth` every epoch, `checkpoint-{epoch}.pth` every
`save_ckpt_freq`) hold the student's state dict under ``model`` in the official keys, so
they load into the official code, back into `VideoMambaPretrain` to continue, and into
the classifier for fine-tuning (`finetune:` in a fine-tuning recipe).
"""

from __future__ import annotations

import contextlib
import logging
from functools import partial
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from vmstream.config_loader import ConfigError
from vmstream.models import SIZES, ClipTeacher, VideoMambaPretrain
from vmstream.models.checkpoint import CheckpointError, read_checkpoint
from vmstream.models.clip_teacher import clip_teacher

from . import distributed as dist
from . import epochs
from .annotations import read_video_list
from .augment import TrainTransform
from .datasets import VideoClsDataset, collate
from .distill_loss import distill_loss, visible_targets
from .engine import StepFn, autocast_context, check_finite, train_one_epoch
from .masking import attention_mask, make_mask
from .model_setup import apply_threads, recipe_device, scan_backend, seed_everything
from .optim import build_optimizer, cosine_schedule, scaled_lr
from .recipes import PretrainConfig, TrainConfig

__all__ = [
    "build_student",
    "build_teacher",
    "open_teacher",
    "teacher_input",
    "draw_mask_and_targets",
    "distill_step",
    "pretrain_fit",
    "build_pretrain_dataset",
]

log = logging.getLogger("vmstream.training")


# ------------------------------------------------------------------------- models


def build_student(cfg: TrainConfig) -> VideoMambaPretrain:
    """The recipe's student: a registry size (`model`) with `model_args` overrides and the
    recipe's clip_* settings; `finetune` names a pretraining checkpoint to start from
    (an official `*_mask_pt_*` one continues training), loaded strictly."""
    if cfg.model not in SIZES:
        raise ConfigError(f"model {cfg.model!r}: a pretraining student is one of {', '.join(SIZES)}")
    p = cfg.pretrain
    kw: dict[str, Any] = dict(SIZES[cfg.model])
    kw.update(
        img_size=cfg.input_size,
        num_frames=cfg.num_frames,
        kernel_size=cfg.tubelet_size,
        drop_path_rate=cfg.drop_path,
        scan_backend=scan_backend(cfg),
    )
    kw.update(cfg.model_args)
    kw.update(
        clip_decoder_embed_dim=p.clip_decoder_embed_dim or kw["embed_dim"],
        clip_output_dim=p.clip_output_dim,
        clip_norm_type=p.clip_norm_type,
        clip_return_layer=p.clip_return_layer,
        clip_student_return_interval=p.clip_student_return_interval,
    )
    try:
        model = VideoMambaPretrain(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"student: {e}") from None
    if cfg.finetune:
        try:
            sd, _ = read_checkpoint(cfg.finetune)
            model.load_state_dict(sd, strict=True)
        except FileNotFoundError:
            raise ConfigError(f"finetune: {cfg.finetune!r} does not exist") from None
        except (CheckpointError, RuntimeError) as e:
            raise ConfigError(f"finetune {cfg.finetune!r} is not a checkpoint of this student: {e}") from None
        log.info("student initialised from %s", cfg.finetune)
    return model


def build_teacher(cfg: TrainConfig) -> ClipTeacher:
    """The frozen CLIP teacher of the recipe (its size, weights and return settings)."""
    p = cfg.pretrain
    kw = dict(
        input_resolution=p.clip_input_resolution,
        kernel_size=cfg.tubelet_size,
        clip_norm_type=p.clip_norm_type,
        return_attn=p.clip_return_attn or p.mask_type == "attention",
        clip_return_layer=p.clip_return_layer,
        clip_return_interval=p.clip_return_interval,
        clip_return_cls=p.clip_return_cls,
    )
    return open_teacher(p, kw)


def open_teacher(p, kw: dict) -> ClipTeacher:
    """The teacher `p.clip_teacher` built with `kw` (and the recipe's `teacher_args`) and
    its weights `p.clip_teacher_weights` (random, with a warning, when empty)."""
    kw = {**kw, **p.teacher_args}
    weights = p.clip_teacher_weights or None
    if weights is None:
        log.warning("the CLIP teacher has random weights (pretrain.clip_teacher_weights is empty)")
    try:
        return clip_teacher(p.clip_teacher, weights=weights, **kw)
    except FileNotFoundError:
        raise ConfigError(f"pretrain.clip_teacher_weights: {weights!r} does not exist") from None
    except (CheckpointError, TypeError, ValueError) as e:
        raise ConfigError(f"pretrain.clip_teacher_weights {weights!r}: {e}") from None


def teacher_input(x: Tensor, resolution: int) -> Tensor:
    """The clip at the teacher's resolution (bicubic, as the official engine)."""
    B, C, T, H, W = x.shape
    if H == resolution and W == resolution:
        return x
    y = F.interpolate(x.reshape(B, C * T, H, W), size=(resolution, resolution), mode="bicubic", align_corners=False)
    return y.view(B, C, T, resolution, resolution)


# --------------------------------------------------------------------------- step


def _grid(student: nn.Module) -> tuple[int, int, int]:
    raw = student.module if hasattr(student, "module") else student
    h, w = raw.patch_embed.grid_size
    return raw.num_frames // raw.kernel_size, h, w


@torch.no_grad()
def draw_mask_and_targets(
    student: nn.Module,
    teacher: ClipTeacher,
    x: Tensor,
    p: PretrainConfig,
    amp=None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """(mask [B, 1 + T*h*w], targets [K, B, 1 + visible, C]) for clip batch `x`."""
    amp = amp or contextlib.nullcontext
    with amp():
        out = teacher(teacher_input(x, teacher.input_resolution))
    feats, attn = out if isinstance(out, tuple) else (out, None)
    T, h, w = _grid(student)
    B = x.shape[0]
    if p.mask_type == "attention":
        if attn is None or attn.shape != (B * T, h * w):
            got = None if attn is None else tuple(attn.shape)
            raise ConfigError(
                f"attention masking needs the teacher's attention [B*T={B * T}, {h * w}] on the "
                f"student's patch grid; got {got}"
            )
        mask = attention_mask(attn.float(), B, p.mask_ratio, generator=generator)
    else:
        mask = make_mask(p.mask_type, B, T, h, w, p.mask_ratio, generator=generator, device=x.device)
    return mask.to(x.device), visible_targets(feats.float(), mask.to(x.device))


def distill_step(teacher: ClipTeacher, p: PretrainConfig, device: torch.device, amp=None) -> StepFn:
    """The per-batch step for `engine.train_one_epoch`: masks, targets, student, loss, backward."""
    amp = amp or contextlib.nullcontext

    def step(model, batch, scale):
        x = batch["x"].to(device, non_blocking=True)
        mask, targets = draw_mask_and_targets(model, teacher, x, p, amp)
        with amp():
            pred = model(x, mask)
        loss = p.clip_loss_ratio * distill_loss(pred.float(), targets, p.clip_loss_type)
        check_finite(loss)
        (loss * scale).backward()
        return float(loss.detach()), x.shape[0]

    return step


# --------------------------------------------------------------------------- data


def build_pretrain_dataset(cfg: TrainConfig) -> VideoClsDataset:
    """Clips of the recipe's training list (official ``path<split>label`` format; labels
    unused) with the pretraining augmentation: multi-scale crop [1, .875, .75, .66] and
    the recipe's flip, no RandAugment, no random erasing (the official
    ``DataAugmentationForVideoMAE``)."""
    path = cfg.list_path("train")
    if not path:
        raise ConfigError("the recipe names no training list (data_path or train_list)")
    entries = read_video_list(path, cfg.split, cfg.prefix)
    tt = TrainTransform(
        crop_size=cfg.input_size,
        rand_augment=None,
        flip=cfg.flip,
        reprob=0.0,
        crop=cfg.pretrain.crop,
        interpolation=cfg.train_interpolation,
    )
    return VideoClsDataset(
        entries,
        mode="train",
        num_frames=cfg.num_frames,
        crop_size=cfg.input_size,
        short_side_size=cfg.short_side_size,
        train_transform=tt,
        num_sample=cfg.num_sample,
        decode_short_side=cfg.decode_short_side,
    )


# ---------------------------------------------------------------------------- fit


def pretrain_fit(
    cfg: TrainConfig,
    train_set=None,
    *,
    student: Optional[nn.Module] = None,
    teacher: Optional[ClipTeacher] = None,
    collate_fn: Callable = collate,
    print_fn=print,
    should_stop=None,
) -> dict[str, Any]:
    """Masked pretraining for `cfg.epochs` (resuming from `output_dir`); returns the
    history and the trained student. `train_set`, `student`, `teacher` may be given
    (synthetic runs, tests); otherwise they come from the recipe."""
    device = recipe_device(cfg)
    dist.init(device.type)
    apply_threads(cfg)
    seed_everything(cfg.seed + dist.rank())
    train_set = train_set if train_set is not None else build_pretrain_dataset(cfg)
    student = (student if student is not None else build_student(cfg)).to(device)
    teacher = (teacher if teacher is not None else build_teacher(cfg)).to(device).eval().requires_grad_(False)
    ws = dist.world_size()
    lr, min_lr, warmup_lr = (
        scaled_lr(v, cfg.batch_size, ws, cfg.update_freq, cfg.num_sample, cfg.lr_scale_divisor)
        for v in (cfg.lr, cfg.min_lr, cfg.warmup_lr)
    )
    optimizer, _ = build_optimizer(student, lr, cfg.weight_decay, tuple(cfg.opt_betas), cfg.opt_eps, None, opt=cfg.opt)
    model = student
    if dist.is_dist():
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=ids, find_unused_parameters=True)
    sampler = DistributedSampler(
        train_set, num_replicas=ws, rank=dist.rank(), shuffle=True, seed=cfg.seed, drop_last=True
    )
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    steps = len(loader) // cfg.update_freq
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps < 1:
        raise ConfigError(
            f"{len(train_set)} clips give no optimizer step of {cfg.batch_size} x {cfg.update_freq} "
            f"(update_freq) x {ws} ranks"
        )
    lr_values = cosine_schedule(lr, min_lr, cfg.epochs, steps, cfg.warmup_epochs, warmup_lr, cfg.warmup_steps)
    wd_end = cfg.weight_decay if cfg.weight_decay_end is None else cfg.weight_decay_end
    wd_values = cosine_schedule(cfg.weight_decay, wd_end, cfg.epochs, steps)
    amp = partial(autocast_context, device, cfg.bf16)
    step_fn = distill_step(teacher, cfg.pretrain, device, amp)
    start = 0
    path = epochs.resume_path(cfg, cfg.output_dir)
    if path:
        start, _ = epochs.resume(path, model=student, optimizer=optimizer, label="pretraining: ")
    end = cfg.epochs if cfg.stop_after_epochs is None else min(cfg.epochs, start + cfg.stop_after_epochs)

    def one_epoch(epoch: int) -> dict:
        sampler.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            step_fn,
            epoch=epoch,
            steps_per_epoch=steps,
            start_step=epoch * steps,
            lr_values=lr_values,
            wd_values=wd_values,
            update_freq=cfg.update_freq,
            clip_grad=cfg.clip_grad,
            log_every=cfg.log_every,
        )
        return {"epoch": epoch, "train_loss": stats.loss, "losses": stats.losses, "seconds": stats.seconds}

    def save(epoch: int, row: dict) -> None:
        epochs.save_epoch(
            cfg.output_dir, cfg, model=student, optimizer=optimizer, epoch=epoch, step=(epoch + 1) * steps
        )

    history, stopped = epochs.run_epochs(
        start,
        end,
        cfg.epochs,
        one_epoch,
        save,
        lambda row: f"epoch {row['epoch']}: distill_loss={row['train_loss']:.4f}",
        out_dir=cfg.output_dir,
        saving=cfg.save_ckpt,
        should_stop=should_stop,
        print_fn=print_fn,
    )
    if dist.is_dist():
        dist.check_ranks_in_sync(student, print_fn)
    return {"history": history, "model": student, "teacher": teacher, "stopped": stopped}
