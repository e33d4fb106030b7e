"""Multimodal (video-text) pretraining: the official ``tasks/pretrain.py`` flow in two stages.

1. The masked stage (``exp_pt/videomamba_middle_{5m,17m,25m}``): the frozen CLIP teacher
   sees the whole clip (or image, a one-frame clip) at its resolution; the mask is drawn
   from its cls attention (50 % of an image's patches, 80 % of a video's; or tube /
   random); the student sees the visible tokens only; losses UTA + VTC + VTM + MLM.
2. The unmasked stage (``*_unmasked``): from the masked stage's weights, no teacher, no
   mask, UTA off, 1 epoch at lr 8e-5 (warmup 0.2 epoch), batch 64 per GPU and media.

Each stage is its own run with its own optimizer and schedule (the official cosine with
``min_lr_multi``, `optim.official_mm_cosine`), steps drawn from the image and the video
loaders in the official mixed order (`mm_loader.MixedLoader`), captions tokenised to
``max_txt_l`` with max-length padding. Around the step, the fine-tuning engine's loop
(`engine.train_one_epoch`): gradient accumulation (``update_freq``), clipping, bf16
autocast on CUDA, DDP (``find_unused_parameters``: the unmasked stage leaves the CLIP
decoder without gradient). Learning rates are the recipe's at its reference batch
(``lr_scale_divisor`` = the official total batch) and scale linearly with the total
batch; the official code has one fixed setup (128, resp. 64, per GPU on 16 GPUs), so a
user with G GPUs sets ``update_freq`` = 16 / G and gets the official lr and batch.

Checkpoints: ``OUTPUT_DIR/masked/`` and ``OUTPUT_DIR/unmasked/``, ``checkpoint-latest.pth``
every epoch, the model under ``model`` in the official pretraining keys
(``text_encoder.bert.*``, ``text_encoder.cls.*``), so the official code continues from it
and `load_model` serves it for retrieval. The same command resumes: a finished stage is skipped (its weights loaded), an unfinished one
continues from its last epoch with its optimizer and RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vmstream.config_loader import ConfigError
from vmstream.models import SIZES
from vmstream.models.tokenizer import BertTokenizer, VocabularyNotFound
from vmstream.models.videotext_checkpoint import canonical_videotext_keys, official_pretrain_keys

from . import checkpoint as ckpt
from . import distributed as dist
from . import epochs
from .distill_loss import visible_targets
from .engine import StepFn, autocast_context, check_finite, train_one_epoch
from .masking import attention_mask, make_mask
from .mm_annotations import load_anno, parse_corpora
from .mm_data import MediaTextDataset, PairTransform, collate_pairs
from .mm_loader import MixedLoader
from .mm_losses import SpecialTokens
from .mm_model import LOSS_NAMES, Criterion, VideoTextPretrain
from .mm_weights import load_initial_weights
from .model_setup import apply_threads, recipe_device, scan_backend, seed_everything
from .optim import build_optimizer, official_mm_cosine
from .pretrain import open_teacher, teacher_input
from .recipes import TrainConfig

__all__ = [
    "Stage",
    "stages",
    "make_tokenizer",
    "special_tokens",
    "build_mm_model",
    "build_mm_teacher",
    "build_mm_datasets",
    "mask_and_targets",
    "mm_step",
    "run_stage",
    "multimodal_fit",
]

log = logging.getLogger("vmstream.training")

# The first micro-batches' losses kept in each checkpoint (small: a dict of floats each).
RECORD_HEAD = 32
RECORD_HEAD_KEY = "vmstream_loss_record_head"


@dataclass(frozen=True)
class Stage:
    name: str  # "masked" or "unmasked"
    epochs: int
    lr: float
    min_lr_multi: float
    warmup_epochs: float
    batch_size: int
    batch_size_image: int
    lr_scale_divisor: float
    masked: bool


def stages(cfg: TrainConfig) -> list[Stage]:
    mm = cfg.multimodal
    out = []
    for name in mm.stages:
        if name == "masked":
            out.append(
                Stage(
                    "masked",
                    cfg.epochs,
                    cfg.lr,
                    cfg.min_lr / cfg.lr,
                    cfg.warmup_epochs,
                    cfg.batch_size,
                    mm.batch_size_image or cfg.batch_size,
                    cfg.lr_scale_divisor,
                    True,
                )
            )
        else:
            u = mm.unmasked
            out.append(
                Stage(
                    "unmasked",
                    u.epochs,
                    u.lr,
                    u.min_lr / u.lr,
                    u.warmup_epochs,
                    u.batch_size,
                    u.batch_size,
                    u.lr_scale_divisor,
                    False,
                )
            )
    return out


# ------------------------------------------------------------------------- building


def make_tokenizer(cfg: TrainConfig) -> BertTokenizer:
    try:
        return BertTokenizer(cfg.multimodal.vocab or None, max_length=cfg.multimodal.max_txt_l)
    except (VocabularyNotFound, ValueError) as e:
        raise ConfigError(f"multimodal.vocab: {e}") from None


def special_tokens(tok: BertTokenizer) -> SpecialTokens:
    try:
        return SpecialTokens(
            pad=tok.pad_id,
            cls=tok.token_id("[CLS]"),
            sep=tok.token_id("[SEP]"),
            mask=tok.token_id("[MASK]"),
            vocab_size=tok.vocab_size,
        )
    except ValueError as e:
        raise ConfigError(f"multimodal.vocab: {e}") from None


def build_mm_model(cfg: TrainConfig, tok: BertTokenizer) -> VideoTextPretrain:
    """The recipe's video-text model with its criterion, and its initial weights."""
    mm = cfg.multimodal
    if cfg.model not in SIZES:
        raise ConfigError(f"model {cfg.model!r}: the vision encoder is one of {', '.join(SIZES)}")
    vision: dict[str, Any] = dict(SIZES[cfg.model])
    vision.update(
        img_size=cfg.input_size,
        num_frames=cfg.num_frames,
        kernel_size=cfg.tubelet_size,
        drop_path_rate=cfg.drop_path,
        clip_output_dim=cfg.pretrain.clip_output_dim,
        clip_return_layer=cfg.pretrain.clip_return_layer,
        clip_student_return_interval=cfg.pretrain.clip_student_return_interval,
    )
    vision.update(cfg.model_args)
    text = dict(mm.text_args)
    text.setdefault("vocab_size", tok.vocab_size)
    crit = Criterion(
        special=special_tokens(tok),
        loss_weight=mm.loss_weight.model_dump(),
        vtm_hard_neg=mm.vtm_hard_neg,
        mlm_masking_prob=mm.mlm_masking_prob,
        mlm_protect_sep=mm.mlm_protect_sep,
        uta_norm_type=mm.uta_norm_type,
        uta_loss_type=mm.uta_loss_type,
        uta_image_only=mm.uta_image_only,
    )
    try:
        model = VideoTextPretrain(
            crit, vision=vision, text=text, embed_dim=mm.embed_dim, temp=mm.temp, scan_backend=scan_backend(cfg)
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"multimodal model: {e}") from None
    load_initial_weights(model, cfg.finetune, mm.vision_pretrained, mm.text_pretrained)
    model.text_encoder.gradient_checkpointing = mm.gradient_checkpointing
    return model


