"""Whole training / evaluation runs from a recipe: what `vmstream train` / `vmstream
eval` call (`train_main`, `eval_main`), runnable meanwhile as
``python -m vmstream.training train --config RECIPE [key=value ...]``.

The training loop itself is `fit` here on the skeleton of `epochs` (resume, save, RNG,
stop line) that the pretraining loops share; the pipeline's `Runner` is another thing.

`fit(cfg)` is the official fine-tuning flow: datasets from the annotation lists, the
model (optionally initialised from a checkpoint, temporal positions resampled by the
model's loader), AdamW with layer decay, per-step cosine schedules, auto-resume from
``output_dir``, ``checkpoint-latest.pth`` every epoch, ``checkpoint-best.pth`` on a
better validation score, and at the end the multi-view test of the best model.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import partial
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from vmstream.config_loader import ConfigError
from vmstream.models.checkpoint import CheckpointError
from vmstream.models.ops.dispatch import check_backend

from . import checkpoint as ckpt
from . import distributed as dist
from . import epochs
from .annotations import (
    DATASET_CLASSES,
    REGRESSION_DATASETS,
    AnnotationError,
    TargetNorm,
    check_labels,
    read_video_list,
    trim_entries,
)
from .augment import TrainTransform
from .datasets import LongVideoDataset, VideoClsDataset, collate
from .engine import autocast_context, clip_step, evaluate, train_one_epoch
from .mixup import LabelSmoothingCrossEntropy, Mixup, SoftTargetCrossEntropy
from .model_setup import apply_threads, build_model, recipe_device, scan_backend, seed_everything
from .optim import build_optimizer, cosine_schedule, scaled_lr
from .recipes import TrainConfig, load_recipe

log = logging.getLogger("vmstream.training")


# ------------------------------------------------------------------------- data


def num_classes_for(cfg: TrainConfig) -> int:
    known = DATASET_CLASSES.get(cfg.data_set)
    if known and known != cfg.nb_classes and cfg.data_set not in REGRESSION_DATASETS:
        raise ConfigError(f"data_set {cfg.data_set!r} has {known} classes but nb_classes={cfg.nb_classes}")
    return cfg.nb_classes


def _entries(cfg: TrainConfig, split: str):
    path = cfg.list_path(split)
    if not path:
        return None
    if split != "train" and not os.path.exists(path):
        return None
    regression = cfg.task == "regression" or cfg.data_set in REGRESSION_DATASETS
    entries = read_video_list(path, cfg.split, cfg.prefix, regression=regression, with_duration=cfg.trimmed is not None)
    if cfg.trimmed is not None:
        entries = trim_entries(entries, cfg.trimmed, cfg.time_stride)
    if not regression:
        check_labels(entries, num_classes_for(cfg), path)
    return entries


def build_datasets(cfg: TrainConfig):
    """(train, val, test, target_norm) datasets for a classification / regression /
    streaming recipe; val and test are None when their lists are absent."""
    train_e = _entries(cfg, "train")
    if train_e is None:
        raise ConfigError("the recipe names no training list (data_path or train_list)")
    val_e, test_e = _entries(cfg, "val"), _entries(cfg, "test")
    norm = None
    target_fn = None
    if cfg.task == "regression" and cfg.regression_norm == "zscore":
        norm = TargetNorm.fit([float(e.label) for e in train_e])
        target_fn = norm.apply
    tt = TrainTransform(
        crop_size=cfg.input_size,
        rand_augment=cfg.aa,
        flip=cfg.flip,
        reprob=cfg.reprob,
        interpolation=cfg.train_interpolation,
    )
    if cfg.task == "streaming":
        st = cfg.streaming
        mk = partial(
            LongVideoDataset,
            segments=st.segments,
            segment_frames=st.segment_frames,
            crop_size=cfg.input_size,
            short_side_size=cfg.short_side_size,
            decode_short_side=cfg.decode_short_side,
            target_fn=target_fn,
        )
        return (
            mk(train_e, train=True, train_transform=tt),
            mk(val_e, train=False) if val_e else None,
            mk(test_e, train=False) if test_e else None,
            norm,
        )
    mk = partial(
        VideoClsDataset,
        num_frames=cfg.num_frames,
        crop_size=cfg.input_size,
        short_side_size=cfg.short_side_size,
        test_num_segment=cfg.test_num_segment,
        test_num_crop=cfg.test_num_crop,
        decode_short_side=cfg.decode_short_side,
        target_fn=target_fn,
    )
    train = mk(train_e, mode="train", train_transform=tt, num_sample=cfg.num_sample)
    val = mk(val_e, mode="val") if val_e else None
    test = mk(test_e, mode="test") if test_e else None
    return train, val, test, norm


def _loader(ds, cfg: TrainConfig, train: bool, batch_size: int, collate_fn=collate):
    sampler = DistributedSampler(
        ds, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=train, seed=cfg.seed, drop_last=train
    )
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        drop_last=train,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


# ------------------------------------------------------------------------- fit


def _stream_forward(model):
    from .streaming import streaming_predict

    raw = model.module if hasattr(model, "module") else model

    def fwd(x):  # x [B, S, 3, T, H, W]: one long video per row
        return streaming_predict(raw, x, True, "last")

    return fwd


def fit(cfg: TrainConfig, datasets=None, print_fn=print, should_stop=None) -> dict[str, Any]:
    """Train (resuming from ``output_dir`` if it holds a checkpoint), validate, test.

    `datasets` (train, val, test, norm) may be passed in (tests, synthetic data);
    otherwise they come from the recipe's annotation lists. `should_stop()`, asked after
    each epoch's checkpoint (one process only), ends the run there: the same command
    resumes from that checkpoint.
    """
    device = recipe_device(cfg)
    dist.init(device.type)
    apply_threads(cfg)
    seed_everything(cfg.seed + dist.rank())
    train_set, val_set, test_set, norm = datasets if datasets is not None else build_datasets(cfg)
    regression = cfg.task == "regression"
    streaming = cfg.task == "streaming"

    model = build_model(cfg).to(device)
    ws = dist.world_size()
    lr, min_lr, warmup_lr = _scaled_lrs(cfg, ws)
    optimizer, specs = build_optimizer(
        model, lr, cfg.weight_decay, tuple(cfg.opt_betas), cfg.opt_eps, cfg.layer_decay, cfg.layer_decay_mode, cfg.opt
    )
    model = _distribute(model, device, streaming)

    batch = cfg.batch_size
    train_loader = _loader(train_set, cfg, True, batch)
    val_loader = _loader(val_set, cfg, False, max(1, int(1.5 * batch))) if val_set is not None else None
    test_loader = _loader(test_set, cfg, False, batch) if test_set is not None else None
    steps = len(train_loader) // cfg.update_freq
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps < 1:
        raise ConfigError(f"{len(train_set)} training samples give no full batch of {batch} x {ws} ranks")
    lr_values, wd_values = _schedules(cfg, lr, min_lr, warmup_lr, steps)

    amp = partial(autocast_context, device, cfg.bf16)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 / fp32 need no loss scaling
    step_fn = _step_fn(cfg, device, amp)
    start_epoch, best = 0, None
    path = epochs.resume_path(cfg, cfg.output_dir)
    if path:
        start_epoch, ck = epochs.resume(path, model=model, optimizer=optimizer, scaler=scaler)
        best = ck.get("best")

    eval_fwd = _stream_forward(model) if streaming else None
    end_epoch = cfg.epochs
    if cfg.stop_after_epochs is not None:
        end_epoch = min(end_epoch, start_epoch + cfg.stop_after_epochs)
    improved = False

    def one_epoch(epoch: int) -> dict:
        nonlocal best, improved
        train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            train_loader,
            optimizer,
            step_fn,
            epoch=epoch,
            steps_per_epoch=steps,
            start_step=epoch * steps,
            lr_values=lr_values,
            wd_values=wd_values,
            update_freq=cfg.update_freq,
            clip_grad=cfg.clip_grad,
            manual_grad_reduce=streaming and dist.is_dist(),
            log_every=cfg.log_every,
        )
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "losses": stats.losses,
            "skipped": len(stats.skipped),
            "seconds": stats.seconds,
        }
        improved = False
        if val_loader is not None and (epoch + 1) % cfg.eval_every == 0:
            v = evaluate(model, val_loader, device, amp, regression, eval_fwd, multi_view=not streaming)
            row["val"] = v
            score = -v.get("mse", 0.0) if regression else v.get("acc1", 0.0)
            if v.get("n") and (best is None or score > best):
                best, improved = score, True
        return row

    def save(epoch: int, row: dict) -> None:
        extra = {"target_norm": {"mean": norm.mean, "std": norm.std}} if norm is not None else None
        epochs.save_epoch(
            cfg.output_dir,
            cfg,
            model=model,
            optimizer=optimizer,
            epoch=epoch,
            step=(epoch + 1) * steps,
            scaler=scaler,
            best=best,
            improved=improved,
            extra=extra,
        )

    history, stopped = epochs.run_epochs(
        start_epoch,
        end_epoch,
        cfg.epochs,
        one_epoch,
        save,
        _epoch_line,
        out_dir=cfg.output_dir,
        saving=cfg.save_ckpt,
        should_stop=should_stop,
        print_fn=print_fn,
    )

    if dist.is_dist():
        dist.check_ranks_in_sync(model, print_fn)
    result: dict[str, Any] = {
        "history": history,
        "best": best,
        "model": model,
        "param_groups": specs,
        "stopped": stopped,
    }
    if test_loader is not None and not stopped:
        result["test"] = _final_test(cfg, model, test_loader, device, amp, eval_fwd, print_fn)
    return result


def _schedules(cfg: TrainConfig, lr: float, min_lr: float, warmup_lr: float, steps: int):
    """Per-step learning rates and weight decays over the whole run."""
    lr_values = cosine_schedule(lr, min_lr, cfg.epochs, steps, cfg.warmup_epochs, warmup_lr, cfg.warmup_steps)
    wd_end = cfg.weight_decay if cfg.weight_decay_end is None else cfg.weight_decay_end
    return lr_values, cosine_schedule(cfg.weight_decay, wd_end, cfg.epochs, steps)


def _final_test(cfg: TrainConfig, model, test_loader, device, amp, eval_fwd, print_fn) -> dict:
    """The test at the end of training, on the best checkpoint when the recipe says so."""
    regression = cfg.task == "regression"
    best_path = os.path.join(cfg.output_dir, "checkpoint-best.pth") if cfg.output_dir else ""
    if cfg.test_best and best_path and os.path.exists(best_path):
        ckpt.resume(best_path, model=model, restore_rng=False)
    t = evaluate(model, test_loader, device, amp, regression, eval_fwd, multi_view=cfg.task != "streaming")
    if dist.is_main():
        print_fn(_test_line(t, regression))
    return t


def _scaled_lrs(cfg: TrainConfig, world_size: int) -> tuple[float, float, float]:
    """(lr, min_lr, warmup_lr) scaled to the total batch, as the official runs do."""
    reps = cfg.num_sample if (cfg.lr_scale_num_sample and cfg.task != "streaming") else 1
    return tuple(
        scaled_lr(v, cfg.batch_size, world_size, cfg.update_freq, reps, cfg.lr_scale_divisor)
        for v in (cfg.lr, cfg.min_lr, cfg.warmup_lr)
    )


def _distribute(model: nn.Module, device: torch.device, streaming: bool) -> nn.Module:
    """Under torchrun: DDP for clip training; streaming reduces its gradients itself
    (`manual_grad_reduce`), so there every rank just starts from rank 0's weights."""
    if dist.is_dist() and not streaming:
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_dist():
        for t in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(t.data, 0)
    return model


