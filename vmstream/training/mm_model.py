"""The video-text model with its pretraining losses: the official ``UMT_VIDEOMAMBA.forward``.

`VideoTextPretrain` is `VideoTextMamba` with the MLM head (``text_encoder.cls.*``), so its
state dict is the retrieval model's plus the head, and official pretraining checkpoints
load into it (`videotext_checkpoint.adapt_videotext_state_dict`). Its forward takes a
batch of one media type (an image batch is [B, 3, 1, H, W]) with its tokenised captions,
and, in the masked stage, the mask and the CLIP teacher's targets (computed outside, so
the frozen teacher is no part of the trained module, its optimizer or DDP), and returns
the four weighted losses. A loss whose weight is 0 is not computed (a zero is returned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from torch import Tensor

from vmstream.models.videotext import VideoTextMamba

from .mm_losses import SpecialTokens, clamp_temp_, mlm_loss, uta_loss, vtc_loss, vtm_loss

__all__ = ["Criterion", "VideoTextPretrain", "LOSS_NAMES"]

LOSS_NAMES = ("uta", "vtc", "vtm", "mlm")


@dataclass(frozen=True)
class Criterion:
    """The official ``criterion`` block of the pretraining configs."""

    special: SpecialTokens
    loss_weight: Mapping[str, float] = field(default_factory=lambda: dict(vtc=1.0, mlm=1.0, vtm=1.0, uta=1.0))
    vtm_hard_neg: bool = True
    mlm_masking_prob: float = 0.5
    mlm_protect_sep: bool = False
    uta_norm_type: str = "l2"
    uta_loss_type: str = "l2"
    uta_image_only: bool = False


class VideoTextPretrain(VideoTextMamba):
    def __init__(
        self,
        criterion: Criterion,
        vision: Optional[Mapping[str, Any]] = None,
        text: Optional[Mapping[str, Any]] = None,
        embed_dim: int = 512,
        temp: float = 0.07,
        scan_backend: Optional[str] = None,
    ):
        super().__init__(
            vision=vision, text=text, embed_dim=embed_dim, temp=temp, mlm_head=True, scan_backend=scan_backend
        )
        vocab = self.text_encoder.config.vocab_size
        if criterion.special.vocab_size != vocab:
            raise ValueError(
                f"the tokenizer has {criterion.special.vocab_size} tokens but the text encoder's vocabulary has {vocab}"
            )
        self.criterion = criterion

    def forward(
        self,
        x: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        idx: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        clip_target: Optional[Tensor] = None,
        keep_temporal: bool = True,
    ) -> dict[str, Tensor]:
        """x [B, 3, T, H, W] (T = 1: an image); `mask` [B, 1 + T*N] (True = dropped);
        `clip_target` [K, B, 1 + visible, C] -> {"loss_uta", "loss_vtc", "loss_vtm", "loss_mlm"}."""
        c = self.criterion
        w = c.loss_weight
        clamp_temp_(self.temp)
        use_image = x.shape[2] == 1
        vis = self.vision_encoder.forward_pretrain(x, mask, use_image, keep_temporal)
        text = self.text_encoder(input_ids, attention_mask, mode="text")
        vision_proj = self.vision_proj(vis.pooled)
        text_proj = self.text_proj(text[:, 0])
        zero = vision_proj.new_zeros(())
        losses = {f"loss_{k}": zero for k in LOSS_NAMES}
        if (
            w.get("uta", 0)
            and clip_target is not None
            and vis.clip is not None
            and not (c.uta_image_only and not use_image)
        ):
            losses["loss_uta"] = uta_loss(vis.clip, clip_target, c.uta_norm_type, c.uta_loss_type) * w["uta"]
        if w.get("vtc", 0):
            losses["loss_vtc"] = vtc_loss(vision_proj, text_proj, idx, self.temp) * w["vtc"]
        if w.get("vtm", 0):
            losses["loss_vtm"] = (
                vtm_loss(
                    self.text_encoder,
                    self.itm_head,
                    self.temp,
                    vis.tokens,
                    text,
                    vision_proj,
                    text_proj,
                    attention_mask,
                    idx,
                    c.vtm_hard_neg,
                )
                * w["vtm"]
            )
        if w.get("mlm", 0):
            losses["loss_mlm"] = (
                mlm_loss(
                    self.text_encoder,
                    input_ids,
                    attention_mask,
                    vis.tokens,
                    c.special,
                    c.mlm_masking_prob,
                    c.mlm_protect_sep,
                )
                * w["mlm"]
            )
        return losses
