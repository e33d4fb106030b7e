"""The store's model, from the run manifest (OUT/run.json), loaded once: its text
batcher for a video-text model, and the run's decoding for uploaded clips."""

from __future__ import annotations

from pathlib import Path

from vmstream.errors import UserError


def run_config(out_dir: Path, sets: list | None = None, device: str | None = None):
    """The run's model, decoding and segmenting settings (embeddings compare only then)."""
    from vmstream.pipeline.config import ConfigError, load_config
    from vmstream.pipeline.manifest import RUN_MANIFEST, read_manifest

    manifest = read_manifest(out_dir)
    if manifest is None:
        raise UserError(
            f"{out_dir}: no {RUN_MANIFEST} (the store's model is unknown; serve a `vmstream run` output directory)"
        )
    run_cfg = manifest.get("config", {})
    data = {k: dict(run_cfg[k]) for k in ("model", "decode", "segment") if k in run_cfg}
    if device:
        data.setdefault("model", {})["device"] = device
    try:
        return load_config(overrides=data, sets=list(sets or []))
    except ConfigError as e:
        raise UserError(f"{out_dir / RUN_MANIFEST}: {e}") from None


def load_store_model(out_dir: Path, store_meta: dict, *, sets=None, device: str | None = None, vocab=None):
    """(cfg, model, tokenizer or None, why text search is unavailable or "")."""
    from vmstream.pipeline.assembly import (
        is_videotext,
        load_pipeline_model,
        make_tokenizer,
    )

    cfg = run_config(out_dir, sets, device)
    cfg.model.labels = None  # label prompts play no part in a search
    model = load_pipeline_model(cfg)
    digest = store_meta.get("checkpoint_digest") or ""
    ours = model.card.checkpoint_digest
    if digest and ours and digest != ours:
        raise UserError(
            f"the store was built with checkpoint {digest[:12]}…, the run manifest's model is "
            f"{ours[:12]}…; their embeddings are not comparable"
        )
    if not is_videotext(model):
        return (
            cfg,
            model,
            None,
            (f"the store was built by {model.card.name!r}, a video classifier with no text encoder"),
        )
    return cfg, model, make_tokenizer(vocab or cfg.model.vocab), ""
