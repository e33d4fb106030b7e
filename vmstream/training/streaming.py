"""Streaming fine-tuning: train VideoMamba's recurrent mode itself.

A batch holds B long videos cut into S consecutive segments, ``x`` [B, S, 3, T, H, W].
The model runs segment by segment with ``model.forward_segment(clip, state)``, the
state carried from one segment to the next (or reset to zeros at every segment when
``carry_state`` is false: the control that cannot remember).

Truncated backpropagation through time over the last K segments (``tbptt_k``; 0 = all
S, full BPTT; 1 = the state is detached between segments):

* ``loss="last"``: one label per video, the loss on the last segment's logits. The
  first S - K segments run without a graph (they only advance the state); gradients
  flow through the last K segments and, through the carried state, into how those
  segments were processed.
* ``loss="dense"``: a label per segment ``y`` [B, S]; segments are processed in windows
  of K, each window's summed loss is backpropagated at the window's end and the state
  detached there (the classic TBPTT(K, K) schedule).

Gradients through the carried state need the scan to be differentiable with respect
to its initial state, which the reference scan is (autograd) and the fast CPU kernel's
backward provides.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .engine import StepFn, check_finite


def _raw(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def run_segments(
    model: nn.Module,
    x: Tensor,
    carry_state: bool = True,
    grad_from: int = 0,
    detach_every: Optional[int] = None,
    on_segment: Optional[Callable] = None,
):
    """Run the S segments of ``x`` [B, S, 3, T, H, W]; returns the list of logits.

    Segments before `grad_from` run under no_grad. `detach_every` K cuts the graph every
    K segments (the state is detached after segments K-1, 2K-1, ...). `on_segment(s,
    logits)` is called after each segment (dense losses backpropagate there).
    """
    m = _raw(model)
    b, s_total = x.shape[:2]
    state = m.init_state(b)
    state = state.to(x.device) if hasattr(state, "to") else state
    logits = []
    for s in range(s_total):
        start = state if carry_state else m.init_state(b).to(x.device)
        ctx = torch.no_grad() if s < grad_from else contextlib.nullcontext()
        with ctx:
            out = m.forward_segment(x[:, s], start)
        state = out.state
        logits.append(out.logits)
        if on_segment is not None:
            on_segment(s, out.logits)
        if detach_every and (s + 1) % detach_every == 0:
            state = state.detach()
    return logits


def streaming_step(
    criterion: nn.Module = None,
    tbptt_k: int = 0,
    loss: str = "last",
    carry_state: bool = True,
    device=torch.device("cpu"),
    amp=None,
) -> StepFn:
    """The `StepFn` for streaming batches ({"x": [B, S, 3, T, H, W], "y": [B] or [B, S]})."""
    criterion = criterion or nn.CrossEntropyLoss()
    amp = amp or contextlib.nullcontext
    if loss not in ("last", "dense"):
        raise ValueError(f"streaming loss {loss!r}: expected 'last' or 'dense'")

    def step(model, batch, scale):
        x = batch["x"].to(device, non_blocking=True)
        y = batch["y"].to(device, non_blocking=True)
        s_total = x.shape[1]
        k = s_total if tbptt_k in (0, None) or tbptt_k > s_total else tbptt_k
        if loss == "last":
            with amp():
                logits = run_segments(model, x, carry_state, grad_from=s_total - k)
                l = criterion(logits[-1].float(), y if y.dim() == 1 else y[:, -1])
            check_finite(l)
            (l * scale).backward()
            return float(l.detach()), x.shape[0]
        if y.dim() == 1:  # one label per video: every segment is asked for it
            y = y[:, None].expand(-1, s_total)
        if y.dim() != 2 or y.shape[1] != s_total:
            raise ValueError(f"dense streaming loss needs labels [B, S={s_total}], got {tuple(y.shape)}")
        window: list[Tensor] = []
        total = [0.0]

        def on_segment(s, logit):
            window.append(criterion(logit.float(), y[:, s]))
            if (s + 1) % k == 0 or s + 1 == s_total:
                wl = torch.stack(window).sum() / s_total
                check_finite(wl)
                (wl * scale).backward()
                total[0] += float(wl.detach())
                window.clear()

        with amp():
            run_segments(model, x, carry_state, detach_every=k, on_segment=on_segment)
        return total[0], x.shape[0]

    return step


@torch.no_grad()
def streaming_predict(model: nn.Module, x: Tensor, carry_state: bool = True, mode: str = "last") -> Tensor:
    """Video-level logits of ``x`` [B, S, 3, T, H, W]: the last segment's ("last", which
    has seen the whole video through the state) or the mean over segments ("mean")."""
    logits = run_segments(model, x, carry_state)
    if mode == "last":
        return logits[-1]
    if mode == "mean":
        return torch.stack(logits).mean(0)
    raise ValueError(f"mode {mode!r}: expected 'last' or 'mean'")


@torch.no_grad()
def streaming_accuracy(
    model: nn.Module, loader, carry_state: bool = True, mode: str = "last", device=torch.device("cpu")
) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        x = batch["x"].to(device)
        y = batch["y"].to(device)
        y = y if y.dim() == 1 else y[:, -1]
        pred = streaming_predict(model, x, carry_state, mode).argmax(-1)
        correct += int((pred == y).sum())
        total += int(y.numel())
    from . import distributed as dist

    t = dist.all_reduce_sum(torch.tensor([correct, total], dtype=torch.float64))
    return float(t[0] / max(t[1], 1))