def _epoch_line(row: dict) -> str:
    msg = f"epoch {row['epoch']}: train_loss={row['train_loss']:.4f}"
    if "val" in row:
        msg += " " + " ".join(f"val_{k}={v:.4f}" for k, v in row["val"].items() if isinstance(v, float))
    if row["skipped"]:
        msg += f" skipped_videos={row['skipped']}"
    return msg


def _step_fn(cfg: TrainConfig, device: torch.device, amp):
    """The per-batch training step with the recipe's loss (mixup/cutmix and label
    smoothing as the official runs; streaming: through the carried state)."""
    regression, streaming = cfg.task == "regression", cfg.task == "streaming"
    mixup = None
    if regression:
        criterion = nn.MSELoss()
    elif streaming:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss()
    elif cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None:
        mixup = Mixup(
            cfg.mixup,
            cfg.cutmix,
            cfg.cutmix_minmax,
            cfg.mixup_prob,
            cfg.mixup_switch_prob,
            cfg.mixup_mode,
            label_smoothing=cfg.smoothing,
            num_classes=cfg.nb_classes,
        )
        criterion = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    if streaming:
        from .streaming import streaming_step

        st = cfg.streaming
        return streaming_step(criterion, st.tbptt_k, st.loss, st.carry_state, device, amp)
    return clip_step(criterion, mixup, device, amp, regression)


