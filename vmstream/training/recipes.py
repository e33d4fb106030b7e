"""Training recipes: YAML files in ``configs/train/``, validated into `TrainConfig`.

A recipe may name a ``base:`` recipe (path relative to itself) whose keys it overrides,
so the per-size / per-dataset tables stay small and each value is written once.
Command-line overrides are ``key=value`` strings (values parsed as YAML, so
``lr=2e-4``, ``opt_betas=[0.9,0.95]``, ``streaming.tbptt_k=2`` work; ``key=`` is null,
which for the text fields below whose default is "" means that default, e.g.
``finetune=`` trains from scratch). Loading, ``base:`` chains, merging and the override
syntax are `vmstream.config_loader`'s, shared with the pipeline's presets.

Field names follow the official fine-tuning arguments (``run_class_finetuning.py`` of
OpenGVLab/VideoMamba) so a recipe reads like the official run scripts and the
checkpoint's ``args`` load in the official code.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vmstream import config_loader
from vmstream.config_loader import parse_overrides
from vmstream.scan_backend_names import check_backend_name

__all__ = [
    "TrainConfig",
    "StreamingConfig",
    "SyntheticConfig",
    "PretrainConfig",
    "SyntheticDistillConfig",
    "MultimodalConfig",
    "UnmaskedStageConfig",
    "LossWeights",
    "SyntheticMultimodalConfig",
    "load_recipe",
    "load_recipe_dict",
    "parse_overrides",
    "recipe_path",
    "REPO_CONFIG_DIR",
]

REPO_CONFIG_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "configs", "train")


class StreamingConfig(BaseModel):
    """Streaming fine-tuning: videos cut into `segments` consecutive segments of
    `segment_frames` frames, the state carried between them (unless `carry_state` is
    false), gradients through the last `tbptt_k` segments (1 = detach between segments;
    0 = all, full backpropagation through time)."""

    model_config = ConfigDict(extra="forbid")
    segments: int = Field(4, ge=1)
    segment_frames: int = Field(4, ge=1)
    tbptt_k: int = Field(0, ge=0)
    loss: Literal["last", "dense"] = "last"
    carry_state: bool = True


class SyntheticConfig(BaseModel):
    """The long-range memory task (`vmstream.training.synthetic`)."""

    model_config = ConfigDict(extra="forbid")
    num_classes: int = Field(4, ge=2)
    train_videos: int = Field(512, ge=2)
    val_videos: int = Field(256, ge=2)
    img_size: int = 32
    shape_size: int = 12
    noise: float = 0.25
    distractor_shapes: int = 2
    seed: int = 1234
    # also train a model with the state reset at every segment (the control)
    train_reset_control: bool = True
    # start Δ in mamba's range instead of the official VideoMamba init's 0.69 (see
    # synthetic.mamba_dt_init_): a from-scratch model then starts able to remember
    mamba_dt_init: bool = True


class PretrainConfig(BaseModel):
    """Masked pretraining distilled from a CLIP teacher; names as the official
    ``run_videomamba_pretraining.py`` arguments (`vmstream.training.pretrain`)."""

    model_config = ConfigDict(extra="forbid")
    mask_type: Literal["tube", "random", "tube_row", "random_row", "attention"] = "tube"
    mask_ratio: float = Field(0.75, ge=0.0, lt=1.0)
    clip_teacher: Literal["clip_b16", "clip_l14", "clip_l14_336"] = "clip_b16"
    # the teacher's weights: the official extracted vit_b16.pth, a whole OpenAI CLIP state
    # dict or Hugging Face openai/clip-vit-* weights; "" = random (only for synthetic runs)
    clip_teacher_weights: str = ""
    teacher_args: dict[str, Any] = Field(default_factory=dict)  # overrides of the teacher size
    clip_input_resolution: int = 224
    clip_loss_type: Literal["l2", "mse", "smooth_l1"] = "l2"
    clip_loss_ratio: float = 1.0
    clip_decoder_embed_dim: Optional[int] = None  # None: the student's embed_dim
    clip_output_dim: int = 512
    clip_norm_type: Literal["l2", "none"] = "l2"
    clip_return_layer: int = Field(1, ge=1)
    clip_return_interval: float = 1
    clip_student_return_interval: float = 1
    clip_return_cls: bool = True
    clip_return_attn: bool = True
    crop: Literal["multi_scale", "random_resized"] = "multi_scale"


class SyntheticDistillConfig(BaseModel):
    """The CPU proof that masked distillation transfers (`vmstream.training.synthetic_distill`)."""

    model_config = ConfigDict(extra="forbid")
    num_classes: int = Field(4, ge=2)
    train_videos: int = Field(512, ge=8)  # distillation clips, drawn afresh every epoch
    heldout_videos: int = Field(256, ge=8)  # for the distillation cosine
    probe_train_videos: int = Field(512, ge=8)
    probe_test_videos: int = Field(512, ge=8)
    probe_epochs: int = Field(200, ge=1)
    probe_lr: float = 0.01
    data_seed: int = 1234
    teacher_seed: int = 4217
    # zero the random teacher's cls embedding (and its position): a random CLIP's cls is
    # otherwise nearly the same vector for every clip, which leaves little to distil
    teacher_zero_cls: bool = True


class LossWeights(BaseModel):
    """The official ``criterion.loss_weight``; 0 disables a loss."""

    model_config = ConfigDict(extra="forbid")
    vtc: float = 1.0
    mlm: float = 1.0
    vtm: float = 1.0
    uta: float = 1.0


class UnmaskedStageConfig(BaseModel):
    """The stage after masked pretraining (the official ``*_unmasked`` configs): no
    teacher, no masks, UTA off, from the masked stage's weights."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(1, ge=1)
    lr: float = 8e-5
    min_lr: float = 8e-7  # min_lr_multi 0.01
    warmup_epochs: float = 0.2
    batch_size: int = Field(64, ge=1)  # per GPU and media type
    lr_scale_divisor: float = 1024.0  # lr is at this total batch (the official 64 x 16 GPUs)


