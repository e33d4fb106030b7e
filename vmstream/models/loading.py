"""The public loaders: one `load_model` / `load_checkpoint` for every model family.

A checkpoint whose keys hold a `vision_encoder` and a `text_encoder` is a video-text
model (VideoTextMamba, `videotext_checkpoint.py`); anything else is the VideoMamba
classifier (`checkpoint.py`). The file is read once, safely, by `read_checkpoint`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

import torch.nn as nn

from .checkpoint import (
    LoadReport,
    check_finite,
    classifier_from_state_dict,
    open_checkpoint,
    read_checkpoint,
    registry_entry,
)
from .checkpoint import load_checkpoint as load_classifier_checkpoint
from .hub import file_digest, resolve_checkpoint
from .ops.dispatch import check_backend
from .precision import set_precision
from .videomamba import precision_dtype
from .videotext import VideoTextMamba
from .videotext_checkpoint import adapt_videotext_state_dict, infer_videotext_config, is_videotext_state_dict

log = logging.getLogger(__name__)

__all__ = ["load_model", "load_checkpoint"]


def load_checkpoint(model: nn.Module, source: Union[str, os.PathLike, Mapping], reset_head: bool = False) -> LoadReport:
    """Load a checkpoint (file path, registry name or loaded object) into `model`.

    VideoTextMamba: the official training save or a bare state dict, pretraining or
    retrieval key names; keys it does not use are reported in `LoadReport.notes`."""
    if not isinstance(model, VideoTextMamba):
        return load_classifier_checkpoint(model, source, reset_head=reset_head)
    sd, meta, label, digest = open_checkpoint(source)
    adapted, notes = adapt_videotext_state_dict(sd, model)
    check_finite(adapted, label)
    model.load_state_dict(adapted, strict=True)
    _log_notes(label, _config_notes(meta), notes)
    notes = _config_notes(meta) + notes
    model.card = model.card.replace(checkpoint=label, checkpoint_digest=digest, load_notes=notes)
    return LoadReport(source=label, digest=digest, notes=notes, args=meta.get("args"))


def load_model(
    path_or_name: Union[str, os.PathLike],
    *,
    reset_head: bool = False,
    class_list: Optional[str] = None,
    cache_dir=None,
    local_files_only: Optional[bool] = None,
    num_heads: Optional[int] = None,
    scan_backend: Optional[str] = None,
    precision: str = "fp32",
    **overrides,
) -> nn.Module:
    """A model built from a checkpoint's shapes and loaded with its weights, in eval mode:
    a VideoMamba classifier, or a VideoTextMamba for the official video-text checkpoints.

    `path_or_name`: a file, or a registry name (downloaded through the HF hub cache).
    `scan_backend`: the ops backend of the model's mixers (None: by the tensors' device);
    `precision`: its matmul precision, "fp32" or "bf16" (`set_precision`, after loading).
    Classifier `overrides`: VideoMamba constructor arguments (see `checkpoint.load_model`).
    Video-text: `num_heads` for the text encoder (default width / 64), and `num_frames` /
    `img_size` overrides for the vision encoder (positions resampled).
    """
    check_backend(scan_backend)  # bad names fail before the file is read
    precision_dtype(precision)
    path = resolve_checkpoint(path_or_name, cache_dir=cache_dir, local_files_only=local_files_only)
    sd, meta = read_checkpoint(path)
    if not is_videotext_state_dict(sd):
        model = classifier_from_state_dict(
            path_or_name,
            path,
            sd,
            reset_head=reset_head,
            class_list=class_list,
            scan_backend=scan_backend,
            **overrides,
        )
    else:
        model = _videotext_from_state_dict(path_or_name, path, sd, meta, num_heads, scan_backend, overrides)
    return set_precision(model, precision) if precision != "fp32" else model


def _videotext_from_state_dict(
    path_or_name, path: Path, sd, meta, num_heads, scan_backend, overrides
) -> VideoTextMamba:
    cfg = infer_videotext_config(sd, num_heads=num_heads)
    unknown = set(overrides) - {"num_frames", "img_size"}
    if unknown:
        raise TypeError(f"load_model: a video-text model takes num_frames / img_size overrides, not {sorted(unknown)}")
    cfg["vision"].update(overrides)
    model = VideoTextMamba(**cfg, scan_backend=scan_backend)
    adapted, notes = adapt_videotext_state_dict(sd, model)
    check_finite(adapted, str(path))
    model.load_state_dict(adapted, strict=True)
    _log_notes(path.name, _config_notes(meta), notes)
    notes = _config_notes(meta) + notes
    info = registry_entry(path_or_name, path)
    model.card = model.card.replace(
        name=info.name if info else path.stem,
        checkpoint=str(path),
        checkpoint_digest=file_digest(path),
        load_notes=notes,
    )
    return model.eval()


def _log_notes(where: str, config_notes: list[str], key_notes: list[str]) -> None:
    for note in config_notes:
        log.info("%s: %s", where, note)
    # Keys an official video-text checkpoint always carries and retrieval does not use
    # (the MLM head, the teacher's projection...): expected, so not on every command's
    # screen; in model.card.load_notes and at -vv.
    for note in key_notes:
        log.debug("%s: %s", where, note)


def _config_notes(meta: dict) -> list[str]:
    inert = meta.get("inert_classes")
    if not inert:
        return []
    return [f"read the pickled class(es) {', '.join(inert)} in the file's metadata as plain data (not imported)"]
