"""Loading the official video-text (UMT_VIDEOMAMBA) checkpoints into VideoTextMamba.

Layouts: the official training save (`model`, `optimizer`, `scheduler`, `config` as the
official `EasyDict`, ...; read safely by `checkpoint.read_checkpoint`, the config's classes
as inert data) or a bare state dict. Key names: the pretraining model's
(`text_encoder.bert.*` for the BERT of `BertForMaskedLM`, its MLM head
`text_encoder.cls.*`, the CLIP teacher `clip_teacher.*`) or the retrieval model's
(`text_encoder.*`). What a retrieval model does not use (`clip_teacher.*`,
`text_encoder.cls.*`, `text_encoder.embeddings.position_ids`, a BERT pooler) is reported
in the notes; anything missing or mis-shaped is an error listing the keys.

`infer_videotext_config` reads the architecture from the shapes: vision depth, width,
frames, image size, patch, clip decoder; text width, layers, vocabulary, positions,
token types, feed-forward width, `fusion_layer` = the first layer with cross-attention,
heads = width / 64 unless given; the joint `embed_dim` from `vision_proj`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from torch import Tensor

from .checkpoint import CheckpointError, check_fit, infer_config, resample_pos_embed
from .videomamba import resample_temporal_pos
from .videotext import VideoTextMamba

log = logging.getLogger(__name__)

__all__ = [
    "is_videotext_state_dict",
    "canonical_videotext_keys",
    "infer_videotext_config",
    "official_pretrain_keys",
    "adapt_videotext_state_dict",
]

# Keys of the official training-time model that retrieval does not use, and what they are.
_UNUSED = {
    "clip_teacher.": "the CLIP teacher of masked pretraining",
    "text_encoder.cls.": "the BERT masked-language-model head",
    "text_encoder.pooler.": "a BERT pooler (the official models use the [CLS] state)",
    "text_encoder.embeddings.position_ids": "BERT's saved position-id buffer",
}
_BERT_HEAD_DIM = 64


def is_videotext_state_dict(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("vision_encoder.") for k in sd) and any(k.startswith("text_encoder.") for k in sd)


def canonical_videotext_keys(
    sd: Mapping[str, Tensor], keep: tuple[str, ...] = ()
) -> tuple[dict[str, Tensor], list[str]]:
    """(state dict with retrieval key names and without unused keys, notes on what was done);
    the unused-key prefixes in `keep` are kept (a pretraining model has the MLM head)."""
    out: dict[str, Tensor] = {}
    notes: list[str] = []
    dropped: dict[str, list[str]] = {}
    renamed = 0
    for key, value in sd.items():
        if key.startswith("text_encoder.bert."):
            key = "text_encoder." + key[len("text_encoder.bert.") :]
            renamed += 1
        prefix = next((p for p in _UNUSED if key.startswith(p) and p not in keep), None)
        if prefix is not None:
            dropped.setdefault(prefix, []).append(key)
            continue
        out[key] = value
    if renamed:
        notes.append(f"read {renamed} pretraining key(s) text_encoder.bert.* as text_encoder.*")
    for prefix, keys in dropped.items():
        notes.append(f"unused: {len(keys)} key(s) of {_UNUSED[prefix]} ({prefix}*)")
    return out, notes


def _sub(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def infer_videotext_config(sd: Mapping[str, Tensor], num_heads: Optional[int] = None) -> dict[str, Any]:
    """VideoTextMamba(**result) arguments from a (canonical) state dict's shapes."""
    sd, _ = canonical_videotext_keys(sd)
    vis = _sub(sd, "vision_encoder.")
    vcfg = infer_config(vis)
    vcfg.pop("num_classes", None)
    decoders = sorted({int(k.split(".")[1]) for k in vis if k.startswith("clip_decoder.")})
    vcfg["clip_return_layer"] = len(decoders)
    if decoders:
        out_dim, in_dim = vis["clip_decoder.0.head.weight"].shape
        vcfg["clip_output_dim"], vcfg["clip_decoder_embed_dim"] = int(out_dim), int(in_dim)
    vcfg.setdefault("num_frames", 8)

    txt = _sub(sd, "text_encoder.")
    words = txt.get("embeddings.word_embeddings.weight")
    if words is None:
        raise CheckpointError("not a video-text checkpoint: no text_encoder.embeddings.word_embeddings.weight")
    hidden = int(words.shape[1])
    layer_ids = sorted({int(k.split(".")[2]) for k in txt if k.startswith("encoder.layer.")})
    if layer_ids != list(range(len(layer_ids))):
        raise CheckpointError(f"text encoder layers are not numbered 0..N-1: {layer_ids[:10]}")
    cross = [i for i in layer_ids if f"encoder.layer.{i}.crossattention.self.key.weight" in txt]
    tcfg = {
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_layers": len(layer_ids),
        "num_heads": num_heads or max(1, hidden // _BERT_HEAD_DIM),
        "intermediate_size": int(txt["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(txt["embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(txt["embeddings.token_type_embeddings.weight"].shape[0]),
        "fusion_layer": cross[0] if cross else len(layer_ids),
    }
    if cross:
        tcfg["encoder_width"] = int(txt[f"encoder.layer.{cross[0]}.crossattention.self.key.weight"].shape[1])
    if "vision_proj.weight" not in sd:
        raise CheckpointError("not a video-text checkpoint: no vision_proj.weight")
    return {"vision": vcfg, "text": tcfg, "embed_dim": int(sd["vision_proj.weight"].shape[0])}


def adapt_videotext_state_dict(sd: Mapping[str, Tensor], model: VideoTextMamba) -> tuple[dict[str, Tensor], list[str]]:
    """Fit a checkpoint to `model`: key names, unused keys dropped (noted), positions
    resampled when the model's frames / image size differ; other mismatches are errors."""
    target = model.state_dict()
    keep = ("text_encoder.cls.",) if any(k.startswith("text_encoder.cls.") for k in target) else ()
    sd, notes = canonical_videotext_keys(sd, keep)
    for key, resample, what in (
        (
            "vision_encoder.temporal_pos_embedding",
            lambda t, n: resample_temporal_pos(t.float(), n[1]).to(t.dtype),
            "temporal positions (linear)",
        ),
        ("vision_encoder.pos_embed", lambda t, n: resample_pos_embed(t, n[1] - 1), "spatial positions (bicubic)"),
    ):
        if (
            key in sd
            and key in target
            and sd[key].shape != target[key].shape
            and sd[key].shape[-1] == target[key].shape[-1]
        ):
            old = sd[key].shape[1]
            sd[key] = resample(sd[key], target[key].shape)
            notes.append(f"resampled {what} {old} -> {target[key].shape[1]}")
    check_fit(sd, target, "the video-text model")
    return sd, notes


def official_pretrain_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our pretraining model's state dict in the official pretraining layout: the BERT
    under `text_encoder.bert.*`, the MLM head under `text_encoder.cls.*` (what the
    official `UMT_VIDEOMAMBA` with `BertForMaskedLM` saves)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("text_encoder.") and not key.startswith("text_encoder.cls."):
            key = "text_encoder.bert." + key[len("text_encoder.") :]
        out[key] = value
    return out