class MultimodalConfig(BaseModel):
    """Video-text pretraining (`vmstream.training.mm_pretrain`); names as the official
    ``videomamba/video_mm`` configs."""

    model_config = ConfigDict(extra="forbid")
    # corpora: [anno.json, root] (images) / [anno.json, root, video] (videos), or {anno, root, media}
    train_file: list[Any] = Field(default_factory=list)
    max_txt_l: int = Field(32, ge=3)
    vocab: str = ""  # BERT vocab.txt; "" = bert-base-uncased's (VMSTREAM_BERT_VOCAB or the hub cache)
    text_args: dict[str, Any] = Field(default_factory=dict)  # BERT size overrides (bert-base by default)
    embed_dim: int = 512
    temp: float = 0.07
    keep_temporal: bool = True
    video_mask_type: Literal["attention", "tube", "random"] = "attention"
    video_mask_ratio: float = Field(0.8, ge=0.0, lt=1.0)
    image_mask_type: Literal["attention", "tube", "random"] = "attention"
    image_mask_ratio: float = Field(0.5, ge=0.0, lt=1.0)
    loss_weight: LossWeights = Field(default_factory=LossWeights)
    vtm_hard_neg: bool = True
    mlm_masking_prob: float = Field(0.5, gt=0.0, lt=1.0)
    mlm_protect_sep: bool = False  # the official rule masks [SEP] too; true keeps it
    uta_norm_type: Literal["l2", "none"] = "l2"
    uta_loss_type: Literal["l2", "mse", "smooth_l1"] = "l2"
    uta_image_only: bool = False
    crop_scale: list[float] = Field(default_factory=lambda: [0.5, 1.0])
    batch_size_image: Optional[int] = None  # None: batch_size (the official uses one size for both)
    vision_pretrained: str = ""  # an official *_mask_pt_* student for the vision encoder
    text_pretrained: str = ""  # bert-base-uncased weights (Hugging Face BertForMaskedLM layout)
    gradient_checkpointing: bool = False  # BERT layers recomputed in backward (official: true)
    stages: list[Literal["masked", "unmasked"]] = Field(default_factory=lambda: ["masked", "unmasked"])
    unmasked: UnmaskedStageConfig = Field(default_factory=UnmaskedStageConfig)


