"""The CLIP teacher of masked pretraining: OpenAI CLIP's visual ViT applied frame by
frame (the official `VisionTransformer` of `videomamba/video_sm/models/clip.py`, module
for module, so the official extracted weights `vit_b16.pth` load key for key).

Forward, as the official one (the video engine never passes the teacher a mask):

* the patch conv is a Conv3d with kernel (kernel_size, p, p) and no bias (a 2D CLIP
  weight is inflated: centre frame, zeros elsewhere, as the official loader's default);
* every frame is a CLIP image: cls + patches + positions, `ln_pre`, the residual
  attention blocks (QuickGELU MLP);
* the returned features are the outputs of the last `clip_return_layer` blocks (every
  `clip_return_interval`-th from the end), lowest first. With `clip_return_cls` the cls
  token is averaged over frames and put first, and the tokens are projected with `proj`
  *without* `ln_post` (the official code skips it on that path); without it, only the
  patches, through `ln_post`, then `proj`. Then L2 normalisation (`clip_norm_type='l2'`).
* with `return_attn`, also the last block's cls-to-patch attention (averaged over
  heads) [B*T, h*w], which drives attention masking.

`load_state_dict` takes the weights users have: the official extracted layout (OpenAI's
`visual.*` with the prefix removed), a whole OpenAI CLIP state dict (`visual.*` is
picked), or the Hugging Face `openai/clip-vit-*` layout (`vision_model.*` and
`visual_projection.weight`); names are mapped key for key and anything missing or left
over is an error naming the keys.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, read_checkpoint
from .videomamba_pretrain import return_layers

__all__ = ["ClipTeacher", "CLIP_TEACHERS", "clip_teacher", "convert_clip_state_dict", "hf_to_official"]

# The official teacher sizes (`clip_b16`, `clip_l14`, `clip_l14_336` of the official clip.py).
CLIP_TEACHERS = {
    "clip_b16": dict(input_resolution=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512),
    "clip_l14": dict(input_resolution=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
    "clip_l14_336": dict(input_resolution=336, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
}


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, output in the input's dtype (CLIP's fp16-safe norm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: Tensor, return_attn: bool = False):
        """x [L, N, D] (sequence first, as nn.MultiheadAttention's default)."""
        y = self.ln_1(x)
        y, attn = self.attn(y, y, y, need_weights=return_attn)
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return (x, attn) if return_attn else x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.layers = layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


class ClipTeacher(nn.Module):
    """The official CLIP visual encoder for videos (keywords as the official class)."""

    def __init__(
        self,
        input_resolution=224,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        output_dim=512,
        clip_norm_type="l2",
        kernel_size=1,
        return_attn=False,
        clip_return_layer=1,
        clip_return_interval=1,
        clip_return_cls=False,
    ):
        super().__init__()
        if clip_norm_type not in ("l2", "none"):
            raise ValueError(f"clip_norm_type must be 'l2' or 'none', got {clip_norm_type!r}")
        self.return_index = return_layers(layers, clip_return_layer, clip_return_interval, f"a {layers}-block teacher")
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.kernel_size = kernel_size
        self.clip_norm_type = clip_norm_type
        self.return_attn = return_attn
        self.clip_return_cls = clip_return_cls
        self.output_dim = output_dim
        self.conv1 = nn.Conv3d(
            3, width, (kernel_size, patch_size, patch_size), (kernel_size, patch_size, patch_size), bias=False
        )
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: Tensor):
        """video [B, 3, T, H, W] -> [K, B, (1 +) T'*h*w, output_dim] (and with
        `return_attn`, the cls-to-patch attention [B*T', h*w])."""
        if (
            x.dim() != 5
            or x.shape[1] != 3
            or x.shape[-1] != self.input_resolution
            or x.shape[-2] != self.input_resolution
        ):
            r = self.input_resolution
            raise ValueError(f"teacher input must be [B, 3, T, {r}, {r}]; got shape {tuple(x.shape)}")
        x = self.conv1(x)
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
        cls = (self.class_embedding.to(x.dtype)).expand(B * T, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)  # [L, B*T, C]
        feats, attn = [], None
        last = len(self.transformer.resblocks) - 1
        for idx, blk in enumerate(self.transformer.resblocks):
            if idx == last and self.return_attn:
                x, attn = blk(x, return_attn=True)
            else:
                x = blk(x)
            if idx in self.return_index:
                feats.append(x)
        x = torch.stack(feats)  # [K, L, B*T, C], lowest block first
        K = x.shape[0]
        if self.clip_return_cls:
            x = x.permute(0, 2, 1, 3)  # [K, B*T, L, C]
            cls_tok = x[:, :, :1].reshape(K, B, T, 1, C).mean(2)
            x = torch.cat([cls_tok, x[:, :, 1:].reshape(K, B, T * H * W, C)], dim=2)
        else:
            x = self.ln_post(x[:, 1:])
            x = x.view(K, H * W, B, T, C).permute(0, 2, 3, 1, 4).reshape(K, B, T * H * W, C)
        x = x @ self.proj
        if self.clip_norm_type == "l2":
            x = x / x.norm(dim=-1, keepdim=True)
        if self.return_attn:
            return x, attn[:, 0, 1:]
        return x

    def load_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False):
        """Load CLIP visual weights in any of the three layouts (see the module docstring)."""
        sd = convert_clip_state_dict(state_dict, self)
        return super().load_state_dict(sd, strict=strict, assign=assign)


