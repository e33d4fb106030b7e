"""The CPU proof that multimodal pretraining aligns video and text
(`configs/pretrain/synthetic_multimodal.yaml`).

Synthetic pairs made on the fly: a small or big coloured square on a noisy frame with a
grey distractor; in a video it drifts, in an image (a one-frame video) it stands still.
Captions say what is seen: "a big red square moving", "a small blue square". The text vocabulary is a small WordPiece file written next to the run.
A tiny video-text model is pretrained through the real two-stage loop
(`mm_pretrain.multimodal_fit`: a fixed random tiny CLIP teacher, attention masks, UTA +
VTC + VTM + MLM, then the unmasked stage), and scored before and after on held-out
videos: video-to-text retrieval among all the video captions (6 colours x 2 sizes), top-1, with the
official similarity. Printed, one figure a line:

    vtc_loss_first=  vtc_loss_last=     mean VTC of the first / last 5 steps
    mlm_loss_first=  mlm_loss_last=
    vtm_loss_first=  vtm_loss_last=
    uta_loss_first=  uta_loss_last=     (masked stage)
    retrieval_r1_before=  retrieval_r1_after=  chance_r1=
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from vmstream.models.card import IMAGENET_MEAN, IMAGENET_STD
from vmstream.models.tokenizer import BertTokenizer

from .mm_model import VideoTextPretrain
from .mm_pretrain import build_mm_model, build_mm_teacher, multimodal_fit
from .model_setup import seed_everything
from .recipes import TrainConfig

__all__ = [
    "COLOURS",
    "SIZES",
    "caption",
    "write_vocab",
    "SyntheticPairs",
    "video_captions",
    "retrieval_r1",
    "run_synthetic_multimodal",
]

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 40),
    "blue": (40, 70, 230),
    "yellow": (230, 210, 30),
    "purple": (170, 40, 210),
    "cyan": (30, 210, 210),
}
SIZES = ("small", "big")
_WORDS = ["a", "square", "moving"] + list(SIZES) + list(COLOURS)


def write_vocab(path: str) -> str:
    """A WordPiece vocabulary with BERT's special tokens and the captions' words."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _WORDS
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def caption(colour: str, size: str, video: bool) -> str:
    return f"a {size} {colour} square" + (" moving" if video else "")


def video_captions() -> list[str]:
    return [caption(c, s, True) for c in COLOURS for s in SIZES]


def _clip(rng: np.random.Generator, colour: str, big: bool, frames: int, size: int) -> np.ndarray:
    """A small or big square of `colour` (drifting in a video) and a grey distractor on a
    noisy background: uint8 [T, H, W, 3]."""
    v = rng.uniform(70, 110) + rng.normal(0, 25, size=(frames, size, size, 3))
    s = size // 4
    y, x = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
    v[:, y : y + s, x : x + s] = rng.uniform(120, 200)
    side = int(size * (rng.uniform(0.45, 0.6) if big else rng.uniform(0.15, 0.25)))
    span = size - side
    y0, x0 = int(rng.integers(0, span + 1)), int(rng.integers(0, span + 1))
    dy, dx = rng.integers(-2, 3, size=2)
    shade = np.asarray(COLOURS[colour]) * rng.uniform(0.85, 1.1)
    for t in range(frames):
        yy, xx = int(np.clip(y0 + dy * t, 0, span)), int(np.clip(x0 + dx * t, 0, span))
        v[t, yy : yy + side, xx : xx + side] = shade
    return np.clip(v, 0, 255).astype(np.uint8)