def build_mm_teacher(cfg: TrainConfig):
    """The frozen CLIP teacher of the masked stage (its features not normalised here:
    UTA normalises, as the official criterion)."""
    p, mm = cfg.pretrain, cfg.multimodal
    kw = dict(
        input_resolution=p.clip_input_resolution,
        kernel_size=cfg.tubelet_size,
        clip_norm_type="none",
        return_attn="attention" in (mm.video_mask_type, mm.image_mask_type),
        clip_return_layer=p.clip_return_layer,
        clip_return_interval=p.clip_return_interval,
        clip_return_cls=True,
    )
    return open_teacher(p, kw)


def build_mm_datasets(cfg: TrainConfig) -> dict[str, Dataset]:
    """{"image": ..., "video": ...} from the recipe's corpora (a media type without a
    corpus is absent)."""
    mm = cfg.multimodal
    entries: dict[str, list] = {}
    for corpus in parse_corpora(mm.train_file):
        try:
            entries.setdefault(corpus.media, []).extend(load_anno(corpus))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    tf = PairTransform(cfg.input_size, tuple(mm.crop_scale), cfg.flip)
    return {m: MediaTextDataset(e, m, tf, cfg.num_frames, cfg.decode_short_side) for m, e in sorted(entries.items())}


# --------------------------------------------------------------------------- step


