"""BERT with cross-attention from `fusion_layer` on: the text encoder of the video-text models.

One file, nanoGPT style. Parameter names follow the official `xbert.py` of
OpenGVLab/VideoMamba (`videomamba/video_mm/models/backbones/bert/`), itself the Hugging Face
BERT with ALBEF's fusion layers, so official checkpoints load key for key:
`embeddings.{word,position,token_type}_embeddings`, `embeddings.LayerNorm`,
`encoder.layer.N.attention.{self.{query,key,value},output.{dense,LayerNorm}}`,
`encoder.layer.N.crossattention.*` (only for N >= fusion_layer; its key/value read the
vision width), `encoder.layer.N.{intermediate.dense,output.{dense,LayerNorm}}`.
Built on torch alone: the official code subclasses `transformers` internals of one pinned
version, which have since moved.

Semantics (the official ones):
* post-norm layers: `LayerNorm(x + dropout(dense(attn)))`, GELU (erf) feed-forward;
* the padding mask is added to the attention scores as `(1 - mask) * -10000`;
* `mode="text"` runs layers [0, fusion_layer) (the text-only encoder: its [CLS] state is
  the text feature), `mode="fusion"` runs [fusion_layer, num_layers) on given text states
  (`encoder_embeds`) with cross-attention over `encoder_hidden_states`, `"multi_modal"` all;
* no pooler (the video-text models use the [CLS] state directly);
* with `mlm_head=True`, the masked-language-model head of the official pretraining model
  (`BertForMaskedLM.cls`): `cls.predictions.transform.{dense,LayerNorm}`,
  `cls.predictions.decoder` (its weight tied to the word embeddings, as Hugging Face ties
  them) and `cls.predictions.bias`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

__all__ = [
    "BertConfig",
    "BertModel",
    "BertEmbeddings",
    "BertLayer",
    "BertAttention",
    "BertSelfAttention",
    "BertOnlyMLMHead",
    "MODES",
]

MODES = ("text", "fusion", "multi_modal")
# The official mask value (xbert's get_extended_attention_mask); -inf would change nothing
# after softmax in fp32 but would turn fully padded rows into NaN.
_MASKED = -10000.0


@dataclass(frozen=True)
class BertConfig:
    """The architecture. Defaults are bert-base with the official fusion at layer 9;
    `encoder_width` is the width of the cross-attention memory (the vision encoder's)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    fusion_layer: int = 9
    encoder_width: int = 768
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BertConfig: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if not 0 <= self.fusion_layer <= self.num_layers:
            raise ValueError(f"BertConfig: fusion_layer {self.fusion_layer} is outside 0..{self.num_layers}")


class BertEmbeddings(nn.Module):
    """word + token type + absolute position, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        L = input_ids.shape[1]
        if L > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"text has {L} tokens but the model has {self.position_embeddings.num_embeddings} positions"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(L, device=input_ids.device)[None]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention; keys/values from `memory` when given."""

    def __init__(self, cfg: BertConfig, is_cross_attention: bool):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        kv_width = cfg.encoder_width if is_cross_attention else cfg.hidden_size
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def _heads(self, x: Tensor) -> Tensor:  # [B, L, H*d] -> [B, H, L, d]
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, mask_bias: Optional[Tensor] = None, memory: Optional[Tensor] = None) -> Tensor:
        src = x if memory is None else memory
        q, k, v = self._heads(self.query(x)), self._heads(self.key(src)), self._heads(self.value(src))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask_bias, dropout_p=self.dropout_p if self.training else 0.0
        )
        return out.transpose(1, 2).reshape(x.shape)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig, is_cross_attention: bool = False):
        super().__init__()
        self.self = BertSelfAttention(cfg, is_cross_attention)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: Tensor, mask_bias: Optional[Tensor] = None, memory: Optional[Tensor] = None) -> Tensor:
        return self.output(self.self(x, mask_bias, memory), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertLayer(nn.Module):
    """Self-attention, then (from fusion_layer on) cross-attention over the memory, then the FFN."""

    def __init__(self, cfg: BertConfig, layer_num: int):
        super().__init__()
        self.layer_num = layer_num
        self.attention = BertAttention(cfg)
        self.has_cross_attention = layer_num >= cfg.fusion_layer
        if self.has_cross_attention:
            self.crossattention = BertAttention(cfg, is_cross_attention=True)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(
        self,
        x: Tensor,
        mask_bias: Optional[Tensor] = None,
        memory: Optional[Tensor] = None,
        memory_bias: Optional[Tensor] = None,
    ) -> Tensor:
        x = self.attention(x, mask_bias)
        if self.has_cross_attention:
            if memory is None:
                raise ValueError(
                    f"BERT layer {self.layer_num} has cross-attention and needs the video tokens "
                    "(encoder_hidden_states)"
                )
            x = self.crossattention(x, memory_bias, memory)
        return self.output(self.intermediate(x), x)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """transform, then the vocabulary projection; `decoder.bias` is `bias` (one tensor
    under both names, as the official head registers it)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictions(x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg, i) for i in range(cfg.num_layers)])


def mask_bias(mask: Optional[Tensor], dtype: torch.dtype, masked: Optional[float] = None) -> Optional[Tensor]:
    """[B, L] 1 = attend / 0 = padding -> the additive bias [B, 1, 1, L] (official -10000)."""
    if mask is None:
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * (_MASKED if masked is None else masked)


class BertModel(nn.Module):
    """The official `BertModel(add_pooling_layer=False)` with modes text / fusion / multi_modal."""

    def __init__(self, cfg: BertConfig, mlm_head: bool = False):
        super().__init__()
        self.config = cfg
        # recompute each layer in backward while training (the official gradient_checkpointing)
        self.gradient_checkpointing = False
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        if mlm_head:
            self.cls = BertOnlyMLMHead(cfg)
        self.apply(self._init_weights)
        if mlm_head:
            nn.init.zeros_(self.cls.predictions.bias)
            self.cls.predictions.decoder.weight = self.embeddings.word_embeddings.weight

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """[B, L, hidden] -> vocabulary logits [B, L, vocab] (needs `mlm_head=True`)."""
        if not hasattr(self, "cls"):
            raise ValueError("this BERT has no masked-language-model head (build it with mlm_head=True)")
        return self.cls(hidden)

    def _init_weights(self, m: nn.Module) -> None:
        # The official BertPreTrainedModel init: normal(0.02) weights, zero biases, LN 1/0.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        *,
        mode: str = "text",
        encoder_embeds: Optional[Tensor] = None,
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
    ) -> Tensor:
        """Last hidden states [B, L, hidden]. `encoder_embeds` replaces the embedding of
        `input_ids` (the fusion mode's input: the text-mode states)."""
        if mode not in MODES:
            raise ValueError(f"BERT mode must be one of {MODES}, got {mode!r}")
        if encoder_embeds is not None:
            x = encoder_embeds
        elif input_ids is not None:
            x = self.embeddings(input_ids, token_type_ids)
        else:
            raise ValueError("BertModel needs input_ids or encoder_embeds")
        n, fusion = self.config.num_layers, self.config.fusion_layer
        start, stop = {"text": (0, fusion), "fusion": (fusion, n), "multi_modal": (0, n)}[mode]
        bias = mask_bias(attention_mask, x.dtype)
        # The memory's mask goes through transformers' invert_attention_mask (dtype min), not -10000.
        mem_bias = mask_bias(encoder_attention_mask, x.dtype, torch.finfo(x.dtype).min)
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.to(x.dtype)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.encoder.layer[start:stop]:
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, bias, encoder_hidden_states, mem_bias, use_reentrant=False
                )
            else:
                x = layer(x, bias, encoder_hidden_states, mem_bias)
        return x
