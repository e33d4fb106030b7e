"""Video-text VideoMamba: the official `UMT_VIDEOMAMBA` (VideoMamba-M + BERT), our own code.

One file, timm style. Names follow OpenGVLab/VideoMamba `videomamba/video_mm/models/
umt_videomamba.py` and its `backbones/videomamba/videomamba.py` (`PretrainVideoMamba`), so
official checkpoints load key for key: `vision_encoder.*` (the VideoMamba blocks of
`videomamba.py` here, its final norm called `norm`, plus `clip_decoder` kept for
pretraining and `pool_norm`), `text_encoder.*` (`bert.py`), `vision_proj`, `text_proj`,
`temp`, `itm_head`.

The official evaluation path, which this module reproduces exactly:
* vision: the final-normed tokens of one clip; the patch tokens (no cls) are the
  cross-attention memory; per frame t the pooled feature is
  `pool_norm(cls + mean of frame t's patch tokens)` ("cls+avg" with keep_temporal);
* text: the [CLS] state after the text-only layers (below `fusion_layer`), no pooler;
* similarity: mean over frames of cos(vision_proj(pooled_t), text_proj(cls)), no temperature;
* ITM: `itm_head` logit 1 on the [CLS] of the fusion layers run on the text states, with
  the video's patch tokens as the cross-attention memory (all attended).

Recurrent mode: `forward_segment` runs the vision encoder on one segment carrying the
forward-scan `StreamState` exactly as the classifier does (`VideoMamba.forward_tokens`);
its `features` are the segment's joint-space embedding, the mean over frames of the
L2-normalised projected per-frame features, so an inner product with a normalised text
feature *is* the official similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .bert import BertConfig, BertModel
from .card import ModelCard
from .state import StreamState
from .videomamba import SegmentOutput, VideoMamba
from .videomamba_pretrain import LinearDecoder, decode_visible, return_layers, sinusoid_table

__all__ = [
    "VideoTextMamba",
    "VisionEncoder",
    "VideoEncoding",
    "TextEncoding",
    "PretrainVision",
    "VISION_DEFAULTS",
    "TEXT_DEFAULTS",
]

# The official VideoMamba-M multimodal configuration (exp_pt/videomamba_middle_*/config.py).
VISION_DEFAULTS: dict[str, Any] = dict(
    img_size=224,
    patch_size=16,
    depth=32,
    embed_dim=576,
    num_frames=8,
    kernel_size=1,
    clip_decoder_embed_dim=576,
    clip_output_dim=512,
    clip_return_layer=1,
)
TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30522,
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    type_vocab_size=2,
    fusion_layer=9,
)


@dataclass
class VideoEncoding:
    tokens: Tensor  # [B, T*N, Dv] final-normed patch tokens, no cls (the ITM memory)
    pooled: Tensor  # [B, T, Dv] pool_norm(cls + per-frame patch mean)
    features: Tensor  # [B, T, E] L2-normalised vision_proj(pooled)


@dataclass
class TextEncoding:
    tokens: Tensor  # [B, L, Dt] states after the text-only layers
    features: Tensor  # [B, E] L2-normalised text_proj([CLS])


@dataclass
class PretrainVision:
    """What the official `PretrainVideoMamba.forward(x, mask, use_image, keep_temporal)` returns."""

    tokens: Tensor  # [B, visible patches, Dv] final-normed, no cls (VTM / MLM memory)
    pooled: Tensor  # [B, T or 1, Dv] pool_norm(cls + patch mean), per frame with keep_temporal
    clip: Optional[Tensor]  # [K, B, 1 + visible, clip_output_dim] decoder outputs (with a mask), else None


class VisionEncoder(VideoMamba):
    """The official `PretrainVideoMamba`: VideoMamba without a classifier head, its final
    norm named `norm`, with `clip_decoder` and the "cls+avg" `pool_norm`."""

    final_norm_name = "norm"

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        depth=32,
        embed_dim=576,
        num_frames=8,
        kernel_size=1,
        channels=3,
        drop_path_rate=0.0,
        ssm_cfg=None,
        norm_epsilon=1e-5,
        rms_norm=True,
        residual_in_fp32=True,
        fused_add_norm=True,
        bimamba=True,
        pool_type="cls+avg",
        clip_decoder_embed_dim: Optional[int] = None,
        clip_output_dim=512,
        clip_return_layer=1,
        clip_student_return_interval=1,
        use_checkpoint=False,
        checkpoint_num=0,
        scan_backend=None,
        precision="fp32",
    ):
        if pool_type != "cls+avg":
            raise ValueError(f"pool_type {pool_type!r}: only the official 'cls+avg' is implemented")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            depth=depth,
            embed_dim=embed_dim,
            channels=channels,
            num_classes=0,
            drop_path_rate=drop_path_rate,
            ssm_cfg=ssm_cfg,
            norm_epsilon=norm_epsilon,
            fused_add_norm=fused_add_norm,
            rms_norm=rms_norm,
            residual_in_fp32=residual_in_fp32,
            bimamba=bimamba,
            kernel_size=kernel_size,
            num_frames=num_frames,
            use_checkpoint=use_checkpoint,
            checkpoint_num=checkpoint_num,
            scan_backend=scan_backend,
            precision=precision,
        )
        self.pool_type = pool_type
        dec_dim = clip_decoder_embed_dim or embed_dim
        self.clip_decoder = nn.ModuleList(
            [
                # video_mm's Linear_Decoder: no L2 normalisation (the student's has it).
                LinearDecoder(output_dim=clip_output_dim, embed_dim=dec_dim, clip_norm_type="none")
                for _ in range(clip_return_layer)
            ]
        )
        self.pool_norm = nn.LayerNorm(embed_dim)
        # Checkpoints saved without the decoder (clip_return_layer 0) distil nothing.
        self.return_index = (
            return_layers(depth, clip_return_layer, clip_student_return_interval, f"a depth-{depth} vision encoder")
            if clip_return_layer
            else []
        )
        # Fixed sinusoidal tables (official plain attributes: not in the state dict).
        n = self.patch_embed.num_patches
        self.register_buffer(
            "clip_pos_embed", sinusoid_table(n * num_frames // kernel_size + 1, dec_dim), persistent=False
        )
        self.register_buffer("clip_img_pos_embed", sinusoid_table(n + 1, dec_dim), persistent=False)

    def encode(self, x: Tensor, state: Optional[StreamState] = None, return_state: bool = False):
        """Clip [B, C, T, H, W] -> all final-normed tokens [B, 1 + T*N, D] (cls first); with
        `return_state`, the forward scan starts from `state` and (tokens, new state) returns."""
        tokens = self.embed(x)
        if not return_state:
            hidden, residual, _ = self._blocks(tokens, None, return_state=False)
            return self._final_norm(hidden, residual)
        return self.forward_tokens(tokens, state)

    def forward_pretrain(
        self, x: Tensor, mask: Optional[Tensor] = None, use_image: bool = False, keep_temporal: bool = False
    ) -> PretrainVision:
        """The official pretraining forward: `mask` [B, 1 + T*N] (True = dropped, cls
        visible) drops tokens before the blocks; the CLIP features are read from the
        residual stream as the masked student does (the final norm of the residual
        entering block r + 1, or for the last layer the un-normed residual entering its
        mixer), plus the fixed positions at the visible places, through `clip_decoder`."""
        tokens = self.embed(x, use_image=use_image)
        B, _, D = tokens.shape
        if mask is not None:
            tokens = tokens[~mask].reshape(B, -1, D)
        out, feats = self.forward_visible(tokens, self.return_index)
        clip = None
        if mask is not None and feats is not None:
            table = self.clip_img_pos_embed if use_image else self.clip_pos_embed
            clip = decode_visible(self.clip_decoder, feats, table, mask)
        cls, patches = out[:, :1], out[:, 1:]
        if keep_temporal:
            T = x.shape[2] // self.kernel_size
            pooled = self.pool_norm(cls + patches.reshape(B, T, -1, D).mean(2))
        else:
            pooled = self.pool_norm(cls + patches.mean(1, keepdim=True))
        return PretrainVision(tokens=patches, pooled=pooled, clip=clip)

    def pool(self, tokens: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
        """(patch tokens [B, T*N, D], per-frame pooled [B, T, D]) from `encode`'s tokens."""
        cls, patches = tokens[:, :1], tokens[:, 1:]
        B, M, D = patches.shape
        per_frame = patches.reshape(B, num_frames, M // num_frames, D).mean(2)
        return patches, self.pool_norm(cls + per_frame)


class VideoTextMamba(nn.Module):
    """The official UMT_VIDEOMAMBA for retrieval: video and text in one `embed_dim` space.
    `scan_backend` and `precision` are the vision encoder's (`VideoMamba`'s)."""

    # What `forward_segment`'s features are: joint-space embeddings, compared by inner product.
    embedding_space = "video-text"

    def __init__(
        self,
        vision: Optional[Mapping[str, Any]] = None,
        text: Optional[Mapping[str, Any]] = None,
        embed_dim: int = 512,
        temp: float = 0.07,
        *,
        mlm_head: bool = False,
        scan_backend: Optional[str] = None,
        precision: str = "fp32",
    ):
        super().__init__()
        vcfg = dict(VISION_DEFAULTS, **(vision or {}))
        if "clip_decoder_embed_dim" not in (vision or {}):
            vcfg["clip_decoder_embed_dim"] = vcfg["embed_dim"]
        tcfg = dict(TEXT_DEFAULTS, **(text or {}))
        # The vision tower's scan backend and matmul precision (the text tower is BERT,
        # plain fp32 PyTorch); how it runs, not what it is, so not in `config`.
        self.vision_encoder = VisionEncoder(**vcfg, scan_backend=scan_backend, precision=precision)
        tcfg.setdefault("encoder_width", self.vision_encoder.embed_dim)
        # mlm_head: the pretraining model's `text_encoder.cls.*` (BertForMaskedLM's head)
        self.text_encoder = BertModel(BertConfig(**tcfg), mlm_head=mlm_head)
        self.vision_width = self.vision_encoder.embed_dim
        self.text_width = self.text_encoder.config.hidden_size
        self.embed_dim = embed_dim
        self.vision_proj = nn.Linear(self.vision_width, embed_dim)
        self.text_proj = nn.Linear(self.text_width, embed_dim)
        self.temp = nn.Parameter(torch.ones([]) * temp)
        self.itm_head = nn.Linear(self.text_width, 2)
        self.config = {"vision": vcfg, "text": tcfg, "embed_dim": embed_dim, "mlm_head": mlm_head}
        # Open-vocabulary labels: unit prompt features [K, E] (set_label_prompts).
        self.register_buffer("label_features", torch.empty(0, embed_dim), persistent=False)
        ve = self.vision_encoder
        self._card = ModelCard(
            num_frames=ve.num_frames,
            img_size=ve.img_size,
            patch_size=ve.patch_embed.patch_size[0],
            embed_dim=embed_dim,
            depth=len(ve.layers),
            num_classes=0,
            in_chans=ve.patch_embed.proj.in_channels,
            architecture="videomamba_videotext",
            interpolation="bicubic",
            crop="direct",
        )

    # ------------------------------------------------------------------ card
    @property
    def card(self) -> ModelCard:
        return self._card

    @card.setter
    def card(self, card: ModelCard) -> None:
        # The vision encoder tags and checks stream states with the checkpoint digest.
        self._card = card
        self.vision_encoder.card = self.vision_encoder.card.replace(
            checkpoint=card.checkpoint, checkpoint_digest=card.checkpoint_digest
        )

    @property
    def num_frames(self) -> int:
        return self.vision_encoder.num_frames

    @property
    def max_text_len(self) -> int:
        return self.text_encoder.config.max_position_embeddings

    # --------------------------------------------------------------- encoders
    def encode_video(self, x: Tensor) -> VideoEncoding:
        """x [B, 3, T, H, W] -> tokens [B, T*N, Dv], pooled [B, T, Dv], features [B, T, E]."""
        tokens = self.vision_encoder.encode(x)
        return self._video_encoding(tokens, x.shape[2])

    def _video_encoding(self, tokens: Tensor, num_frames: int) -> VideoEncoding:
        T = num_frames // self.vision_encoder.kernel_size
        patches, pooled = self.vision_encoder.pool(tokens, T)
        return VideoEncoding(tokens=patches, pooled=pooled, features=F.normalize(self.vision_proj(pooled), dim=-1))

    def encode_text(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> TextEncoding:
        """input_ids/attention_mask [B, L] -> tokens [B, L, Dt], features [B, E]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokens = self.text_encoder(input_ids, attention_mask, mode="text")
        return TextEncoding(tokens=tokens, features=F.normalize(self.text_proj(tokens[:, 0]), dim=-1))

    # ----------------------------------------------------------------- scores
    @staticmethod
    def similarity(video_features: Tensor, text_features: Tensor) -> Tensor:
        """[Bv, Bt]: mean over frames of the cosine (the official `get_sim`, no temperature).
        `video_features` is [Bv, T, E] per frame, or [Bv, E] segment embeddings (already
        the frame mean of normalised features, so a plain inner product)."""
        t = F.normalize(text_features.float(), dim=-1)
        v = video_features.float()
        if v.dim() == 3:
            return torch.einsum("vte,be->vtb", F.normalize(v, dim=-1), t).mean(1)
        return v @ t.T

    def itm_scores(
        self,
        video_tokens: Tensor,
        input_ids: Optional[Tensor],
        attention_mask: Optional[Tensor] = None,
        *,
        text_tokens: Optional[Tensor] = None,
        chunk: int = 32,
    ) -> Tensor:
        """[Bv, Bt]: `itm_head` logit 1 on the fusion [CLS] for every (video, text) pair,
        `chunk` pairs per forward. `text_tokens` (from `encode_text`) skips re-encoding
        the text (then `input_ids` may be None; `attention_mask` is still the text's)."""
        if attention_mask is None:
            if input_ids is None:
                raise ValueError("itm_scores needs input_ids or an attention_mask with text_tokens")
            attention_mask = torch.ones_like(input_ids)
        if text_tokens is None:
            text_tokens = self.encode_text(input_ids, attention_mask).tokens
        Bv, Bt = video_tokens.shape[0], text_tokens.shape[0]
        pairs_v = torch.arange(Bv, device=video_tokens.device).repeat_interleave(Bt)
        pairs_t = torch.arange(Bt, device=text_tokens.device).repeat(Bv)
        scores = []
        for s in range(0, Bv * Bt, chunk):
            v, t = pairs_v[s : s + chunk], pairs_t[s : s + chunk]
            fused = self.text_encoder(
                attention_mask=attention_mask[t],
                mode="fusion",
                encoder_embeds=text_tokens[t],
                encoder_hidden_states=video_tokens[v],
            )
            scores.append(self.itm_head(fused[:, 0])[:, 1])
        return torch.cat(scores).float().view(Bv, Bt)

    # --------------------------------------------------------- recurrent mode
    def state_spec(self) -> dict:
        return self.vision_encoder.state_spec()

    def init_state(self, batch_size: int, device=None) -> StreamState:
        return self.vision_encoder.init_state(batch_size, device=device)

    def encode_segment(self, clip: Tensor, state: Optional[StreamState] = None) -> tuple[VideoEncoding, StreamState]:
        """One segment [B, C, T, H, W] of B streams from their carried state: the segment's
        encoding (as `encode_video` of a clip) and the next state."""
        normed, new_state = self.vision_encoder.encode(clip, state, return_state=True)  # checks the state
        return self._video_encoding(normed, clip.shape[2]), new_state

    def set_label_prompts(self, features: Tensor, names) -> None:
        """Give segments open-vocabulary labels: `features` [K, E] are the prompts' unit
        text features, `names` their labels. `forward_segment`'s logits become
        similarity / temp (softmax of them: the official zero-shot scores)."""
        names = tuple(names)
        if features.dim() != 2 or features.shape[1] != self.embed_dim or features.shape[0] != len(names):
            raise ValueError(
                f"label prompts: features {tuple(features.shape)} for {len(names)} names; "
                f"expected [{len(names)}, {self.embed_dim}]"
            )
        self.label_features = F.normalize(features.float(), dim=-1).to(self.temp.device)
        self.card = self.card.replace(num_classes=len(names), class_names=names)

    def forward_segment(self, clip: Tensor, state: Optional[StreamState] = None) -> SegmentOutput:
        """features = the joint-space embedding [B, E] (mean over frames of the normalised
        per-frame features); logits = similarity / temp to the label prompts when set,
        else [B, 0] (no classifier head: segments get no labels)."""
        enc, new_state = self.encode_segment(clip, state)
        emb = segment_embedding(enc.features)
        logits = emb.new_zeros(emb.shape[0], 0)  # no labels: nothing to rank
        if self.label_features.numel():
            logits = (emb.float() @ self.label_features.T) / self.temp.float()
        return SegmentOutput(features=emb, logits=logits, state=new_state)

    def forward(self, x: Tensor) -> Tensor:
        """The clip's joint-space embedding [B, E]."""
        return segment_embedding(self.encode_video(x).features)


def segment_embedding(frame_features: Tensor) -> Tensor:
    """[B, T, E] normalised per-frame features -> [B, E] their mean (not re-normalised:
    its inner product with a unit text feature is the mean per-frame cosine)."""
    return frame_features.mean(1)
