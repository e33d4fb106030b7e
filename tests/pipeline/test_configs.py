"""Every pipeline preset in configs/ is valid and names a registered model."""

from pathlib import Path

import pytest

from vmstream.models import CHECKPOINTS
from vmstream.pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def test_presets_exist():
    names = {p.name for p in PRESETS}
    assert {"archive.yaml", "camera.yaml", "search-store.yaml", "kafka-worker.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_is_valid(path):
    cfg = load_config(path)
    assert cfg.model.name in CHECKPOINTS or cfg.model.checkpoint
