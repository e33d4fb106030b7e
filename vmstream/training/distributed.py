"""Multi-process training with torchrun: process group, ranks, reductions.

`torchrun --nproc_per_node N -m vmstream.training train ...` sets RANK / WORLD_SIZE /
LOCAL_RANK; `init()` then joins the group (gloo on CPU, nccl on CUDA). Without those
variables everything runs as a single process and the helpers are no-ops.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "cpu", timeout_s: float = 300.0) -> bool:
    """Join the torchrun process group if launched by torchrun; returns whether it did."""
    if is_dist():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Tear the process group down while the interpreter is whole. A DDP model in a
    reference cycle keeps the gloo group (and its worker threads) alive until the
    interpreter's final GC; a worker thread then releasing a tensor needs the GIL during
    finalization and the process aborts ("terminate called without an active
    exception"). Collect first, so the group's last reference goes here and its
    destructor joins the threads."""
    if is_dist():
        import gc

        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    if not is_dist():
        return [obj]
    out: list[Optional[object]] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def check_ranks_in_sync(model: nn.Module, print_fn=print) -> None:
    """Every rank must hold the same weights after training (DDP / reduced gradients);
    a divergence means a broken setup and is an error, not a warning."""
    raw = model.module if hasattr(model, "module") else model
    with torch.no_grad():
        digest = torch.stack([p.double().sum() for p in raw.parameters()]).tolist()
    all_digests = all_gather_object(digest)
    same = all(d == all_digests[0] for d in all_digests)
    if is_main():
        print_fn(f"ranks_in_sync={str(same).lower()} world_size={world_size()}")
    if not same:
        raise RuntimeError("model weights differ between ranks after training")