@torch.no_grad()
def mask_and_targets(
    teacher: nn.Module,
    x: torch.Tensor,
    mask_type: str,
    ratio: float,
    patch: int,
    kernel: int,
    amp=None,
    generator: Optional[torch.Generator] = None,
):
    """(mask [B, 1 + T*h*w], teacher targets at the visible places [K, B, 1 + visible, C])."""
    amp = amp or contextlib.nullcontext
    with amp():
        out = teacher(teacher_input(x, teacher.input_resolution))
    feats, attn = out if isinstance(out, tuple) else (out, None)
    B, _, T, H, W = x.shape
    t, h, w = max(1, T // kernel), H // patch, W // patch
    if mask_type == "attention":
        if attn is None or attn.shape != (B * t, h * w):
            raise ConfigError(
                f"attention masking needs the teacher's attention on the student's grid "
                f"[{B * t}, {h * w}]; got {None if attn is None else tuple(attn.shape)} (is the "
                "teacher's patch size the student's?)"
            )
        mask = attention_mask(attn.float(), B, ratio, generator=generator)
    else:
        mask = make_mask(mask_type, B, t, h, w, ratio, generator=generator, device=x.device)
    mask = mask.to(x.device)
    return mask, visible_targets(feats.float(), mask)


def mm_step(
    cfg: TrainConfig, teacher: Optional[nn.Module], tok: BertTokenizer, device: torch.device, amp, record: list
) -> StepFn:
    """The per-batch step: tokenise, (masked stage) mask + targets, the four losses,
    backward. Each micro-batch's losses are appended to `record`."""
    mm = cfg.multimodal
    patch = int(cfg.model_args.get("patch_size", SIZES.get(cfg.model, {}).get("patch_size", 16)))
    both_tube = mm.video_mask_type == "tube" and mm.image_mask_type == "tube"

    def step(model, batch, scale):
        x = batch["x"].to(device, non_blocking=True)
        idx = batch["idx"].to(device, non_blocking=True)
        text = tok(batch["text"], max_length=mm.max_txt_l, padding="max_length", warn=False)
        image = x.shape[2] == 1
        mask = target = None
        if teacher is not None:
            kind, ratio = (
                (mm.image_mask_type, mm.image_mask_ratio) if image else (mm.video_mask_type, mm.video_mask_ratio)
            )
            mask, target = mask_and_targets(teacher, x, kind, ratio, patch, cfg.tubelet_size, amp)
        keep_temporal = mm.keep_temporal and (mask is None or both_tube)
        with amp():
            losses = model(
                x, text.input_ids.to(device), text.attention_mask.to(device), idx, mask, target, keep_temporal
            )
        loss = sum(losses.values())
        check_finite(loss)
        (loss * scale).backward()
        record.append({"media": batch["media"], **{k: float(v.detach()) for k, v in losses.items()}})
        return float(loss.detach()), x.shape[0]

    return step


# ---------------------------------------------------------------------------- fit


def _loaders(cfg: TrainConfig, datasets: dict[str, Dataset], stage: Stage) -> MixedLoader:
    ws, loaders = dist.world_size(), {}
    for media, ds in datasets.items():
        bs = stage.batch_size_image if media == "image" else stage.batch_size
        sampler = DistributedSampler(ds, num_replicas=ws, rank=dist.rank(), shuffle=True, seed=cfg.seed, drop_last=True)
        loaders[media] = DataLoader(
            ds,
            batch_size=bs,
            sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=collate_pairs,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
        )
    return MixedLoader(loaders, seed=cfg.seed)


def _epoch_line(stage: str, epoch: int, loss: float, record: list) -> str:
    parts = [f"epoch {epoch} [{stage}]: loss={loss:.4f}"]
    for name in LOSS_NAMES:
        vals = [r[f"loss_{name}"] for r in record]
        if vals and any(vals):
            parts.append(f"{name}={sum(vals) / len(vals):.4f}")
    return " ".join(parts)


def run_stage(
    cfg: TrainConfig,
    stage: Stage,
    model: nn.Module,
    teacher: Optional[nn.Module],
    datasets: dict[str, Dataset],
    tok: BertTokenizer,
    device: torch.device,
    print_fn=print,
    should_stop: Optional[Callable[[], bool]] = None,
    max_epochs: Optional[int] = None,
    resume: Optional[str] = None,
) -> dict[str, Any]:
    """One stage from `resume` (a checkpoint of this stage) or its own checkpoint
    directory, at most `max_epochs` epochs of it; returns its history and whether it
    stopped before its end."""
    out_dir = os.path.join(cfg.output_dir, stage.name) if cfg.output_dir else ""
    if cfg.multimodal.loss_weight.vtm and min(stage.batch_size, stage.batch_size_image) < 2:
        raise ConfigError(
            f"[{stage.name}] VTM draws its negatives within a GPU's batch: the batch size per GPU must be at least 2"
        )
    ws = dist.world_size()
    total = stage.batch_size * ws * cfg.update_freq
    lr = stage.lr * total / stage.lr_scale_divisor if stage.lr_scale_divisor > 0 else stage.lr
    optimizer, _ = build_optimizer(
        model, lr, cfg.weight_decay, tuple(cfg.opt_betas), cfg.opt_eps, None, layer_decay_mode="official", opt=cfg.opt
    )
    start = 0
    head: list = []  # the stage's first steps' losses, from its checkpoint when resumed
    path = resume or (ckpt.find_resume(out_dir) if (out_dir and cfg.auto_resume) else None)
    if path:
        start, ck = epochs.resume(
            path,
            model=model,
            optimizer=optimizer,
            label=f"[{stage.name}] ",
            load_model=lambda sd: model.load_state_dict(canonical_videotext_keys(sd, keep=("text_encoder.cls.",))[0]),
        )
        head = list(ck.get(RECORD_HEAD_KEY) or [])
        if dist.is_main():
            print_fn(f"[{stage.name}] resumed from {path} at epoch {start}")
    if start >= stage.epochs:
        return {"history": [], "stopped": False, "record": head}
    wrapped = model
    if dist.is_dist():
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    loader = _loaders(cfg, datasets, stage)
    steps = len(loader) // cfg.update_freq
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps < 1:
        sizes = {m: len(d) for m, d in datasets.items()}
        raise ConfigError(
            f"[{stage.name}] {sizes} pairs give no optimizer step of batch {stage.batch_size} x "
            f"{cfg.update_freq} (update_freq) x {ws} ranks"
        )
    lr_values = official_mm_cosine(lr, stage.min_lr_multi, stage.epochs * steps, int(stage.warmup_epochs * steps))
    amp = partial(autocast_context, device, cfg.bf16)
    # A resumed stage's record starts with its first steps (saved with each checkpoint),
    # so `*_first=` figures are the stage's first steps, not the resumed epoch's.
    record: list = list(head)
    step_fn = mm_step(cfg, teacher if stage.masked else None, tok, device, amp, record)
    end = stage.epochs if max_epochs is None else min(stage.epochs, start + max_epochs)
    lines: dict[int, str] = {}

    def one_epoch(epoch: int) -> dict:
        loader.set_epoch(epoch)
        first = len(record)
        stats = train_one_epoch(
            wrapped,
            loader,
            optimizer,
            step_fn,
            epoch=epoch,
            steps_per_epoch=steps,
            start_step=epoch * steps,
            lr_values=lr_values,
            wd_values=None,
            update_freq=cfg.update_freq,
            clip_grad=cfg.clip_grad,
            log_every=cfg.log_every,
        )
        lines[epoch] = _epoch_line(stage.name, epoch, stats.loss, record[first:])
        return {"epoch": epoch, "train_loss": stats.loss, "losses": stats.losses, "lrs": stats.lrs}

    def save(epoch: int, row: dict) -> None:
        # The stage rides in the checkpoint so `resume: PATH` knows which stage it continues.
        epochs.save_epoch(
            out_dir,
            cfg,
            model=model,
            optimizer=optimizer,
            epoch=epoch,
            step=(epoch + 1) * steps,
            extra={"mm_stage": stage.name, RECORD_HEAD_KEY: record[:RECORD_HEAD]},
            model_state=official_pretrain_keys(model.state_dict()),
        )

    history, stopped = epochs.run_epochs(
        start,
        end,
        stage.epochs,
        one_epoch,
        save,
        lambda row: lines[row["epoch"]],
        out_dir=out_dir,
        saving=cfg.save_ckpt,
        should_stop=should_stop,
        print_fn=print_fn,
        label=f"[{stage.name}] ",
    )
    return {"history": history, "stopped": stopped, "record": record}


def resume_stage(path: str, names: list[str]) -> str:
    """Which of this run's stages the checkpoint `path` continues: the stage it was saved
    by (`mm_stage`), or for an older checkpoint the stage directory it lies in."""
    try:
        ck = ckpt.load_checkpoint_file(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"resume: {e}") from None
    name = ck.get("mm_stage") or os.path.basename(os.path.dirname(os.path.abspath(path)))
    if name not in names:
        raise ConfigError(
            f"resume: {path!r} is a checkpoint of stage {name!r}, not of this run's stages "
            f"{names} (multimodal checkpoints lie in OUTPUT_DIR/<stage>/)"
        )
    return name


def multimodal_fit(
    cfg: TrainConfig,
    datasets: Optional[dict[str, Dataset]] = None,
    *,
    model: Optional[VideoTextPretrain] = None,
    teacher: Optional[nn.Module] = None,
    tokenizer: Optional[BertTokenizer] = None,
    print_fn=print,
    should_stop: Optional[Callable[[], bool]] = None,
) -> dict[str, Any]:
    """Both stages (those in ``multimodal.stages``), each resuming from its directory, or
    from the recipe's `resume` for the stage that saved it.
    `datasets`, `model`, `teacher`, `tokenizer` may be given (synthetic runs, tests)."""
    device = recipe_device(cfg)
    dist.init(device.type)
    apply_threads(cfg)
    seed_everything(cfg.seed + dist.rank())
    tok = tokenizer if tokenizer is not None else make_tokenizer(cfg)
    datasets = datasets if datasets is not None else build_mm_datasets(cfg)
    model = (model if model is not None else build_mm_model(cfg, tok)).to(device)
    plan = stages(cfg)
    if teacher is None and any(s.masked for s in plan):
        teacher = build_mm_teacher(cfg)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
    names = [s.name for s in plan]
    # `resume: PATH` continues the stage that saved PATH; the stages before it are done.
    resumed = resume_stage(cfg.resume, names) if cfg.resume else None
    results: dict[str, Any] = {"model": model, "stopped": False}
    budget = cfg.stop_after_epochs  # epochs this invocation may run, over both stages
    for i, stage in enumerate(plan):
        if resumed and i < names.index(resumed):
            results[stage.name] = {"history": [], "stopped": False, "record": []}
            continue
        res = run_stage(
            cfg,
            stage,
            model,
            teacher,
            datasets,
            tok,
            device,
            print_fn,
            should_stop,
            budget,
            resume=cfg.resume if stage.name == resumed else None,
        )
        results[stage.name] = res
        if budget is not None:
            budget -= len(res["history"])
        more = i + 1 < len(plan)
        if res["stopped"] or (more and budget is not None and budget <= 0):
            if not res["stopped"] and dist.is_main():
                print_fn(ckpt.stop_line(f"the {stage.name} stage", cfg.output_dir, cfg.save_ckpt))
            results["stopped"] = True
            break
    if dist.is_dist():
        dist.check_ranks_in_sync(model, print_fn)
    return results