# --------------------------------------------------------------------------- weights

_HF_BLOCK = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_TOP = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
}
_HF_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)")


def hf_to_official(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face CLIP (`CLIPModel`, `CLIPVisionModelWithProjection`) vision weights ->
    the official layout: q/k/v stacked into `in_proj_*`, fc1/fc2 -> c_fc/c_proj,
    `visual_projection.weight` transposed into `proj`. Text-tower keys are ignored;
    vision keys that have no place are an error."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, v in sd.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = v
        elif key == "visual_projection.weight":
            out["proj"] = v.t().contiguous()
        elif key == "vision_model.embeddings.position_ids":
            continue  # a buffer of indices, not a weight
        elif m := _HF_LAYER.fullmatch(key):
            i, rest = m.groups()
            qm = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if qm:
                qkv.setdefault((i, qm.group(2)), {})[qm.group(1)] = v
            elif rest in _HF_BLOCK:
                out[f"transformer.resblocks.{i}.{_HF_BLOCK[rest]}"] = v
            else:
                unknown.append(key)
        elif key.startswith("vision_model."):
            unknown.append(key)
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            lacking = sorted({"q", "k", "v"} - set(parts))
            raise CheckpointError(f"Hugging Face CLIP layer {i} lacks {lacking} of self_attn.*_proj.{kind}")
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if unknown:
        raise CheckpointError(f"Hugging Face CLIP keys with no place in the teacher: {sorted(unknown)[:10]}")
    if "proj" not in out:
        raise CheckpointError(
            "the Hugging Face CLIP weights have no 'visual_projection.weight' (a CLIPVisionModel "
            "without projection); use the full CLIPModel or CLIPVisionModelWithProjection weights"
        )
    return out


def _inflate(weight_2d: Tensor, time_dim: int) -> Tensor:
    """[O, I, p, p] -> [O, I, t, p, p]: the 2D kernel on the centre frame, zeros elsewhere."""
    w = weight_2d.new_zeros(*weight_2d.shape[:2], time_dim, *weight_2d.shape[2:])
    w[:, :, time_dim // 2] = weight_2d
    return w


def _resample_positions(pos: Tensor, grid: int) -> Tensor:
    old = int(round((pos.shape[0] - 1) ** 0.5))
    if old == grid:
        return pos
    patches = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)])


def convert_clip_state_dict(sd: Mapping[str, Tensor], model: ClipTeacher) -> dict[str, Tensor]:
    """Any supported CLIP layout -> exactly `model`'s keys (patch conv inflated, positions
    resampled to the model's grid); missing or unexpected keys raise CheckpointError."""
    if any(k.startswith("vision_model.") for k in sd):
        out = hf_to_official(sd)
    elif any(k.startswith("visual.") for k in sd):
        out = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    else:
        out = dict(sd)
    w = out.get("conv1.weight")
    if w is not None and w.dim() == 4:
        out["conv1.weight"] = _inflate(w, model.kernel_size)
    if "positional_embedding" in out:
        out["positional_embedding"] = _resample_positions(
            out["positional_embedding"], model.input_resolution // model.patch_size
        )
    target = nn.Module.state_dict(model)
    missing = sorted(set(target) - set(out))
    unexpected = sorted(set(out) - set(target))
    shapes = sorted(k for k in set(target) & set(out) if tuple(target[k].shape) != tuple(out[k].shape))
    if missing or unexpected or shapes:
        parts = [
            f"{title} {keys[:8]}{' ...' if len(keys) > 8 else ''}"
            for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
            if keys
        ]
        raise CheckpointError("CLIP weights do not fit the teacher: " + "; ".join(parts))
    return out


def clip_teacher(
    name: str = "clip_b16", weights: Optional[Union[str, os.PathLike, Mapping]] = None, **kwargs
) -> ClipTeacher:
    """A frozen teacher of an official size (`CLIP_TEACHERS`), loaded from `weights` (a
    path or state dict in any supported layout) when given; in eval mode, no gradients."""
    if name not in CLIP_TEACHERS:
        raise ValueError(f"CLIP teacher {name!r} is not one of {', '.join(CLIP_TEACHERS)}")
    model = ClipTeacher(**{**CLIP_TEACHERS[name], **kwargs})
    if weights is not None:
        sd = weights if isinstance(weights, Mapping) else _read_weights(weights)
        model.load_state_dict(sd)
    model.requires_grad_(False)
    return model.eval()


def _read_weights(path: Union[str, os.PathLike]) -> Mapping[str, Tensor]:
    if str(path).endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{path} is a safetensors file but the safetensors package is not installed; "
                "install it or use the pytorch_model.bin of the same release"
            ) from None
        return load_file(str(path))
    sd, _ = read_checkpoint(path)
    return sd