class SyntheticMultimodalConfig(BaseModel):
    """The CPU proof that multimodal pretraining aligns video and text
    (`vmstream.training.synthetic_multimodal`)."""

    model_config = ConfigDict(extra="forbid")
    train_videos: int = Field(256, ge=8)
    train_images: int = Field(128, ge=8)
    heldout_videos: int = Field(96, ge=8)
    data_seed: int = 1234
    teacher_seed: int = 4217


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = "run"
    task: Literal[
        "classification",
        "regression",
        "streaming",
        "synthetic_memory",
        "pretrain",
        "synthetic_distill",
        "pretrain_multimodal",
        "synthetic_multimodal",
    ] = "classification"
    source: str = ""  # the official script the numbers come from
    reference_gpus: Optional[int] = None  # GPUs of that official run (its total batch)

    # model
    model: str = "videomamba_tiny"
    model_args: dict[str, Any] = Field(default_factory=dict)
    finetune: str = ""
    delete_head: bool = False
    drop_path: float = 0.1
    fc_drop_rate: float = 0.0
    tubelet_size: int = 1
    orig_t_size: Optional[int] = None

    # data
    data_set: str = "k400"
    data_path: str = ""
    train_list: str = ""
    val_list: str = ""
    test_list: str = ""
    prefix: str = ""
    split: str = " "
    nb_classes: int = 400
    num_frames: int = 8
    input_size: int = 224
    short_side_size: int = 224
    decode_short_side: Optional[int] = 256
    trimmed: Optional[float] = None  # LVU window length (seconds); None = whole videos
    time_stride: float = 16.0
    num_workers: int = 2
    flip: bool = True
    regression_norm: Literal["zscore", "none"] = "zscore"

    # augmentation
    aa: Optional[str] = "rand-m7-n4-mstd0.5-inc1"
    train_interpolation: str = "bilinear"
    reprob: float = 0.25
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    cutmix_minmax: Optional[list[float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    num_sample: int = Field(2, ge=1)  # repeated augmentation

    # optimisation
    opt: str = "adamw"
    opt_betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])
    opt_eps: float = 1e-8
    weight_decay: float = 0.05
    weight_decay_end: Optional[float] = None
    lr: float = 1e-3
    lr_scale_divisor: float = 256.0  # lr * total batch (x num_sample) / divisor
    lr_scale_num_sample: bool = True
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5
    warmup_steps: int = -1
    layer_decay: float = 0.75
    layer_decay_mode: Literal["depth", "official"] = "depth"
    clip_grad: Optional[float] = None
    update_freq: int = Field(1, ge=1)

    # run
    epochs: int = 30
    batch_size: int = 64
    max_steps_per_epoch: Optional[int] = None
    # stop after this many epochs in this invocation (a time-sliced job); the schedule
    # still spans `epochs`, and the next invocation auto-resumes where this one stopped
    stop_after_epochs: Optional[int] = None
    seed: int = 0
    output_dir: str = ""
    save_ckpt: bool = True
    save_ckpt_freq: int = 100
    auto_resume: bool = True
    resume: str = ""
    eval: bool = False
    eval_every: int = 1
    test_best: bool = True
    test_num_segment: int = 4
    test_num_crop: int = 3
    device: str = "auto"
    # torch intra-op threads (None: torch's default). Tiny models (the memory task) run
    # many small ops, for which thread hand-offs cost more than they save: use 1.
    torch_threads: Optional[int] = None
    bf16: bool = True  # autocast dtype on CUDA; CPU always trains in fp32
    # The ops backend of the model's scans and convs (ref, cpu, numba, triton, cuda; see
    # models/ops/dispatch.py), given to the model built; "auto": chosen by the device.
    scan_backend: str = "auto"
    log_every: int = 10

    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    synthetic_distill: SyntheticDistillConfig = Field(default_factory=SyntheticDistillConfig)
    multimodal: MultimodalConfig = Field(default_factory=MultimodalConfig)
    synthetic_multimodal: SyntheticMultimodalConfig = Field(default_factory=SyntheticMultimodalConfig)

    @field_validator(
        "source",
        "finetune",
        "data_path",
        "train_list",
        "val_list",
        "test_list",
        "prefix",
        "output_dir",
        "resume",
        mode="before",
    )
    @classmethod
    def _null_is_unset(cls, v):
        # null (`key=` on the command line, `key:` in YAML) is "not set", which these
        # fields spell "".
        return "" if v is None else v

    @field_validator("scan_backend")
    @classmethod
    def _known_backend(cls, v):
        if v != "auto":  # whether it can run on the device is checked at the run's start
            check_backend_name(v)
        return v

    @field_validator("opt_betas")
    @classmethod
    def _two_betas(cls, v):
        if len(v) != 2:
            raise ValueError(f"opt_betas needs two values, got {v}")
        return v

    def list_path(self, split: str) -> str:
        explicit = {"train": self.train_list, "val": self.val_list, "test": self.test_list}[split]
        if explicit:
            return explicit
        if not self.data_path:
            return ""
        return os.path.join(self.data_path, f"{split}.csv")


def load_recipe_dict(path: str) -> dict:
    """The recipe at `path` with its ``base:`` chain merged (child keys win)."""
    return config_loader.read_layered(path, "recipe", base_key="base")


def load_recipe(path: Optional[str] = None, overrides=(), **kwargs) -> TrainConfig:
    """Load and validate a recipe: the file (with its ``base:`` chain) <- ``key=value``
    `overrides` <- `kwargs`; errors name the recipe and the offending key."""
    data = load_recipe_dict(path) if path else {}
    data = config_loader.deep_merge(data, config_loader.parse_overrides(overrides))
    data = config_loader.deep_merge(data, kwargs)
    origin = (path or "<inline>") + (" + overrides" if overrides else "")
    return config_loader.validate(TrainConfig, data, origin, what="recipe")


def recipe_path(name: str) -> str:
    """A recipe by file name (``k400/videomamba_tiny_f8x224``) in the repo's configs/train."""
    p = name if name.endswith(".yaml") else name + ".yaml"
    return os.path.normpath(os.path.join(REPO_CONFIG_DIR, p))
