"""The model card: what the model carries, what loading puts on it, the preprocessing
read from it, and that `vmstream.models` stands without the records and pyarrow."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from vmstream.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataConfig,
    create_model,
    load_model,
    resolve_data_config,
    resolve_device,
)


def test_the_model_builds_its_card():
    model = make_tiny_model()
    card = model.card
    assert (card.num_frames, card.img_size, card.patch_size, card.embed_dim, card.depth, card.num_classes) == (
        4,
        32,
        16,
        32,
        2,
        5,
    )
    assert card.input_size == (3, 4, 32, 32)
    assert (card.mean, card.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (card.interpolation, card.crop) == ("bilinear", "short_side_crop")
    assert (card.name, card.checkpoint, card.checkpoint_digest, card.class_names) == ("", "", "", None)
    assert card.architecture == "videomamba"  # not a registry size
    assert create_model("videomamba_small", device="meta").card.architecture == "videomamba_small"


def test_card_is_frozen_and_replace_checks():
    card = make_tiny_model().card
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.num_frames = 8
    named = card.replace(class_names=["a", "b", "c", "d", "e"])
    assert named.class_names == ("a", "b", "c", "d", "e") and card.class_names is None
    assert dataclasses.replace(card, name="x").name == "x"
    with pytest.raises(ValueError, match="class_names has 2 names but the model has 5 classes"):
        card.replace(class_names=["a", "b"])
    with pytest.raises(ValueError, match="crop='letterbox'"):
        card.replace(crop="letterbox")
    with pytest.raises(ValueError, match="interpolation"):
        card.replace(interpolation="sinc")
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        card.replace(mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        card.replace(num_frames=0)
    hash(named)  # frozen and all tuples: usable as a key


def test_the_card_is_replaced_not_written_and_tags_states():
    model = make_tiny_model()
    model.card = model.card.replace(name="tiny", checkpoint_digest="abcd")
    card = model.card
    assert card.name == "tiny" and card.checkpoint_digest == "abcd" and card.input_size == (3, 4, 32, 32)
    assert card.mean == IMAGENET_MEAN and card.depth == 2 and card.class_names is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.checkpoint_digest = "other"  # a write would bypass the checks: refused instead
    assert model.init_state(1).tag == "abcd"


def test_resolve_data_config_reads_the_card_and_takes_overrides():
    model = make_tiny_model()
    dc = resolve_data_config(model)
    assert dc == DataConfig(
        img_size=32,
        num_frames=4,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",
        crop="short_side_crop",
    )
    assert dc.input_size == (3, 4, 32, 32)
    model.card = model.card.replace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic")
    dc = resolve_data_config(model, img_size=64, crop="direct")
    assert (dc.img_size, dc.crop, dc.mean, dc.std, dc.interpolation) == (
        64,
        "direct",
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        "bicubic",
    )
    assert resolve_data_config(model.card) == resolve_data_config(model)
    with pytest.raises(ValueError, match="crop="):
        resolve_data_config(model, crop="zoom")
    with pytest.raises(TypeError, match="needs a model with a `card`"):
        resolve_data_config(torch.nn.Linear(2, 2))


def test_load_model_fills_the_card(tmp_path):
    src = make_tiny_model(seed=3)
    path = tmp_path / "mine.pth"
    torch.save({"model": src.state_dict()}, path)
    model = load_model(path)
    card = model.card
    assert card.name == "mine" and card.checkpoint == str(path) and len(card.checkpoint_digest) == 16
    assert card.load_notes == () and card.class_names is None and card.num_frames == 4
    assert model.init_state(1).tag == card.checkpoint_digest


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'gpu0' is not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            resolve_device("cuda")


def test_importing_the_models_pulls_in_no_records_stages_or_pyarrow():
    code = (
        "import sys, json, vmstream.models; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'pyarrow' "
        "or m.startswith(('vmstream.records', 'vmstream.stages', 'vmstream.pipeline', 'vmstream.training')))))"
    )
    import vmstream

    root = os.path.dirname(os.path.dirname(os.path.abspath(vmstream.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
