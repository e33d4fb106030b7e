"""The skeleton every training loop runs in (fine-tuning, masked pretraining, the two
multimodal stages): resume from a checkpoint with each rank's RNG state, the epoch loop
with its progress line and its stop line, and the per-epoch save.

A loop supplies what differs (its epoch: training, evaluation, the row it reports; its
line; what it saves), and this module does the rest the same way for all of them:

    start, ck = resume(path, model=..., optimizer=...)      # or (0, None) for a fresh run
    history, stopped = run_epochs(start, end, total, epoch_fn, save_fn, line_fn, ...)

A run that ends before its last epoch (a stop request, or `stop_after_epochs` used up)
says so with `checkpoint.stop_line`: where its checkpoint is and that the same command
resumes, or that nothing was saved.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

from . import checkpoint as ckpt
from . import distributed as dist

__all__ = ["resume_path", "resume", "save_epoch", "run_epochs"]

log = logging.getLogger("vmstream.training")


def resume_path(cfg, out_dir: str) -> Optional[str]:
    """The checkpoint a run starts from: the recipe's `resume`, else with `auto_resume`
    the latest in `out_dir` (the official order), else None (a fresh run)."""
    return cfg.resume or (ckpt.find_resume(out_dir) if (out_dir and cfg.auto_resume) else None)


def resume(
    path: str, *, model, optimizer, scaler=None, load_model: Optional[Callable[[dict], Any]] = None, label: str = ""
) -> tuple[int, dict]:
    """Restore model, optimizer (and scaler) from `path` and this rank's RNG state (each
    rank's, when the run that saved it had the same number of ranks); returns (the first
    epoch to run, the checkpoint dict). `load_model` replaces `model.load_state_dict` for
    a checkpoint stored in another key layout."""
    ck = ckpt.load_checkpoint_file(path)
    raw = model.module if hasattr(model, "module") else model
    (load_model or raw.load_state_dict)(ck["model"])
    if "optimizer" in ck:
        optimizer.load_state_dict(ck["optimizer"])
    if scaler is not None and scaler.is_enabled() and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    ranks = ck.get("rng_ranks")
    ckpt.set_rng_state(ranks[dist.rank()] if ranks and len(ranks) == dist.world_size() else ck["rng"])
    start = int(ck["epoch"]) + 1
    if dist.is_main():
        log.info("%sresumed from %s at epoch %d", label, path, start)
    return start, ck


def save_epoch(
    out_dir: str,
    cfg,
    *,
    model,
    optimizer,
    epoch: int,
    step: int,
    scaler=None,
    best: Optional[float] = None,
    improved: bool = False,
    extra: Optional[dict] = None,
    model_state: Optional[dict] = None,
) -> None:
    """After an epoch: checkpoint-latest, checkpoint-best when `improved`, and every
    `save_ckpt_freq` epochs checkpoint-EPOCH, each with every rank's RNG state so a
    resumed run repeats this one. Nothing without `out_dir` or with `save_ckpt` off."""
    if not (out_dir and cfg.save_ckpt):
        return
    extra = dict(extra or {})
    if dist.is_dist():
        extra["rng_ranks"] = dist.all_gather_object(ckpt.rng_state())
    if dist.is_main():

        def save(name: str) -> None:
            ckpt.save_checkpoint(
                os.path.join(out_dir, name),
                model=model,
                optimizer=optimizer,
                epoch=epoch,
                step=step,
                config=cfg,
                scaler=scaler,
                best=best,
                extra=extra,
                model_state=model_state,
            )

        save("checkpoint-latest.pth")
        if improved:
            save("checkpoint-best.pth")
        if (epoch + 1) % cfg.save_ckpt_freq == 0:
            save(f"checkpoint-{epoch}.pth")
    dist.barrier()


def run_epochs(
    start: int,
    end: int,
    total: int,
    epoch_fn: Callable[[int], dict],
    save_fn: Callable[[int, dict], None],
    line_fn: Callable[[dict], str],
    *,
    out_dir: str,
    saving: bool,
    should_stop: Optional[Callable[[], bool]] = None,
    print_fn: Callable[[str], Any] = print,
    label: str = "",
) -> tuple[list[dict], bool]:
    """Epochs `start` .. `end - 1` of a run of `total`: each `epoch_fn(epoch)` -> its row,
    printed as `line_fn(row)` (rank 0), then `save_fn(epoch, row)`; saved after the epoch's
    evaluation, so the RNG states are those the next epoch starts from. `should_stop()`
    (asked after the save, single process only) ends the run there. Returns (rows,
    whether the run stopped before its last epoch)."""
    history: list[dict] = []
    for epoch in range(start, end):
        row = epoch_fn(epoch)
        history.append(row)
        if dist.is_main():
            print_fn(line_fn(row))
        save_fn(epoch, row)
        if epoch + 1 >= total:
            break
        asked = should_stop is not None and not dist.is_dist() and should_stop()
        if asked or epoch + 1 == end:
            if dist.is_main():
                print_fn(label + ckpt.stop_line(f"epoch {epoch}", out_dir, saving))
            return history, True
    return history, False
