"""What a model is and what input it wants: its card, and the preprocessing read from it.

timm keeps this as a `pretrained_cfg` dict; here it is a frozen dataclass so a misspelt
field is an AttributeError rather than a silent `None`, and so nothing edits a model's
metadata behind the back of the code that holds it: an update is a new card
(`dataclasses.replace(model.card, class_names=names)`) assigned to `model.card`.

`resolve_data_config(model)` is what decoding needs from it (size, frames, mean, std,
interpolation, crop), so preprocessing follows the model instead of constants
scattered over the stages. Nothing here imports torch, the records or pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

# The official VideoMamba models were trained on ImageNet-normalised RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How a frame is brought to the model's square input; the names are the decoders'
# (`FrameSize.mode`): scale the short side then centre-crop, or stretch to the square.
CROP_MODES = ("short_side_crop", "direct")
# The resampling filter of that resize, by a name the decoders know (upper-cased, it is
# PyAV's / libswscale's); their default and the official models' is bilinear.
INTERPOLATIONS = ("bilinear", "bicubic", "area", "lanczos")

__all__ = [
    "ModelCard",
    "DataConfig",
    "resolve_data_config",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CROP_MODES",
    "INTERPOLATIONS",
]


@dataclass(frozen=True)
class ModelCard:
    """A model's metadata: its architecture, its input and its labels, and where its
    weights came from. The model builds it (`VideoMamba.card`); the loaders fill in the
    checkpoint fields and the class names."""

    num_frames: int
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_classes: int
    in_chans: int = 3
    # "videomamba_tiny" etc. when the size is a registry size, else the family name.
    architecture: str = "videomamba"
    # The registry checkpoint name, a checkpoint file's stem, or "" for a built model.
    name: str = ""
    class_names: Optional[tuple[str, ...]] = None
    class_list: Optional[str] = None  # the registry class list the names came from
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop: str = "short_side_crop"
    checkpoint: str = ""  # the file the weights were loaded from ("" = not loaded)
    checkpoint_digest: str = ""  # its sha256; streams' states are tagged with it
    load_notes: tuple[str, ...] = field(default=())  # what loading adapted, in order

    def __post_init__(self):
        for name in ("num_frames", "img_size", "patch_size", "in_chans"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ModelCard.{name} must be a positive int, got {getattr(self, name)!r}")
        # Frozen: normalise sequences to tuples so the card stays hashable and immutable.
        for name in ("class_names", "load_notes", "mean", "std"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"ModelCard: mean and std need {self.in_chans} values (in_chans), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ModelCard.std must be positive, got {self.std}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"ModelCard.class_names has {len(self.class_names)} names but the model has {self.num_classes} classes"
            )
        if self.crop not in CROP_MODES:
            raise ValueError(f"ModelCard.crop={self.crop!r}; expected one of {CROP_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"ModelCard.interpolation={self.interpolation!r}; expected one of {INTERPOLATIONS}")

    @property
    def input_size(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip."""
        return (self.in_chans, self.num_frames, self.img_size, self.img_size)

    def replace(self, **changes: Any) -> "ModelCard":
        """A copy with `changes` applied and checked (`dataclasses.replace`)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class DataConfig:
    """How frames must be prepared for a model: resized to `img_size` square with
    `interpolation` and `crop`, cut into clips of `num_frames`, scaled to [0, 1] and
    normalised with `mean` / `std` per channel."""

    img_size: int
    num_frames: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop: str

    @property
    def input_size(self) -> tuple[int, int, int, int]:
        return (len(self.mean), self.num_frames, self.img_size, self.img_size)


def resolve_data_config(
    model_or_card: Any,
    *,
    img_size: Optional[int] = None,
    num_frames: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    interpolation: Optional[str] = None,
    crop: Optional[str] = None,
) -> DataConfig:
    """The preprocessing a model (or its card) wants; a keyword that is not None wins over
    the card (e.g. a pipeline config's `decode.img_size`), and is checked like the card."""
    card = model_or_card if isinstance(model_or_card, ModelCard) else getattr(model_or_card, "card", None)
    if not isinstance(card, ModelCard):
        raise TypeError(
            f"resolve_data_config needs a model with a `card` (a ModelCard), got {type(model_or_card).__name__}"
        )
    given = {
        "img_size": img_size,
        "num_frames": num_frames,
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
        "crop": crop,
    }
    card = card.replace(**{k: v for k, v in given.items() if v is not None})
    return DataConfig(
        img_size=card.img_size,
        num_frames=card.num_frames,
        mean=card.mean,
        std=card.std,
        interpolation=card.interpolation,
        crop=card.crop,
    )
