"""The masked-pretraining student: VideoMamba that sees only the visible tokens and
predicts the CLIP teacher's features at those places (the official `VisionMamba` of
`videomamba/video_sm/models/videomamba_pretrain.py`, parameter for parameter).

What the official forward computes, and so what this one computes (the released
`*_mask_pt_*` checkpoints were trained with the fused add+norm path, which is the one
reproduced here):

* tokens embedded as the classifier does (cls + spatial positions, temporal positions on
  the patches), then the masked ones *dropped*: `tokens[~mask]` keeps the visible tokens
  in order, cls first, and the blocks run on that compacted sequence (the bidirectional
  scan sees neighbours that may be far apart in the clip);
* the distilled features are taken from the residual stream: for a return layer r below
  the last, the shared final `norm` of the residual entering block r + 1; for the last
  layer, the *un-normalised* residual entering the last block's mixer. (The official
  final fused add+norm returns only its normed output, which is discarded, so `residual`
  still holds the last block's input. Hence the last block's mixer output and, with one
  return layer, the final `norm` never reach the loss; we skip computing that mixer.)
* each feature gets a fixed sinusoidal position table (1 + T*h*w rows, the cls row 0)
  added at the visible places, then its own `Linear_Decoder`: Linear -> LayerNorm ->
  L2 normalisation (`clip_norm_type='l2'`).

Output [K, B, 1 + visible, clip_output_dim], K = `clip_return_layer`, layers in
ascending depth order (the teacher's order). A pretrained student loads into the
classifier with `vmstream.models.load_checkpoint` (decoder dropped, `norm` -> `norm_f`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .videomamba import VideoTrunk, init_videomamba_weights, precision_dtype

__all__ = ["VideoMambaPretrain", "LinearDecoder", "sinusoid_table", "return_layers", "decode_visible"]


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """[1, n_position, dim]: pos / 10000^(2*(j//2)/dim), sin on even j, cos on odd j
    (the "attention is all you need" table the official student uses), float32."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


def return_layers(depth: int, count: int, interval: float, what: str) -> list[int]:
    """The official `return_index`: the `count` layers, every `interval`, counted back
    from the last of `depth`, whose features are distilled (`what` names the network in
    the error)."""
    index = [depth - int(i * interval) - 1 for i in range(count)]
    if count < 1 or min(index) < 0:
        raise ValueError(f"clip_return_layer={count} with interval {interval} reaches below layer 0 of {what}")
    return index


def decode_visible(decoders: nn.ModuleList, feats: Tensor, table: Tensor, mask: Tensor) -> Tensor:
    """[K, B, 1 + visible, D] features + the fixed positions `table` [1, 1 + T*N, D] at the
    visible places of `mask`, each through its decoder -> [K, B, 1 + visible, out]."""
    B = feats.shape[1]
    pos = table.to(feats.dtype).expand(B, -1, -1)[~mask].view(B, -1, feats.shape[-1])
    feats = feats + pos.unsqueeze(0)
    return torch.stack([dec(feats[i]) for i, dec in enumerate(decoders)])


class LinearDecoder(nn.Module):
    """Linear -> LayerNorm -> optional L2 normalisation (the official `Linear_Decoder`;
    its state dict keys are `head.*` and `norm.*`)."""

    def __init__(self, output_dim: int = 768, embed_dim: int = 768, clip_norm_type: str = "l2"):
        super().__init__()
        if clip_norm_type not in ("l2", "none"):
            raise ValueError(f"clip_norm_type must be 'l2' or 'none', got {clip_norm_type!r}")
        self.clip_norm_type = clip_norm_type
        self.head = nn.Linear(embed_dim, output_dim)
        self.norm = nn.LayerNorm(output_dim)
        # The official decoder's own init; the student's init re-initialises it afterwards
        # (trunc_normal Linear), as the official constructor does too.
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.head(x))
        if self.clip_norm_type == "l2":
            x = x / x.norm(dim=-1, keepdim=True)
        return x


class VideoMambaPretrain(VideoTrunk):
    """The official masked-pretraining student (`videomamba_middle_pretrain` is depth=32,
    embed_dim=576). Keywords are the official ones, plus `scan_backend` and `precision`
    (`VideoMamba`'s)."""

    final_norm_name = "norm"

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        depth=24,
        embed_dim=192,
        channels=3,
        drop_path_rate=0.0,
        ssm_cfg=None,
        norm_epsilon=1e-5,
        initializer_cfg=None,
        # Accepted because the official factories pass it (video_sm `videomamba_*_pretrain`);
        # the fused and unfused add+norm compute the same thing, so it is not read.
        fused_add_norm=True,
        rms_norm=True,
        residual_in_fp32=True,
        bimamba=True,
        kernel_size=1,
        num_frames=8,
        device=None,
        dtype=None,
        use_checkpoint=False,
        checkpoint_num=0,
        clip_decoder_embed_dim=768,
        clip_output_dim=512,
        clip_norm_type="l2",
        clip_return_layer=1,
        clip_student_return_interval=1,
        scan_backend=None,
        precision="fp32",
    ):
        super().__init__()
        precision_dtype(precision)  # a bad name fails before any building
        if clip_decoder_embed_dim != embed_dim:
            # The decoder reads the student's hidden states directly.
            raise ValueError(f"clip_decoder_embed_dim={clip_decoder_embed_dim} must equal embed_dim={embed_dim}")
        self.return_index = return_layers(
            depth, clip_return_layer, clip_student_return_interval, f"a depth-{depth} student"
        )
        self.depth = depth
        # Registration order = the official one (state_dict keys in the same order).
        self._build_embedding(
            img_size=img_size,
            patch_size=patch_size,
            kernel_size=kernel_size,
            channels=channels,
            embed_dim=embed_dim,
            num_frames=num_frames,
            residual_in_fp32=residual_in_fp32,
            use_checkpoint=use_checkpoint,
            checkpoint_num=checkpoint_num,
            device=device,
            dtype=dtype,
        )
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
        self.clip_decoder = nn.ModuleList(
            [LinearDecoder(clip_output_dim, clip_decoder_embed_dim, clip_norm_type) for _ in range(clip_return_layer)]
        )
        # Fixed, not a parameter, not in the state dict (as the official plain attribute).
        num_patches = self.patch_embed.num_patches
        self.register_buffer(
            "clip_pos_embed",
            sinusoid_table(num_patches * num_frames // kernel_size + 1, clip_decoder_embed_dim),
            persistent=False,
        )
        init_videomamba_weights(self, depth, initializer_cfg or {})
        self._apply_precision(precision)

    @property
    def num_tokens(self) -> int:
        """1 + T'*h*w: the mask's length."""
        return self.clip_pos_embed.shape[1]

    def _check_clip(self, x: Tensor) -> None:
        # The official student has no temporal resampling: it takes exactly num_frames.
        C = self.patch_embed.proj.in_channels
        H, W = self.patch_embed.img_size
        if x.dim() != 5 or x.shape[1] != C or tuple(x.shape[-2:]) != (H, W) or x.shape[2] != self.num_frames:
            raise ValueError(
                f"video must be [B, {C}, {self.num_frames}, {H}, {W}] for this student; got shape {tuple(x.shape)}"
            )

    def _check_mask(self, mask: Tensor, batch: int) -> None:
        if mask.dtype != torch.bool or mask.shape != (batch, self.num_tokens):
            raise ValueError(
                f"mask must be a bool tensor [B={batch}, {self.num_tokens}] (True = masked, cls "
                f"column first); got {mask.dtype} {tuple(mask.shape)}"
            )
        if mask[:, 0].any():
            raise ValueError("mask hides the cls token (column 0); the cls token must stay visible")
        counts = (~mask).sum(dim=1)
        if (counts != counts[0]).any():
            raise ValueError(f"every sample must keep the same number of visible tokens; got {counts.tolist()}")

    def forward_features(self, x: Tensor, mask: Tensor) -> Tensor:
        """The distilled hidden states [K, B, 1 + visible, D] (see the module docstring)."""
        tokens = self.embed(x)
        B, _, D = tokens.shape
        self._check_mask(mask, B)
        _, feats = self.forward_visible(tokens[~mask].reshape(B, -1, D), self.return_index, need_output=False)
        return feats

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """video [B, C, T, H, W], mask [B, 1 + T'*h*w] (True = masked) -> predicted teacher
        features at the visible places [K, B, 1 + visible, clip_output_dim]."""
        return decode_visible(self.clip_decoder, self.forward_features(x, mask), self.clip_pos_embed, mask)
