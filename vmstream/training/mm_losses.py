"""The four losses of multimodal pretraining, as the official criterions
(``videomamba/video_mm/models/criterions.py``: ``UTA_Loss``, ``VTC_VTM_Loss``, ``MLMLoss``).

* VTC: video-text contrastive. Similarities of the L2-normalised projections divided by
  the learnable ``temp`` (clamped to [0.001, 0.5] before every forward); per-frame
  vision features [B, T, E] are averaged over frames after the division (``get_sim``).
  Targets: the pairs with the same ``idx`` (the same annotation entry), each row
  normalised to sum 1; loss = (CE(v->t) + CE(t->v)) / 2 over the batch gathered from all
  ranks (the gather passes gradients back to the local slice only, as the official one).
* VTM: video-text matching on the fusion layers. For each text a negative video, for
  each video a negative text, drawn with probability softmax(sim + 1e-4) over the batch
  with the positives (same ``idx``) at weight 0 (``vtm_hard_neg``; else uniformly among
  the non-positives); ``itm_head`` on the fusion [CLS] of (v, t), (v_neg, t), (v, t_neg)
  with labels 1, 0, 0, one cross-entropy over the 3B pairs.
* MLM: each token masked with probability ``mlm_masking_prob`` (0.5), never [PAD] or
  [CLS] (the official rule; [SEP] may be masked there, `protect_sep` keeps it too); of the
  masked, 80 % become [MASK], half the rest a random id from the whole vocabulary, the
  rest stay; text layers on the corrupted ids, fusion layers over the video tokens, the
  MLM head; cross-entropy on the masked places.
* UTA: the student's decoded visible tokens against the CLIP teacher's at the same places;
  both L2-normalised (``uta_norm_type='l2'``), then 2 - 2cos (``uta_loss_type='l2'``), MSE
  or smooth L1 (`distill_loss.distill_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distill_loss import distill_loss

__all__ = [
    "TEMP_MIN",
    "TEMP_MAX",
    "clamp_temp_",
    "gather_with_grad",
    "get_sim",
    "match_mask",
    "vtc_loss",
    "negative_weights",
    "draw_negatives",
    "vtm_loss",
    "SpecialTokens",
    "mask_tokens",
    "mlm_loss",
    "uta_loss",
]

TEMP_MIN, TEMP_MAX = 0.001, 0.5  # the official clip_contrastive_temperature bounds


@torch.no_grad()
def clamp_temp_(temp: Tensor) -> Tensor:
    return temp.clamp_(TEMP_MIN, TEMP_MAX)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the gradient (the official
    `AllGather`: no reduction, each rank's loss covers its own samples' gradients)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ws, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        parts = [torch.empty_like(t) for _ in range(ws)]
        torch.distributed.all_gather(parts, t.contiguous())
        ctx.rank, ctx.n = rank, t.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad[ctx.n * ctx.rank : ctx.n * (ctx.rank + 1)]


def gather_with_grad(t: Tensor) -> Tensor:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return t
    return _GatherWithGrad.apply(t)


def get_sim(vision_proj: Tensor, text_proj: Tensor, temp=1.0) -> tuple[Tensor, Tensor]:
    """(sim_v2t [Bv, Bt], sim_t2v [Bt, Bv]) of normalised projections / temp; a vision
    input [Bv, T, E] gives the mean over frames of the per-frame similarities."""
    v = F.normalize(vision_proj, dim=-1).float()
    t = F.normalize(text_proj, dim=-1).float()
    if v.dim() == 3:
        sim_v2t = torch.einsum("mld,nd->mln", v, t).div(temp).mean(1)
        sim_t2v = torch.einsum("nd,mld->nlm", t, v).div(temp).mean(1)
        return sim_v2t, sim_t2v
    sim_v2t = v @ t.T / temp
    return sim_v2t, sim_v2t.T


def match_mask(idx: Optional[Tensor], n: int, device=None) -> Tensor:
    """[n, n] float, 1 where two samples share an annotation index (the diagonal if none)."""
    if idx is None:
        return torch.eye(n, device=device)
    idx = idx.view(-1, 1)
    return torch.eq(idx, idx.T).float()


def vtc_loss(vision_proj: Tensor, text_proj: Tensor, idx: Optional[Tensor], temp, all_gather: bool = True) -> Tensor:
    if all_gather:
        vision_proj, text_proj = gather_with_grad(vision_proj), gather_with_grad(text_proj)
        idx = gather_with_grad(idx) if idx is not None else None
    sim_v2t, sim_t2v = get_sim(vision_proj, text_proj, temp)
    with torch.no_grad():
        targets = match_mask(idx, sim_v2t.shape[0], sim_v2t.device)
        targets = targets / targets.sum(1, keepdim=True)
    loss_v2t = -(F.log_softmax(sim_v2t, dim=1) * targets).sum(1).mean()
    loss_t2v = -(F.log_softmax(sim_t2v, dim=1) * targets).sum(1).mean()
    return (loss_v2t + loss_t2v) / 2


@torch.no_grad()
def negative_weights(sim_v2t: Tensor, sim_t2v: Tensor, idx: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(weights_v2t, weights_t2v, positives): softmax(sim + 1e-4) with the positives at 0."""
    positives = match_mask(idx, sim_v2t.shape[0], sim_v2t.device).bool()
    w_v2t = F.softmax(sim_v2t + 1e-4, dim=1).masked_fill_(positives, 0)
    w_t2v = F.softmax(sim_t2v + 1e-4, dim=1).masked_fill_(positives, 0)
    w_v2t = torch.nan_to_num_(w_v2t, nan=1e-2, posinf=1e-2, neginf=1e-2)
    w_t2v = torch.nan_to_num_(w_t2v, nan=1e-2, posinf=1e-2, neginf=1e-2)
    return w_v2t, w_t2v, positives


