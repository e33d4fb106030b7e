"""Named model sizes and the official VideoMamba checkpoints (OpenGVLab/VideoMamba).

Sizes (`videomamba_tiny`, `videomamba_small`, `videomamba_middle`) build an untrained
model; checkpoint names are the official file names without `.pth` (e.g.
`videomamba_t16_k400_f16_res224`), each with what it was trained on and its class list,
taken from the official MODEL_ZOO.md files (video_sm and image_sm).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Optional

from .videomamba import VideoMamba

HF_REPO = "OpenGVLab/VideoMamba"

# The official constructors fix patch 16, RMSNorm, fused add+norm and fp32 residual.
SIZES: dict[str, dict] = {
    "videomamba_tiny": {"embed_dim": 192, "depth": 24, "patch_size": 16},
    "videomamba_small": {"embed_dim": 384, "depth": 24, "patch_size": 16},
    "videomamba_middle": {"embed_dim": 576, "depth": 32, "patch_size": 16},
}
_SIZE_CODES = {"t16": "videomamba_tiny", "s16": "videomamba_small", "m16": "videomamba_middle"}

# Class lists: name -> number of classes. Only Kinetics-400's names ship (a data file in
# the official label order); for the others we could not source the official label order
# reliably, so their classes are numbered placeholders ("class_000", ...), never guesses.
CLASS_LISTS = {"k400": 400, "ssv2": 174, "breakfast": 10, "coin": 180, "in1k": 1000}
_CLASS_FILES = {"k400": "kinetics400_classes.txt"}


@dataclass(frozen=True)
class CheckpointInfo:
    name: str  # registry name = file name without .pth
    filename: str  # the file in the HF repo OpenGVLab/VideoMamba
    size: str  # a key of SIZES
    dataset: str  # what the head was trained on: k400, ssv2, breakfast, coin, in1k; "" if no head
    num_frames: Optional[int]  # None for the ImageNet (image) checkpoints
    img_size: int
    num_classes: int  # 0: no head (masked-pretraining backbone)
    pretraining: str  # "in1k", "mask" (UMT-style masked pretraining), "k400", "mask+k400"
    top1: Optional[float] = None  # the MODEL_ZOO figure for this checkpoint
    # False where the zoo's download link for this row points at another file (a doc
    # slip upstream): the name follows the zoo's naming pattern but is unconfirmed.
    name_confirmed: bool = True
    # "classifier" (VideoMamba) or "videotext" (VideoTextMamba: video and text in one space)
    kind: str = "classifier"

    @property
    def class_list(self) -> Optional[str]:
        return self.dataset or None

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{HF_REPO}/resolve/main/{self.filename}"


def _video(code, dataset, frames, res, num_classes, pretraining, top1, tag="", confirmed=True):
    res_tag = f"res{res}" if isinstance(res, int) else res
    img = int(res_tag.rsplit("to", 1)[-1].replace("res", ""))
    name = f"videomamba_{code}_{dataset}{tag}_f{frames}_{res_tag}"
    return CheckpointInfo(
        name, name + ".pth", _SIZE_CODES[code], dataset, frames, img, num_classes, pretraining, top1, confirmed
    )


def _build() -> dict[str, CheckpointInfo]:
    items: list[CheckpointInfo] = []
    k400 = {
        "t16": {8: 76.9, 16: 78.1, 32: 78.8, 64: 79.6, "384": 80.3},
        "s16": {8: 79.3, 16: 80.8, 32: 81.5, 64: 81.8, "384": 82.7},
        "m16": {8: 80.6, 16: 81.9, 32: 82.4, 64: 82.8, "384": 83.3},
    }
    for code, rows in k400.items():
        for f in (8, 16, 32, 64):
            items.append(_video(code, "k400", f, 224, 400, "in1k", rows[f]))
        items.append(_video(code, "k400", 64, "res224to384", 400, "in1k", rows["384"]))
    # The zoo links the f16 masked rows (K400 and SSv2) to the non-masked files; the
    # names below follow the pattern of their sibling rows.
    for f, top1 in ((8, 82.0), (16, 83.4), (32, 83.9), (64, 84.3)):
        items.append(_video("m16", "k400", f, 224, 400, "mask", top1, tag="_mask_ft", confirmed=f != 16))
    items.append(_video("m16", "k400", 64, "res224to384", 400, "mask", 85.0, tag="_mask_ft"))

    ssv2 = {"t16": (65.1, 66.0, 66.2), "s16": (66.6, 67.7, 68.1), "m16": (67.3, 68.3, 68.4)}
    for code, (f8, f16, f16_288) in ssv2.items():
        items.append(_video(code, "ssv2", 8, 224, 174, "in1k", f8))
        items.append(_video(code, "ssv2", 16, 224, 174, "in1k", f16))
        items.append(_video(code, "ssv2", 16, "res224to288", 174, "in1k", f16_288))
    items.append(_video("m16", "ssv2", 8, 224, 174, "mask", 70.2, tag="_mask_ft"))
    items.append(_video("m16", "ssv2", 16, 224, 174, "mask", 71.0, tag="_mask_ft", confirmed=False))
    items.append(_video("m16", "ssv2", 16, "res224to288", 174, "mask", 71.4, tag="_mask_ft"))

    long_form = {
        "breakfast": {"t16": (94.3, 94.3), "s16": (95.3, 97.4), "m16": (94.8, 95.8), "m16_mask": (97.9, 96.9)},
        "coin": {"t16": (86.2, 87.0), "s16": (88.4, 88.7), "m16": (88.3, 89.5), "m16_mask": (89.6, 90.4)},
    }
    for dataset, sizes in long_form.items():
        n = CLASS_LISTS[dataset]
        for key, (f32, f64) in sizes.items():
            code, masked = key.split("_")[0], key.endswith("_mask")
            tag, pre = ("_mask_ft", "mask+k400") if masked else ("", "k400")
            items.append(_video(code, dataset, 32, 224, n, pre, f32, tag=tag))
            items.append(_video(code, dataset, 64, 224, n, pre, f64, tag=tag))

    # Masked pretraining (backbones without a classification head).
    for dataset in ("k400", "ssv2"):
        name = f"videomamba_m16_{dataset}_mask_pt_f8_res224"
        items.append(CheckpointInfo(name, name + ".pth", "videomamba_middle", "", 8, 224, 0, "mask"))

    # ImageNet-1K image models: 2-D patch embedding, no temporal positions; they load
    # into the video model by inflating the patch conv (as the official fine-tuning does).
    in1k = {
        "t16": {"res224": 76.9, "res224to448": 79.3, "res224to448to576": 79.6},
        "s16": {"res224": 81.2, "res224to448": 83.2, "res224to448to576": 83.5},
        "m16": {"res224": 82.8, "res224to448": 83.8, "res224to448to576": 84.0},
    }
    for code, rows in in1k.items():
        for res_tag, top1 in rows.items():
            name = f"videomamba_{code}_in1k_{res_tag}"
            img = int(res_tag.rsplit("to", 1)[-1].replace("res", ""))
            # The zoo's HF link for t16 res224to448 points at m16_in1k_res224 (its aliyun
            # link has the name used here).
            confirmed = name != "videomamba_t16_in1k_res224to448"
            items.append(
                CheckpointInfo(name, name + ".pth", _SIZE_CODES[code], "in1k", None, img, 1000, "in1k", top1, confirmed)
            )

    # Video-text (UMT_VIDEOMAMBA) models, pretrained from the K400 masked model on 5M /
    # 17M / 25M video-text pairs (video_mm/MODEL_ZOO.md); saved with their CLIP teacher.
    for corpus in ("5M", "17M", "25M"):
        name = f"videomamba_m16_{corpus}_f8_res224"
        items.append(
            CheckpointInfo(
                name, name + ".pth", "videomamba_middle", "", 8, 224, 0, f"mask+{corpus} video-text", kind="videotext"
            )
        )
    return {c.name: c for c in items}


CHECKPOINTS: dict[str, CheckpointInfo] = _build()


def get_checkpoint(name: str) -> CheckpointInfo:
    """The registry entry for a checkpoint name (with or without `.pth`)."""
    key = name[:-4] if name.endswith(".pth") else name
    if key in CHECKPOINTS:
        return CHECKPOINTS[key]
    close = difflib.get_close_matches(key, list(CHECKPOINTS), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see vmstream.models.list_checkpoints()"
    raise KeyError(f"unknown VideoMamba checkpoint {name!r}{hint}")


def list_checkpoints(size: Optional[str] = None, dataset: Optional[str] = None) -> list[CheckpointInfo]:
    return [
        c
        for c in CHECKPOINTS.values()
        if (size is None or c.size == size) and (dataset is None or c.dataset == dataset)
    ]


def create_model(name: str = "videomamba_tiny", **overrides):
    """An untrained model of a named size, or with the architecture of a named checkpoint
    (a VideoTextMamba for the video-text ones; `overrides` then go to its vision encoder).

    `overrides` are VideoMamba constructor arguments (num_frames, num_classes, img_size,
    drop_path_rate, scan_backend, precision, ...). Weights: `vmstream.models.load_model`.
    """
    if name in SIZES:
        kwargs = dict(SIZES[name])
    else:
        info = get_checkpoint(name)
        if info.kind == "videotext":
            from .videotext import VideoTextMamba

            run = {k: overrides.pop(k) for k in ("scan_backend", "precision") if k in overrides}
            return VideoTextMamba(vision=dict(num_frames=info.num_frames, img_size=info.img_size, **overrides), **run)
        kwargs = dict(SIZES[info.size], img_size=info.img_size, num_classes=info.num_classes)
        if info.num_frames is not None:
            kwargs["num_frames"] = info.num_frames
    kwargs.update(overrides)
    model = VideoMamba(**kwargs)
    model.card = model.card.replace(architecture=size_name(model.card.embed_dim, model.card.depth))
    return model


def size_name(embed_dim: int, depth: int) -> str:
    """The registry size with this width and depth, or "videomamba" for another shape."""
    for name, size in SIZES.items():
        if size["embed_dim"] == embed_dim and size["depth"] == depth:
            return name
    return "videomamba"


@cache
def _class_names(class_list: str) -> tuple[str, ...]:
    if class_list not in CLASS_LISTS:
        raise KeyError(f"unknown class list {class_list!r}; known: {sorted(CLASS_LISTS)}")
    n = CLASS_LISTS[class_list]
    if class_list in _CLASS_FILES:
        text = resources.files("vmstream").joinpath("data", _CLASS_FILES[class_list]).read_text(encoding="utf-8")
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        if len(names) != n:
            raise RuntimeError(f"{_CLASS_FILES[class_list]} has {len(names)} names, expected {n}")
        return names
    return tuple(f"class_{i:03d}" for i in range(n))


def class_names(class_list: str) -> list[str]:
    """Class names in label order: "k400" (real names), or numbered placeholders for
    "ssv2", "breakfast", "coin", "in1k"."""
    return list(_class_names(class_list))
