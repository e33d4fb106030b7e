"""A recipe's `scan_backend` reaches every model the training commands build (the
classifier of `train`/`eval`, the masked student of `pretrain`, the video-text model of
the multimodal pretraining), explicitly, through their constructors: nothing
process-wide."""

from __future__ import annotations

import os

import pytest

from vmstream.config_loader import ConfigError
from vmstream.models.videomamba import Mamba
from vmstream.training.mm_pretrain import build_mm_model
from vmstream.training.model_setup import build_model
from vmstream.training.pretrain import build_student
from vmstream.training.recipes import load_recipe
from vmstream.training.synthetic_multimodal import write_vocab

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
MEMORY = os.path.join(REPO, "configs", "train", "synthetic_memory.yaml")
DISTILL = os.path.join(REPO, "configs", "pretrain", "synthetic_distill.yaml")
MULTIMODAL = os.path.join(REPO, "configs", "pretrain", "synthetic_multimodal.yaml")


def _backends(model) -> set:
    mixers = [m for m in model.modules() if isinstance(m, Mamba)]
    assert mixers
    return {m.scan_backend for m in mixers}


@pytest.mark.parametrize("name, expect", [("auto", None), ("ref", "ref"), ("numba", "numba")])
def test_every_training_model_gets_the_recipes_backend(tmp_path, name, expect):
    from vmstream.models.tokenizer import BertTokenizer

    over = [f"scan_backend={name}", "model_args.depth=2"]
    assert _backends(build_model(load_recipe(MEMORY, over))) == {expect}
    assert _backends(build_student(load_recipe(DISTILL, over))) == {expect}
    mm = load_recipe(MULTIMODAL, [*over, f"multimodal.vocab={write_vocab(str(tmp_path / 'v.txt'))}"])
    assert _backends(build_mm_model(mm, BertTokenizer(mm.multimodal.vocab)).vision_encoder) == {expect}


def test_a_recipe_naming_an_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="scan_backend: unknown scan backend 'fast'"):
        load_recipe(MEMORY, ["scan_backend=fast"])
