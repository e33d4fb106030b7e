"""VideoMamba and its parts: pure PyTorch first, fused kernels optional.

from vmstream.models import load_model
model = load_model("videomamba_t16_k400_f16_res224")      # or a .pth path
logits = model(clip)                                       # clip [B, 3, T, 224, 224]
state = model.init_state(batch_size=B)
out = model.forward_segment(clip, state)                   # out.features/.logits/.state
model.card                                                 # what it is: frames, size, classes, weights
resolve_data_config(model)                                 # what input it wants: size, mean/std, crop
"""

from .bert import BertConfig, BertModel
from .card import IMAGENET_MEAN, IMAGENET_STD, DataConfig, ModelCard, resolve_data_config
from .checkpoint import CheckpointError, LoadReport, adapt_state_dict, infer_config, read_checkpoint, resample_pos_embed
from .clip_teacher import CLIP_TEACHERS, ClipTeacher, clip_teacher
from .device import resolve_device
from .hub import CHECKPOINT_DIR_ENV, CheckpointNotFound, file_digest, resolve_checkpoint
from .loading import load_checkpoint, load_model
from .precision import set_precision
from .registry import (
    CHECKPOINTS,
    CLASS_LISTS,
    HF_REPO,
    SIZES,
    CheckpointInfo,
    class_names,
    create_model,
    get_checkpoint,
    list_checkpoints,
)
from .scan_backend import set_scan_backend
from .state import StateError, StreamState
from .videomamba import SegmentOutput, VideoMamba, resample_temporal_pos
from .videomamba_pretrain import VideoMambaPretrain
from .videotext import TextEncoding, VideoEncoding, VideoTextMamba

__all__ = [
    "VideoMamba",
    "SegmentOutput",
    "VideoTextMamba",
    "VideoEncoding",
    "TextEncoding",
    "BertConfig",
    "BertModel",
    "VideoMambaPretrain",
    "ClipTeacher",
    "clip_teacher",
    "CLIP_TEACHERS",
    "ModelCard",
    "DataConfig",
    "resolve_data_config",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resolve_device",
    "StreamState",
    "StateError",
    "resample_temporal_pos",
    "create_model",
    "SIZES",
    "CHECKPOINTS",
    "CheckpointInfo",
    "get_checkpoint",
    "list_checkpoints",
    "class_names",
    "CLASS_LISTS",
    "HF_REPO",
    "load_model",
    "load_checkpoint",
    "set_precision",
    "set_scan_backend",
    "read_checkpoint",
    "adapt_state_dict",
    "infer_config",
    "resample_pos_embed",
    "LoadReport",
    "CheckpointError",
    "resolve_checkpoint",
    "file_digest",
    "CheckpointNotFound",
    "CHECKPOINT_DIR_ENV",
]
