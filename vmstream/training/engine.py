"""The training engine: epochs of optimizer steps, evaluation, multi-view testing.

One loop serves clip fine-tuning (a batch is a clip per sample) and streaming
fine-tuning (a batch is a long video per sample, see `streaming.py`): the difference is
the `StepFn` that turns a batch into a loss and its gradients. Around it the loop does
what the official ``engine_for_finetuning.py`` does: per-step lr / weight-decay from
the schedule (times each group's layer-decay scale), gradient accumulation
(`update_freq`), clipping, bf16 autocast on CUDA (fp32 on CPU), NaN/inf loss stops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist
from .optim import apply_schedule

log = logging.getLogger(__name__)

# step(model, batch, loss_scale) -> (loss value, number of samples); must call backward.
StepFn = Callable[[nn.Module, dict, float], tuple[float, int]]


class TrainingDiverged(RuntimeError):
    pass


def autocast_context(device: torch.device, bf16: bool = True):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16)
    return contextlib.nullcontext()


def clip_step(
    criterion: nn.Module, mixup=None, device=torch.device("cpu"), amp=None, regression: bool = False
) -> StepFn:
    """Step for clip batches: x [B, 3, T, H, W] -> model(x) -> criterion -> backward."""
    amp = amp or contextlib.nullcontext

    def step(model, batch, scale):
        x = batch["x"].to(device, non_blocking=True)
        y = batch["y"].to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        with amp():
            out = model(x)
            if regression:
                out = out[:, 0]
            loss = criterion(out.float(), y)
        check_finite(loss)
        (loss * scale).backward()
        return float(loss.detach()), x.shape[0]

    return step


def check_finite(loss: torch.Tensor) -> None:
    """Stop every rank (TrainingDiverged) when the loss is NaN/inf on any of them."""
    bad = torch.tensor([0.0 if torch.isfinite(loss).all() else 1.0])
    if float(dist.all_reduce_sum(bad)) > 0:
        raise TrainingDiverged(f"loss is {float(loss)} (NaN/inf on some rank); stopping")


@dataclass
class EpochStats:
    losses: list[float] = field(default_factory=list)  # one per optimizer step (rank mean)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    samples: int = 0
    skipped: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else math.nan


def reduce_grads(model: nn.Module) -> None:
    """Average gradients over ranks by hand (streaming steps, which call the model
    through `forward_segment` and so bypass DDP's hooks)."""
    if not dist.is_dist():
        return
    ws = dist.world_size()
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
            p.grad.div_(ws)


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    *,
    epoch: int,
    steps_per_epoch: int,
    start_step: int,
    lr_values: Optional[np.ndarray] = None,
    wd_values: Optional[np.ndarray] = None,
    update_freq: int = 1,
    clip_grad: Optional[float] = None,
    manual_grad_reduce: bool = False,
    log_every: int = 10,
) -> EpochStats:
    """Run `steps_per_epoch` optimizer steps; returns per-step losses (mean over the
    ranks and accumulated micro-batches)."""
    model.train(True)
    stats = EpochStats()
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    micro_losses: list[float] = []
    step = 0
    for i, batch in enumerate(loader):
        if step >= steps_per_epoch:
            break
        stats.skipped.extend(batch.get("skipped", ()))
        if batch.get("x") is None:
            continue
        if i % update_freq == 0:
            it = start_step + step
            apply_schedule(optimizer, it, lr_values, wd_values)
        last_micro = (i + 1) % update_freq == 0
        sync = contextlib.nullcontext()
        if not last_micro and hasattr(model, "no_sync"):
            sync = model.no_sync()
        with sync:
            loss, n = step_fn(model, batch, 1.0 / update_freq)
        micro_losses.append(loss)
        stats.samples += n
        if not last_micro:
            continue
        if manual_grad_reduce:
            reduce_grads(model)
        params = [p for p in model.parameters() if p.grad is not None]
        if clip_grad is not None and clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        else:
            norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.tensor(0.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = float(dist.all_reduce_sum(torch.tensor([float(np.mean(micro_losses))]))) / dist.world_size()
        micro_losses = []
        stats.losses.append(mean_loss)
        stats.lrs.append(max(g["lr"] for g in optimizer.param_groups))
        stats.grad_norms.append(float(norm))
        if dist.is_main() and log_every and step % log_every == 0:
            log.info(
                "epoch %d step %d/%d loss %.4f lr %.3g grad_norm %.3f",
                epoch,
                step,
                steps_per_epoch,
                mean_loss,
                stats.lrs[-1],
                stats.grad_norms[-1],
            )
        step += 1
    stats.seconds = time.perf_counter() - t0
    return stats


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    maxk = min(max(ks), scores.shape[1])
    pred = scores.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device=torch.device("cpu"),
    amp=None,
    regression: bool = False,
    forward: Optional[Callable] = None,
    multi_view: bool = True,
) -> dict[str, Any]:
    """Top-1 / top-5 (or MSE) over a loader.

    Batches whose ``x`` is [B, V, 3, T, H, W] are multi-view (test) batches: the softmax
    scores of the V views are averaged per video before ranking, as the official
    ``merge`` does; ``num_views`` reports V (`multi_view=False` for streaming batches,
    whose second axis is segments, handled by `forward`). Results are gathered from all ranks and
    de-duplicated by sample index (the distributed sampler pads with repeats).
    """
    amp = amp or contextlib.nullcontext
    model.eval()
    forward = forward or model
    rows: dict[int, tuple] = {}
    skipped = []
    views = 1
    for batch in loader:
        skipped.extend(batch.get("skipped", ()))
        if batch.get("x") is None:
            continue
        x = batch["x"].to(device)
        y = batch["y"]
        multi = multi_view and x.dim() == 6
        b = x.shape[0]
        if multi:
            views = x.shape[1]
            x = x.flatten(0, 1)
        with amp():
            out = forward(x).float().cpu()
        if regression:
            pred = out[:, 0].view(b, views if multi else 1).mean(1)
            for i in range(b):
                rows[int(batch["index"][i])] = (float(pred[i]), float(y[i]))
            continue
        prob = F.softmax(out, dim=-1)
        if multi:
            prob = prob.view(b, views, -1).mean(1)
        loss = F.nll_loss(torch.log(prob.clamp_min(1e-12)), y.long(), reduction="none")
        for i in range(b):
            rows[int(batch["index"][i])] = (prob[i], int(y[i]), float(loss[i]))
    merged: dict[int, tuple] = {}
    for part in dist.all_gather_object(rows):
        merged.update(part)
    n = len(merged)
    result: dict[str, Any] = {"n": n, "num_views": views, "skipped": len(skipped)}
    if n == 0:
        return result
    if regression:
        p = torch.tensor([v[0] for v in merged.values()])
        t = torch.tensor([v[1] for v in merged.values()])
        result["mse"] = float(((p - t) ** 2).mean())
        result["loss"] = result["mse"]
        return result
    probs = torch.stack([v[0] for v in merged.values()])
    targets = torch.tensor([v[1] for v in merged.values()])
    c1, c5 = topk_correct(probs, targets)
    result.update(acc1=100.0 * c1 / n, acc5=100.0 * c5 / n, loss=float(np.mean([v[2] for v in merged.values()])))
    return result