def draw_negatives(
    weights: Tensor, positives: Tensor, hard: bool = True, generator: Optional[torch.Generator] = None
) -> Tensor:
    """One negative column per row: drawn with `weights` (hard), or uniformly among the
    non-positive columns (the official `get_rand_indices`)."""
    if (~positives).sum(1).min() == 0:
        raise ValueError(
            "VTM needs a negative for every sample, but some batch has only pairs of one "
            "annotation entry (all idx equal); use a larger batch"
        )
    if hard:
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)
    noise = torch.randn(positives.shape, generator=generator, device=positives.device)
    return (noise - 10000 * positives.float()).argmax(1)


def vtm_loss(
    text_encoder: nn.Module,
    itm_head: nn.Module,
    temp,
    vision_embeds: Tensor,
    text_embeds: Tensor,
    vision_proj: Tensor,
    text_proj: Tensor,
    text_atts: Tensor,
    idx: Optional[Tensor],
    hard_neg: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Matching loss on this rank's batch (no gather, as the official)."""
    with torch.no_grad():
        sim_v2t, sim_t2v = get_sim(vision_proj, text_proj, temp)
        w_v2t, w_t2v, positives = negative_weights(sim_v2t, sim_t2v, idx)
    vision_neg = draw_negatives(w_t2v, positives, hard_neg, generator)  # a video for each text
    text_neg = draw_negatives(w_v2t, positives, hard_neg, generator)  # a text for each video
    v_all = torch.cat([vision_embeds, vision_embeds[vision_neg], vision_embeds], 0)
    t_all = torch.cat([text_embeds, text_embeds, text_embeds[text_neg]], 0)
    atts_all = torch.cat([text_atts, text_atts, text_atts[text_neg]], 0)
    v_atts = torch.ones(v_all.shape[:-1], dtype=torch.long, device=v_all.device)
    fused = text_encoder(
        attention_mask=atts_all,
        mode="fusion",
        encoder_embeds=t_all,
        encoder_hidden_states=v_all,
        encoder_attention_mask=v_atts,
    )
    logits = itm_head(fused[:, 0])
    B = vision_embeds.shape[0]
    labels = torch.zeros(3 * B, dtype=torch.long, device=logits.device)
    labels[:B] = 1
    return F.cross_entropy(logits.float(), labels)


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    cls: int
    sep: int
    mask: int
    vocab_size: int


def mask_tokens(
    input_ids: Tensor,
    special: SpecialTokens,
    prob: float = 0.5,
    protect_sep: bool = False,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """(corrupted ids, labels with -100 off the masked places): the official MLM rule."""
    ids = input_ids.clone()
    labels = input_ids.clone()
    dev = ids.device

    def coin(p: float) -> Tensor:
        return torch.rand(ids.shape, generator=generator, device=dev) < p

    masked = coin(prob)
    masked &= (ids != special.pad) & (ids != special.cls)
    if protect_sep:
        masked &= ids != special.sep
    labels[~masked] = -100
    replaced = coin(0.8) & masked
    ids[replaced] = special.mask
    randomised = coin(0.5) & masked & ~replaced
    words = torch.randint(special.vocab_size, ids.shape, generator=generator, device=dev)
    ids[randomised] = words[randomised]
    return ids, labels


def mlm_loss(
    text_encoder: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    vision_embeds: Tensor,
    special: SpecialTokens,
    prob: float = 0.5,
    protect_sep: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    ids, labels = mask_tokens(input_ids, special, prob, protect_sep, generator)
    text = text_encoder(ids, attention_mask, mode="text")
    fused = text_encoder(
        attention_mask=attention_mask, mode="fusion", encoder_embeds=text, encoder_hidden_states=vision_embeds
    )
    logits = text_encoder.mlm_logits(fused)
    if (labels != -100).sum() == 0:  # nothing masked (tiny batches): no signal, no NaN
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)


def uta_loss(student: Tensor, teacher: Tensor, norm_type: str = "l2", loss_type: str = "l2") -> Tensor:
    """[K, B, N, C] student decoder outputs vs the teacher's at the same places."""
    if norm_type == "l2":
        student = student / student.norm(dim=-1, keepdim=True)
        teacher = teacher / teacher.norm(dim=-1, keepdim=True)
    elif norm_type != "none":
        raise ValueError(f"uta_norm_type {norm_type!r} is not 'l2' or 'none'")
    return distill_loss(student.float(), teacher.float(), loss_type)
