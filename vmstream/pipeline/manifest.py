"""The run manifest (`OUT/run.json`): which model, checkpoint and config produced a run's
results, so `search` embeds queries the way the run embedded the store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

RUN_MANIFEST = "run.json"


def write_manifest(out_dir, card, config: dict, sources: Sequence) -> Path:
    """`card`: the model's ModelCard; `config`: the run's config as plain data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "model": card.name,
        "checkpoint": card.checkpoint,
        "checkpoint_digest": card.checkpoint_digest,
        "config": config,
        "sources": [s.uri for s in sources],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = out / (RUN_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / RUN_MANIFEST)
    return out / RUN_MANIFEST


def read_manifest(run_dir) -> Optional[dict]:
    """The manifest of a run directory, or None when it has none."""
    p = Path(run_dir) / RUN_MANIFEST
    if not p.exists():
        return None
    return json.loads(p.read_text())
