"""VideoMamba (Li et al., 2024) with the official parameter layout, plus a recurrent mode.

One file for the model, timm/nanoGPT style. Parameter names, shapes and initialisation
follow OpenGVLab/VideoMamba (`videomamba/video_sm/models/videomamba.py` and its
bidirectional `Mamba` from `mamba/mamba_ssm/modules/mamba_simple.py`), so official
checkpoints load key for key. The numerics follow the official *fast path*, the one the
released checkpoints were trained with:

* each block: `residual += drop_path(hidden)`; `hidden = RMSNorm(residual)` (the fused
  add+norm of mamba-ssm's triton layernorm, residual kept in fp32); `hidden = mixer(hidden)`;
* the mixer: `in_proj` -> x, z; forward direction = causal depthwise conv + SiLU, `x_proj`
  -> (dt, B, C), `dt_proj` without its bias (the bias goes to the scan as `delta_bias`,
  softplus inside), selective scan with D and the z gate fused; backward direction = the
  same with its own `*_b` parameters on the *flipped* sequence, x and z flipped together;
  `out_proj(forward + backward)`;
* the output is the final RMSNorm of the cls token (first token).

Everything between in_proj and out_proj (both directions' conv, x_proj, dt_proj, scan) is
one op, `vmstream.models.ops.mamba_inner`, in token-major layout [B, L, D] (what `nn.Linear`
produces, so nothing is transposed); the backward direction is the ops' `reverse=True`
instead of flip copies. Which backend runs (reference, fast CPU kernel, Triton, CUDA) is
the mixer's `scan_backend`, passed to every op it calls: None (the default) lets the ops
choose by the tensors' device; a model's constructor argument `scan_backend` sets it on
every mixer, `models.scan_backend.set_scan_backend` on a built one.

Matmul precision is likewise the model's own: the constructor argument `precision`
("fp32", the default and exact, or "bf16") and `models.precision.set_precision` on a
built one set each Mamba and PatchEmbed's `matmul_dtype` and cast their weights.

Recurrent (streaming) mode, see docs/design.md: a segment of T frames is embedded on its own
(its own cls token at its start, segment-local temporal positions, resampled when T differs
from `num_frames`); each layer's forward direction starts from the carried `StreamState`
and returns the new one; the backward direction runs inside the segment from zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from .card import ModelCard
from .mamba_init import init_dt_proj, s4d_real_log
from .ops import MixerDirection, add_rms_norm, mamba_inner
from .state import StateError, StreamState

__all__ = [
    "VideoMamba",
    "Mamba",
    "Block",
    "RMSNorm",
    "PatchEmbed",
    "DropPath",
    "SegmentOutput",
    "create_block",
    "create_layers",
    "resample_temporal_pos",
    "init_videomamba_weights",
    "norm_fp32",
    "PRECISIONS",
    "precision_dtype",
    "set_matmul_dtype",
]

# A precision's name -> the dtype of the big matmuls (None: their input's, fp32).
PRECISIONS: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16}


def precision_dtype(precision: str) -> Optional[torch.dtype]:
    """The matmul dtype of `precision` ("fp32" -> None, "bf16" -> bfloat16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def set_matmul_dtype(model: nn.Module, dtype: Optional[torch.dtype]) -> bool:
    """Every Mamba and PatchEmbed in `model` to matmul dtype `dtype` (their weights cast);
    whether there was any."""
    found = False
    for m in model.modules():
        if isinstance(m, (Mamba, PatchEmbed)):
            m.set_matmul_dtype(dtype)
            found = True
    return found


# --------------------------------------------------------------------------- helpers


def resample_temporal_pos(pos: Tensor, length: int) -> Tensor:
    """Temporal position embedding [1, T0, D] resampled to [1, length, D].

    Linear interpolation with align_corners=False, which is what the official fine-tuning
    does when a checkpoint's frame count differs; used for segments whose length differs
    from the model's `num_frames` (e.g. a stream's last, partial segment).
    """
    if pos.shape[1] == length:
        return pos
    if length < 1:
        raise ValueError(f"cannot resample temporal positions to {length} frames")
    return F.interpolate(pos.transpose(1, 2), size=length, mode="linear", align_corners=False).transpose(1, 2)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 like the fused kernel; x's dtype out."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


def norm_fp32(norm: nn.Module, x: Tensor) -> Tensor:
    """RMSNorm or LayerNorm of x computed in fp32 (returns fp32), like the fused add+norm."""
    if isinstance(norm, RMSNorm):
        return F.rms_norm(x.float(), (x.shape[-1],), norm.weight.float(), norm.eps)
    return F.layer_norm(
        x.float(), (x.shape[-1],), norm.weight.float(), None if norm.bias is None else norm.bias.float(), norm.eps
    )


class RMSNorm(nn.Module):
    """mamba-ssm's RMSNorm: a `weight`, no bias (so the state dict has only `*.weight`)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's DropPath, scale_by_keep)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (kernel_size, patch, patch): [B, C, T, H, W] -> [B, D, T', H', W'].

    `matmul_dtype` None: the conv runs in its input's dtype; else its weights are stored
    in this dtype and it returns fp32 (`models.precision`)."""

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        kernel_size=1,
        in_chans=3,
        embed_dim=768,
        matmul_dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        img_size = _pair(img_size)
        patch_size = _pair(patch_size)
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.tubelet_size = kernel_size
        self.proj = nn.Conv3d(
            in_chans, embed_dim, kernel_size=(kernel_size, *patch_size), stride=(kernel_size, *patch_size)
        )
        self.matmul_dtype: Optional[torch.dtype] = None
        if matmul_dtype is not None:
            self.set_matmul_dtype(matmul_dtype)

    def set_matmul_dtype(self, dtype: Optional[torch.dtype]) -> None:
        """Run the conv in `dtype` (None: its input's), its weights cast to it (fp32 for None)."""
        self.matmul_dtype = dtype
        self.proj.to(dtype or torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        md = self.matmul_dtype
        if md is None:
            return self.proj(x)
        return self.proj(x.to(md)).float()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# ----------------------------------------------------------------------------- mixer


class Mamba(nn.Module):
    """Bidirectional Mamba mixer with the official (mamba_simple + bimamba) parameters.

    Token-major in and out: [B, L, d_model]. `state` is the forward direction's
    (conv tail [B, d_inner, d_conv-1], ssm state [B, d_inner, d_state]) to start from;
    with `return_state` the new pair is returned too.

    `scan_backend`: the ops backend every scan, conv and fused op of this mixer runs on
    (None: chosen by the tensors' device, see `ops.dispatch`). `matmul_dtype` None: every
    matmul runs in its input's dtype (the exact default); else in_proj and out_proj
    weights are stored in this dtype (`models.precision`).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank="auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: Optional[int] = None,
        device=None,
        dtype=None,
        bimamba: bool = True,
        scan_backend: Optional[str] = None,
        matmul_dtype: Optional[torch.dtype] = None,
    ):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.scan_backend = scan_backend
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.bimamba = bimamba
        # Registration order = the official one, so state_dict() lists keys in the same order.
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = self._conv(conv_bias, factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        init_dt_proj(self.dt_proj, self.dt_rank, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.A_log = nn.Parameter(s4d_real_log(self.d_inner, d_state, device))  # kept in fp32
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # kept in fp32
        self.D._no_weight_decay = True
        if bimamba:
            self.A_b_log = nn.Parameter(s4d_real_log(self.d_inner, d_state, device))
            self.A_b_log._no_weight_decay = True
            self.conv1d_b = self._conv(conv_bias, factory)
            # As in the official code, the backward branch's x_proj_b / dt_proj_b keep
            # nn.Linear's default init here (VideoMamba re-initialises all Linears anyway).
            self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
            self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
            self.D_b = nn.Parameter(torch.ones(self.d_inner, device=device))
            self.D_b._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self.matmul_dtype: Optional[torch.dtype] = None
        if matmul_dtype is not None:
            self.set_matmul_dtype(matmul_dtype)

    def set_matmul_dtype(self, dtype: Optional[torch.dtype]) -> None:
        """Run in_proj and out_proj in `dtype` (None: their input's), their weights cast to
        it (fp32 for None)."""
        self.matmul_dtype = dtype
        for lin in (self.in_proj, self.out_proj):
            lin.to(dtype or torch.float32)

    def _conv(self, conv_bias, factory) -> nn.Conv1d:
        # Only its weight [d_inner, 1, d_conv] and bias are used (by ops.causal_conv1d);
        # padding is the official one, for anyone calling the module directly.
        return nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=self.d_conv,
            groups=self.d_inner,
            padding=self.d_conv - 1,
            bias=conv_bias,
            **factory,
        )

    def _matmul(self, linear: nn.Linear, x: Tensor, keep: bool = False) -> Tensor:
        """`linear(x)`; in a reduced-precision mode (`models.precision`) its weight is
        stored in `matmul_dtype`, x is cast to it and the product comes back as fp32 (or,
        with `keep`, stays in `matmul_dtype` for `mamba_inner`, which widens it in its
        kernel), so everything around the matmuls (conv, scan, its state and sums) stays fp32."""
        md = self.matmul_dtype
        if md is None:
            return linear(x)
        out = linear(x.to(md))
        return out if keep else out.float()

    def forward(
        self,
        hidden_states: Tensor,
        state: Optional[tuple[Tensor, Tensor]] = None,
        return_state: bool = False,
        keep_matmul_dtype: bool = False,
    ):
        """With `keep_matmul_dtype` the output stays in a reduced-precision mode's matmul
        dtype (the block's add+norm widens it in its own pass); else it is fp32."""
        xz = self._matmul(self.in_proj, hidden_states, keep=True)  # [B, L, 2*d_inner]
        conv_tail, ssm_state = state if state is not None else (None, None)
        # Official bimamba: inner(xz.flip(-1)) with the *_b parameters, flipped back.
        # Scanning the flipped sequence from its start == scanning ours from the end, from
        # zero: the second direction of `mamba_inner`. Its y comes out in the matmul dtype
        # (the rounding out_proj's input cast would do).
        y = mamba_inner(
            xz,
            self.directions(),
            conv_tail,
            ssm_state,
            return_state=return_state,
            out_dtype=self.matmul_dtype,
            backend=self.scan_backend,
        )
        y, new_state = y if return_state else (y, None)
        out = self._matmul(self.out_proj, y, keep=keep_matmul_dtype)
        return (out, new_state) if return_state else out

    def directions(self) -> list[MixerDirection]:
        dirs = [
            MixerDirection(
                self.conv1d.weight,
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.dt_proj.bias,
                self._neg_exp(self.A_log, "forward"),
                self.D,
            )
        ]
        if self.bimamba:
            dirs.append(
                MixerDirection(
                    self.conv1d_b.weight,
                    self.conv1d_b.bias,
                    self.x_proj_b.weight,
                    self.dt_proj_b.weight,
                    self.dt_proj_b.bias,
                    self._neg_exp(self.A_b_log, "backward"),
                    self.D_b,
                )
            )
        return dirs

    def _neg_exp(self, A_log: Tensor, slot: str) -> Tensor:
        """A = -exp(A_log) in fp32, cached between calls when no gradient is needed.

        Tiny, but 2 ops per direction per layer per segment; on a busy CPU every small op
        can cost a scheduler slice while torch's worker threads wait, so inference skips it.
        The cache key (storage, version counter) changes on load_state_dict, .to(), optimiser steps.
        """
        if torch.is_grad_enabled():  # training (even with A frozen, autograd may save A)
            return -torch.exp(A_log.float())
        try:
            key = (A_log.data_ptr(), A_log._version, A_log.device)
        except RuntimeError:  # parameters created under inference_mode have no version counter
            return -torch.exp(A_log.float())
        cache = self.__dict__.setdefault("_A_cache", {})  # slot -> (parameter, key, A)
        hit = cache.get(slot)
        if hit is None or hit[0] is not A_log or hit[1] != key:
            with torch.no_grad():
                hit = cache[slot] = (A_log, key, -torch.exp(A_log.float()))
        return hit[2]


# ----------------------------------------------------------------------------- block


class Block(nn.Module):
    """Add -> norm -> mixer, returning (mixer output, residual), the official layout.

    The fused add+norm (mamba-ssm's `rms_norm_fn(prenorm=True)`) and the unfused path
    compute the same thing; we run the plain PyTorch form for both settings.
    """

    def __init__(self, dim, mixer_cls, norm_cls=nn.LayerNorm, residual_in_fp32=False, drop_path=0.0):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer_cls(dim)
        self.norm = norm_cls(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self,
        hidden_states: Tensor,
        residual: Optional[Tensor] = None,
        state: Optional[tuple[Tensor, Tensor]] = None,
        return_state: bool = False,
        use_checkpoint: bool = False,
    ):
        in_dtype = hidden_states.dtype
        fast = (
            self.residual_in_fp32
            and isinstance(self.norm, RMSNorm)
            and not (self.training and isinstance(self.drop_path, DropPath))
        )
        if fast:
            # The same add and norm as one pass (ops.add_rms_norm); in a reduced-precision
            # mode the normed output comes out in the mixer's matmul dtype, the cast in_proj
            # would do.
            hidden_states, residual = add_rms_norm(
                hidden_states,
                residual,
                self.norm.weight,
                self.norm.eps,
                out_dtype=self.mixer.matmul_dtype or in_dtype,
                backend=self.mixer.scan_backend,
            )
        else:
            residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
            if self.residual_in_fp32:
                residual = residual.to(torch.float32)
            # As the fused kernel: normalise the (fp32) residual in fp32, output in the input's dtype.
            hidden_states = norm_fp32(self.norm, residual).to(in_dtype)
        if use_checkpoint:
            out = torch.utils.checkpoint.checkpoint(self.mixer, hidden_states, state, return_state, use_reentrant=False)
        elif fast and not torch.is_grad_enabled() and isinstance(self.mixer, Mamba):
            # Inference: a bf16 mixer output goes to the next block's add+norm as it is
            # (VideoMamba._blocks widens the last one), one elementwise pass less per layer.
            out = self.mixer(hidden_states, state, return_state, keep_matmul_dtype=True)
        else:
            out = self.mixer(hidden_states, state, return_state)
        if return_state:
            hidden_states, new_state = out
            return hidden_states, residual, new_state
        return out, residual, None


def create_block(
    d_model,
    ssm_cfg=None,
    norm_epsilon=1e-5,
    drop_path=0.0,
    rms_norm=True,
    residual_in_fp32=True,
    layer_idx=None,
    bimamba=True,
    device=None,
    dtype=None,
    scan_backend=None,
) -> Block:
    factory = {"device": device, "dtype": dtype}
    ssm_cfg = dict(ssm_cfg or {})

    def mixer_cls(dim):
        return Mamba(dim, layer_idx=layer_idx, bimamba=bimamba, scan_backend=scan_backend, **ssm_cfg, **factory)

    def norm_cls(dim):
        if rms_norm:
            return RMSNorm(dim, eps=norm_epsilon, **factory)
        return nn.LayerNorm(dim, eps=norm_epsilon, **factory)

    block = Block(d_model, mixer_cls, norm_cls=norm_cls, drop_path=drop_path, residual_in_fp32=residual_in_fp32)
    block.layer_idx = layer_idx
    return block


def create_layers(d_model, depth, drop_path_rate=0.0, **block_kw) -> tuple[nn.Module, nn.ModuleList]:
    """(final drop path, the `depth` blocks) with the official stochastic depth: block i
    drops the *previous* block's mixer output with rate dpr[i-1] (block 0 has nothing to
    drop), and the final add+norm drops the last block's output with the full rate."""
    dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
    inter_dpr = [0.0] + dpr
    final = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
    return final, nn.ModuleList(
        [create_block(d_model, layer_idx=i, drop_path=inter_dpr[i], **block_kw) for i in range(depth)]
    )


# ----------------------------------------------------------------------------- model


def init_videomamba_weights(model: nn.Module, depth: int, initializer_cfg: dict) -> None:
    """The official initialisation of a VideoMamba-style model (classifier or pretraining student).

    The official order: every Linear trunc_normal(0.02) with zero bias (this also
    overrides the mixer's dt_proj init, exactly as in the official model), LayerNorms
    to 1/0, pos_embed trunc_normal(0.02); then the GPT-2 style rescale of out_proj.
    """

    def segm_init(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    model.apply(segm_init)
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    rescale = initializer_cfg.get("rescale_prenorm_residual", True)
    n_res = initializer_cfg.get("n_residuals_per_layer", 1)
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
            nn.init.zeros_(m.bias)
        if rescale and isinstance(m, Mamba):
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                m.out_proj.weight /= math.sqrt(n_res * depth)


@dataclass
class SegmentOutput:
    """What `forward_segment` returns: the cls embedding, the head's logits, the next state."""

    features: Tensor  # [B, embed_dim]
    logits: Tensor  # [B, num_classes] ([B, embed_dim] when the model has no head)
    state: StreamState


class VideoTrunk(nn.Module):
    """The video trunk shared by the classifier, the video-text vision encoder and the
    masked-pretraining student: patch embedding, cls token, spatial and temporal position
    embeddings, the block stack and its final norm, under the official parameter names.

    A subclass calls `_build_embedding` then (after any modules that the official layout
    registers in between, e.g. the classifier's head) `_build_blocks`; the final norm is
    registered under the class's `final_norm_name` (`norm_f` in the classifier, `norm` in
    the pretraining models), so each official checkpoint loads key for key. The subclass's
    constructor takes `scan_backend` (given to `_build_blocks`, so to every mixer) and
    `precision` (applied with `_apply_precision` once the weights are initialised, so a
    bf16 model starts from the fp32 initialisation, rounded).
    """

    final_norm_name = "norm_f"

    def _build_embedding(
        self,
        *,
        img_size,
        patch_size,
        kernel_size,
        channels,
        embed_dim,
        num_frames,
        drop_rate=0.0,
        residual_in_fp32=True,
        use_checkpoint=False,
        checkpoint_num=0,
        device=None,
        dtype=None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        if num_frames % kernel_size:
            raise ValueError(f"num_frames={num_frames} is not a multiple of kernel_size={kernel_size}")
        self.residual_in_fp32 = residual_in_fp32
        self.use_checkpoint = use_checkpoint
        self.checkpoint_num = checkpoint_num
        self.d_model = self.num_features = self.embed_dim = embed_dim
        self.num_frames = num_frames
        self.kernel_size = kernel_size
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, kernel_size=kernel_size, in_chans=channels, embed_dim=embed_dim
        )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **factory))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim, **factory))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames // kernel_size, embed_dim, **factory))
        self.pos_drop = nn.Dropout(p=drop_rate)

    def _build_blocks(
        self,
        *,
        embed_dim,
        depth,
        drop_path_rate,
        ssm_cfg,
        norm_epsilon,
        rms_norm,
        bimamba,
        scan_backend=None,
        device=None,
        dtype=None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        self.drop_path, self.layers = create_layers(
            embed_dim,
            depth,
            drop_path_rate,
            ssm_cfg=ssm_cfg,
            norm_epsilon=norm_epsilon,
            rms_norm=rms_norm,
            residual_in_fp32=self.residual_in_fp32,
            bimamba=bimamba,
            scan_backend=scan_backend,
            **factory,
        )
        setattr(
            self, self.final_norm_name, (RMSNorm if rms_norm else nn.LayerNorm)(embed_dim, eps=norm_epsilon, **factory)
        )

    def _apply_precision(self, precision: str) -> None:
        dtype = precision_dtype(precision)
        if dtype is not None:
            set_matmul_dtype(self, dtype)

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self, self.final_norm_name)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "temporal_pos_embedding"}

    def get_num_layers(self) -> int:
        return len(self.layers)

    @property
    def img_size(self) -> int:
        return self.patch_embed.img_size[0]

    # ------------------------------------------------------------------- embedding
    def embed(self, x: Tensor, use_image: bool = False) -> Tensor:
        """Clip [B, C, T, H, W] -> tokens [B, 1 + T'*h*w, D]: the cls token, then the patches
        frame by frame, with spatial and (segment-local) temporal positions added; an image
        (`use_image`, the official pretraining's image batches) gets no temporal position."""
        self._check_clip(x)
        x = self.patch_embed(x)  # [B, D, T', h, w]
        B, D, T, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B, T, h * w, D)
        # Same order of additions as the official code: (patch + pos) + temporal.
        x = x + self.pos_embed[:, None, 1:, :]
        if not use_image:
            x = x + resample_temporal_pos(self.temporal_pos_embedding, T)[:, :, None, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(B, -1, -1)
        return self.pos_drop(torch.cat([cls, x.reshape(B, T * h * w, D)], dim=1))

    def _check_clip(self, x: Tensor) -> None:
        C = self.patch_embed.proj.in_channels
        if x.dim() != 5 or x.shape[1] != C:
            raise ValueError(f"clip must be [B, {C}, T, H, W]; got shape {tuple(x.shape)}")
        H, W = self.patch_embed.img_size
        if tuple(x.shape[-2:]) != (H, W):
            raise ValueError(
                f"clip frames are {x.shape[-2]}x{x.shape[-1]} but the model takes {H}x{W} "
                f"(resize when decoding, or load the model with img_size={x.shape[-2]} so its "
                "position embedding is resampled)"
            )
        T = x.shape[2]
        if T < self.kernel_size or T % self.kernel_size:
            raise ValueError(f"clip has {T} frames; it needs a positive multiple of kernel_size={self.kernel_size}")

    # -------------------------------------------------------------------- backbone
    def _checkpointed(self, i: int) -> bool:
        return self.use_checkpoint and i < self.checkpoint_num and self.training and torch.is_grad_enabled()

    def _blocks(self, hidden: Tensor, state: Optional[StreamState], return_state: bool):
        residual, dtype_in = None, hidden.dtype
        tails, ssms = [], []
        for i, layer in enumerate(self.layers):
            layer_state = state.layer(i) if state is not None else None
            hidden, residual, new = layer(
                hidden, residual, layer_state, return_state, use_checkpoint=self._checkpointed(i)
            )
            if return_state:
                tails.append(new[0])
                ssms.append(new[1])
        new_state = None
        if return_state:
            tag = state.tag if state is not None else ""
            new_state = StreamState(torch.stack(tails).float(), torch.stack(ssms).float(), tag)
        if hidden.dtype != dtype_in and not torch.is_autocast_enabled("cpu"):  # a kept bf16 mixer output
            hidden = hidden.to(dtype_in)
        return hidden, residual, new_state

    def _final_norm(self, hidden: Tensor, residual: Tensor) -> Tensor:
        return norm_fp32(self.final_norm, residual + self.drop_path(hidden)).to(hidden.dtype)

    def forward_visible(
        self, tokens: Tensor, return_index, need_output: bool = True
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The official pretraining forward of the blocks over (already masked) tokens
        [B, L, D]: (final-normed output [B, L, D] or None, the distilled features
        [K, B, L, D] or None when `return_index` is empty).

        The features come from the residual stream, as in both official pretraining models
        (`video_sm/models/videomamba_pretrain.py` and `video_mm/.../videomamba.py`, whose
        loops are the same): after block idx, `(idx - 1) in return_index` appends the
        shared final norm of the residual entering block idx (for a return layer r below the
        last, the residual after r's output is added); for the last layer, the *un-normed*
        residual entering its mixer. The official test has no `idx >= 1` guard, and needs
        none: `return_layers` never yields -1.

        `need_output=False` (the masked student, whose official forward discards the final
        norm's output) skips the last block's mixer: its output reaches neither the
        features nor anything returned, so the features are exactly the official ones.
        """
        hidden, residual, feats = tokens, None, []
        last = len(self.layers) - 1
        for idx, layer in enumerate(self.layers):
            if idx == last and not need_output:
                residual = hidden if residual is None else residual + layer.drop_path(hidden)
                if self.residual_in_fp32:
                    residual = residual.float()
            else:
                hidden, residual, _ = layer(hidden, residual, use_checkpoint=self._checkpointed(idx))
            if (idx - 1) in return_index:
                feats.append(norm_fp32(self.final_norm, residual))
        if last in return_index:
            feats.append(residual)
        out = self._final_norm(hidden, residual) if need_output else None
        return out, (torch.stack(feats) if feats else None)


class VideoMamba(VideoTrunk):
    """The official VideoMamba video classifier (the `VisionMamba` of video_sm), parameter for parameter."""

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        depth=24,
        embed_dim=192,
        channels=3,
        num_classes=1000,
        drop_rate=0.0,
        drop_path_rate=0.1,
        ssm_cfg=None,
        norm_epsilon=1e-5,
        initializer_cfg=None,
        # Accepted because the official configs pass it (video_mm exp_pt/*/config.py,
        # video_sm's videomamba_* factories): the fused and unfused add+norm compute the
        # same thing, and vmstream runs one form for both, so the value is not read.
        fused_add_norm=True,
        rms_norm=True,
        residual_in_fp32=True,
        bimamba=True,
        # video
        kernel_size=1,
        num_frames=8,
        fc_drop_rate=0.0,
        device=None,
        dtype=None,
        # activation checkpointing of the first `checkpoint_num` blocks' mixers (training)
        use_checkpoint=False,
        checkpoint_num=0,
        # the ops backend of every mixer (None: by the tensors' device) and the matmul
        # precision ("fp32" or "bf16"), see the module docstring
        scan_backend: Optional[str] = None,
        precision: str = "fp32",
    ):
        super().__init__()
        precision_dtype(precision)  # a bad name fails before any building
        self._build_embedding(
            img_size=img_size,
            patch_size=patch_size,
            kernel_size=kernel_size,
            channels=channels,
            embed_dim=embed_dim,
            num_frames=num_frames,
            drop_rate=drop_rate,
            residual_in_fp32=residual_in_fp32,
            use_checkpoint=use_checkpoint,
            checkpoint_num=checkpoint_num,
            device=device,
            dtype=dtype,
        )
        self.num_classes = num_classes
        self.bimamba = bimamba
        self.head_drop = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes, device=device, dtype=dtype) if num_classes > 0 else nn.Identity()
        self._build_blocks(
            embed_dim=embed_dim,
            depth=depth,
            drop_path_rate=drop_path_rate,
            ssm_cfg=ssm_cfg,
            norm_epsilon=norm_epsilon,
            rms_norm=rms_norm,
            bimamba=bimamba,
            scan_backend=scan_backend,
            device=device,
            dtype=dtype,
        )

        init_videomamba_weights(self, depth, initializer_cfg or {})
        self._apply_precision(precision)
        mixer = self.layers[0].mixer if depth else None
        self.d_inner = mixer.d_inner if mixer else 0
        self.d_state = mixer.d_state if mixer else 0
        self.d_conv = mixer.d_conv if mixer else 0
        # What the model is and wants as input (timm's pretrained_cfg, typed); the loaders
        # replace it with one carrying the checkpoint fields and class names.
        self.card = ModelCard(
            num_frames=num_frames,
            img_size=self.patch_embed.img_size[0],
            patch_size=self.patch_embed.patch_size[0],
            embed_dim=embed_dim,
            depth=depth,
            num_classes=num_classes,
            in_chans=channels,
        )

    def forward_tokens(self, tokens: Tensor, state: Optional[StreamState] = None) -> tuple[Tensor, StreamState]:
        """Run the blocks and the final norm over one piece of a token sequence [B, L, D].

        The forward direction starts from `state` (zeros when None) and the new state is
        returned; the backward direction sees only this piece. So with `bimamba=False`,
        feeding a sequence in pieces equals one pass; with `bimamba=True` a piece is a
        segment. Returns (normed hidden states [B, L, D], new state).
        """
        if state is None:
            state = self.init_state(tokens.shape[0], device=tokens.device)
        self._check_state(state, tokens.shape[0], tokens.device)
        hidden, residual, new_state = self._blocks(tokens, state, return_state=True)
        return self._final_norm(hidden, residual), new_state

    def forward_features(self, x: Tensor) -> Tensor:
        """The official clip forward: [B, C, T, H, W] -> final-norm cls feature [B, D]."""
        hidden, residual, _ = self._blocks(self.embed(x), None, return_state=False)
        return self._final_norm(hidden[:, 0], residual[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.head_drop(self.forward_features(x)))

    # -------------------------------------------------------------- recurrent mode
    def state_spec(self) -> dict:
        """The StreamState shape this model needs (for `StreamState.check` / `from_bytes(expect=)`)."""
        return {"n_layers": len(self.layers), "d_inner": self.d_inner, "d_conv": self.d_conv, "d_state": self.d_state}

    def init_state(self, batch_size: int, device=None) -> StreamState:
        """The state of streams that have seen nothing: zeros, float32."""
        if device is None:
            device = self.cls_token.device
        return StreamState.zeros(
            len(self.layers),
            batch_size,
            self.d_inner,
            self.d_conv,
            self.d_state,
            device=device,
            tag=self.card.checkpoint_digest,
        )

    def _check_state(self, state: StreamState, batch_size: int, device) -> None:
        if not isinstance(state, StreamState):
            raise TypeError(f"state must be a StreamState (from model.init_state), got {type(state).__name__}")
        state.check(batch_size=batch_size, **self.state_spec())
        digest = self.card.checkpoint_digest
        if state.tag and digest and state.tag != digest:
            raise StateError(
                f"state was made by checkpoint {state.tag!r}, this model is {digest!r}; "
                "a stream cannot continue on different weights"
            )
        if state.device != torch.device(device):
            raise StateError(f"state is on {state.device} but the input is on {device}; move it with state.to()")

    def forward_segment(self, clip: Tensor, state: Optional[StreamState] = None) -> SegmentOutput:
        """One segment of B streams: clip [B, C, T, H, W] and their carried state.

        T may differ from `num_frames` (temporal positions are resampled), e.g. for a
        stream's last, shorter segment. Returns features, logits and the next state; the
        given state is not modified. For inference, call it under `torch.inference_mode()`;
        in training, gradients flow through the state (`state.detach()` truncates them).
        """
        tokens = self.embed(clip)
        if state is None:
            state = self.init_state(clip.shape[0], device=clip.device)
        self._check_state(state, clip.shape[0], clip.device)
        hidden, residual, new_state = self._blocks(tokens, state, return_state=True)
        features = self._final_norm(hidden[:, 0], residual[:, 0])
        return SegmentOutput(features=features, logits=self.head(self.head_drop(features)), state=new_state)