class SyntheticPairs(Dataset):
    """`n` fixed pairs of one media type, items as `mm_data.MediaTextDataset`'s."""

    def __init__(self, n: int, media: str, frames: int, size: int, seed: int):
        rng = np.random.default_rng(seed)
        self.media = media
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
        self.items = []
        colours = list(COLOURS)
        video = media == "video"
        for i in range(n):
            c, z = colours[i % len(colours)], SIZES[(i // len(colours)) % len(SIZES)]
            clip = _clip(rng, c, z == "big", frames if video else 1, size)
            x = (torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 255.0 - mean) / std
            # idx: the caption's class, so that pairs with the same caption are positives of each
            # other (the official `has_multi_vision_gt` keying by caption), as captions repeat here
            cls = colours.index(c) * len(SIZES) + SIZES.index(z)
            self.items.append({"x": x, "caption": caption(c, z, video), "idx": cls, "media": media})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


@torch.no_grad()
def retrieval_r1(model: VideoTextPretrain, tok: BertTokenizer, videos: SyntheticPairs, max_len: int) -> float:
    """Video-to-text top-1 among the 12 video captions (official similarity: the mean over
    frames of the cosine of the projected per-frame features)."""
    was = model.training
    model.eval()
    captions = video_captions()
    t = tok(captions, max_length=max_len, padding="max_length", warn=False)
    text = model.encode_text(t.input_ids, t.attention_mask).features
    x = torch.stack([it["x"] for it in videos.items])
    sims = torch.cat([model.similarity(model.encode_video(x[i : i + 32]).features, text) for i in range(0, len(x), 32)])
    truth = torch.tensor([captions.index(it["caption"]) for it in videos.items])
    model.train(was)
    return float((sims.argmax(1) == truth).float().mean())


def _mean(record: list, key: str, first: bool, n: int = 5) -> float:
    vals = [r[key] for r in record if r.get(key)]
    vals = vals[:n] if first else vals[-n:]
    return float(np.mean(vals)) if vals else float("nan")


def run_synthetic_multimodal(cfg: TrainConfig, print_fn=print, should_stop=None) -> Optional[dict]:
    """Pretrain on synthetic pairs and print the figures; None when stopped early."""
    s = cfg.synthetic_multimodal
    run_dir = cfg.output_dir or tempfile.mkdtemp(prefix="vmstream_mm_")
    os.makedirs(run_dir, exist_ok=True)
    vocab = write_vocab(os.path.join(run_dir, "vocab.txt"))
    cfg = cfg.model_copy(update={"multimodal": cfg.multimodal.model_copy(update={"vocab": vocab})})
    tok = BertTokenizer(vocab, max_length=cfg.multimodal.max_txt_l)
    size, frames = cfg.input_size, cfg.num_frames
    data = {
        "image": SyntheticPairs(s.train_images, "image", frames, size, s.data_seed),
        "video": SyntheticPairs(s.train_videos, "video", frames, size, s.data_seed + 1),
    }
    heldout = SyntheticPairs(s.heldout_videos, "video", frames, size, s.data_seed + 2)
    seed_everything(cfg.seed)
    model = build_mm_model(cfg, tok)
    torch.manual_seed(s.teacher_seed)
    teacher = build_mm_teacher(cfg)
    before = retrieval_r1(model, tok, heldout, cfg.multimodal.max_txt_l)
    res = multimodal_fit(
        cfg, data, model=model, teacher=teacher, tokenizer=tok, print_fn=print_fn, should_stop=should_stop
    )
    if res["stopped"]:
        return None
    after = retrieval_r1(model, tok, heldout, cfg.multimodal.max_txt_l)
    first = res.get("masked", res.get("unmasked"))["record"]
    last = res.get("unmasked", res.get("masked"))["record"]
    out = {}
    for name in ("vtc", "mlm", "vtm"):
        out[f"{name}_loss_first"] = _mean(first, f"loss_{name}", True)
        out[f"{name}_loss_last"] = _mean(last, f"loss_{name}", False)
    if "masked" in res:
        out["uta_loss_first"] = _mean(res["masked"]["record"], "loss_uta", True)
        out["uta_loss_last"] = _mean(res["masked"]["record"], "loss_uta", False)
    out.update(retrieval_r1_before=before, retrieval_r1_after=after, chance_r1=1.0 / len(video_captions()))
    for k, v in out.items():
        print_fn(f"{k}={v:.4f}")
    return out