def _test_line(t: dict, regression: bool) -> str:
    if regression:
        return f"test_mse={t.get('mse', float('nan')):.4f} videos={t['n']} views={t['num_views']}"
    return (
        f"test_top1={t.get('acc1', float('nan')):.2f} test_top5={t.get('acc5', float('nan')):.2f} "
        f"videos={t['n']} views={t['num_views']} skipped={t['skipped']}"
    )


# ------------------------------------------------------------------------- entry points


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
        )


def train_main(config_path: Optional[str], overrides=(), should_stop=None) -> int:
    """`vmstream train --config RECIPE [key=value ...]`. Returns the process exit code."""
    _setup_logging()
    try:
        cfg = load_recipe(config_path, overrides)
        device = recipe_device(cfg)
        try:  # a GPU is checked by its first scan
            check_backend(scan_backend(cfg), device if device.type == "cpu" else None)
        except ValueError as e:
            raise ConfigError(f"scan_backend: {e}") from None
    except (ConfigError, ValueError) as e:
        print(f"vmstream train: {e}", file=sys.stderr)
        return 2
    try:
        if cfg.task == "synthetic_memory":
            from .synthetic import run_memory_task

            device = recipe_device(cfg)
            dist.init(device.type)
            apply_threads(cfg)
            res = run_memory_task(cfg, device)
            return _proof_exit("carried_state_accuracy", res["carried_state_accuracy"], 0.9)
        if cfg.task == "synthetic_distill":
            from .synthetic_distill import run_synthetic_distill

            res = run_synthetic_distill(cfg, should_stop=should_stop)
            if res is None:
                return 130
            return _proof_exit(
                "probe_accuracy_pretrained",
                res["probe_accuracy_pretrained"],
                res["probe_accuracy_random_init"] + 0.10,
                "probe_accuracy_random_init + 0.10",
            )
        if cfg.task == "synthetic_multimodal":
            from .synthetic_multimodal import run_synthetic_multimodal

            res = run_synthetic_multimodal(cfg, should_stop=should_stop)
            if res is None:
                return 130
            return _proof_exit(
                "retrieval_r1_after",
                res["retrieval_r1_after"],
                res["retrieval_r1_before"] + 0.2,
                "retrieval_r1_before + 0.2",
            )
        if cfg.task == "pretrain_multimodal":
            from .mm_pretrain import multimodal_fit

            return 130 if multimodal_fit(cfg, should_stop=should_stop)["stopped"] else 0
        if cfg.task == "pretrain":
            from .pretrain import pretrain_fit

            return 130 if pretrain_fit(cfg, should_stop=should_stop)["stopped"] else 0
        return 130 if fit(cfg, should_stop=should_stop)["stopped"] else 0
    except (ConfigError, AnnotationError, CheckpointError, FileNotFoundError) as e:  # data or weights it names
        print(f"vmstream train: {e}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()


def _proof_exit(name: str, value: float, threshold: float, rule: str = "") -> int:
    """A synthetic proof's exit code, with one line saying why when it fails."""
    if value >= threshold:
        return 0
    print(
        f"vmstream train: the proof failed: {name}={value:.4f} is under its threshold "
        f"{threshold:.4f}{f' ({rule})' if rule else ''}",
        file=sys.stderr,
    )
    return 1


def eval_main(config_path: Optional[str], overrides=(), checkpoint: Optional[str] = None) -> int:
    """`vmstream eval --config RECIPE [--checkpoint PATH] [key=value ...]`: the multi-view
    test of a checkpoint (ours or official) on the recipe's test list."""
    _setup_logging()
    try:
        cfg = load_recipe(config_path, overrides)
        device = recipe_device(cfg)
        dist.init(device.type)
        _, _, test_set, norm = build_datasets(cfg)
        if test_set is None:
            raise ConfigError(f"no test list found at {cfg.list_path('test')!r}")
        model = build_model(cfg.model_copy(update={"finetune": ""})).to(device)
        path = checkpoint or cfg.finetune
        if path:
            from vmstream import models

            report = models.load_checkpoint(model, models.resolve_checkpoint(path))
            log.info("evaluating %s: %s", path, report)
        loader = _loader(test_set, cfg, False, cfg.batch_size)
        amp = partial(autocast_context, device, cfg.bf16)
        fwd = _stream_forward(model) if cfg.task == "streaming" else None
        t = evaluate(model, loader, device, amp, cfg.task == "regression", fwd, multi_view=cfg.task != "streaming")
        if dist.is_main():
            print(_test_line(t, cfg.task == "regression"))
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"vmstream eval: {e}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()
