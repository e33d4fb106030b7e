"""Initial weights of multimodal pretraining, as the official code starts it.

* `finetune` (a whole video-text checkpoint: an official ``UMT_VIDEOMAMBA`` pretraining
  save, e.g. the masked stage's, or ours) loads key for key through
  `videotext_checkpoint.adapt_videotext_state_dict` (the MLM head kept, the CLIP teacher
  dropped, positions resampled);
* `multimodal.vision_pretrained` (an official ``*_mask_pt_*`` student, what the official
  configs name ``vision_encoder.pretrained``) loads into the vision encoder; as the
  official ``load_state_dict(strict=False)`` the encoder's own extras (``pool_norm``) stay
  initialised, temporal positions are resampled to the recipe's frames; other keys that do
  not fit are an error;
* `multimodal.text_pretrained` (Hugging Face ``bert-base-uncased``'s ``pytorch_model.bin``
  or ``model.safetensors``: ``bert.*`` and ``cls.predictions.*``, LayerNorm ``gamma`` /
  ``beta`` read as ``weight`` / ``bias``) loads into BERT; the fusion layers' cross-attention, absent from
  plain BERT, stay initialised, as with the official ``from_pretrained``.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor, nn

from vmstream.config_loader import ConfigError
from vmstream.models.checkpoint import CheckpointError, read_checkpoint
from vmstream.models.videomamba import resample_temporal_pos
from vmstream.models.videotext_checkpoint import adapt_videotext_state_dict

__all__ = ["load_initial_weights"]

log = logging.getLogger("vmstream.training")

# Keys of Hugging Face BertForMaskedLM / BertForPreTraining files that our BERT has no place for.
_HF_UNUSED = ("bert.pooler.", "cls.seq_relationship.", "bert.embeddings.position_ids")


def _read(path: str, what: str) -> dict[str, Tensor]:
    if not os.path.exists(path):
        raise ConfigError(f"{what}: {path!r} does not exist")
    try:
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ConfigError(
                    f"{what} {path!r}: reading .safetensors needs the safetensors package "
                    "(pip install safetensors), or give the pytorch_model.bin"
                ) from None
            return load_file(path)
        sd, _ = read_checkpoint(path)
        return dict(sd)
    except (CheckpointError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{what} {path!r}: {e}") from None


def _load_part(module: nn.Module, sd: dict[str, Tensor], what: str, may_miss: tuple[str, ...]) -> None:
    own = module.state_dict()
    bad = [k for k, v in sd.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ConfigError(
            f"{what}: {len(bad)} key(s) do not fit the model, e.g. "
            + ", ".join(f"{k} {tuple(sd[k].shape)}" for k in bad[:4])
        )
    missing = [k for k in own if k not in sd]
    unexpected_missing = [k for k in missing if not any(p in k for p in may_miss)]
    if unexpected_missing:
        raise ConfigError(f"{what}: {len(unexpected_missing)} weight(s) missing, e.g. {unexpected_missing[:4]}")
    module.load_state_dict(sd, strict=False)
    log.info("%s: %d tensors loaded, %d left initialised", what, len(sd), len(missing))


def load_vision_pretrained(model: nn.Module, path: str) -> None:
    sd = _read(path, "multimodal.vision_pretrained")
    enc = model.vision_encoder
    target = enc.temporal_pos_embedding
    t = sd.get("temporal_pos_embedding")
    if t is not None and t.shape != target.shape and t.shape[-1] == target.shape[-1]:
        sd["temporal_pos_embedding"] = resample_temporal_pos(t.float(), target.shape[1])
    _load_part(enc, sd, "multimodal.vision_pretrained", ("pool_norm",))


def load_text_pretrained(model: nn.Module, path: str) -> None:
    raw = _read(path, "multimodal.text_pretrained")
    sd = {}
    for k, v in raw.items():
        if k.startswith(_HF_UNUSED):
            continue
        k = k[len("bert.") :] if k.startswith("bert.") else k
        # the released bert-base-uncased .bin still names LayerNorm parameters gamma / beta
        # (transformers renames them when loading)
        if k.endswith(".gamma"):
            k = k[: -len(".gamma")] + ".weight"
        elif k.endswith(".beta"):
            k = k[: -len(".beta")] + ".bias"
        sd[k] = v
    _load_part(model.text_encoder, sd, "multimodal.text_pretrained", ("crossattention",))


def load_initial_weights(model: nn.Module, finetune: str, vision_pretrained: str, text_pretrained: str) -> None:
    if vision_pretrained:
        load_vision_pretrained(model, vision_pretrained)
    if text_pretrained:
        load_text_pretrained(model, text_pretrained)
    if finetune:
        sd = _read(finetune, "finetune")
        try:
            sd, notes = adapt_videotext_state_dict(sd, model)
        except CheckpointError as e:
            raise ConfigError(f"finetune {finetune!r}: {e}") from None
        model.load_state_dict(sd, strict=True)
        for note in notes:
            log.info("finetune %s: %s", finetune, note)
    with torch.no_grad():  # the decoder's weight is tied to the word embeddings
        head = model.text_encoder.cls.predictions.decoder
        assert head.weight is model.text_encoder.embeddings.word_embeddings.weight
