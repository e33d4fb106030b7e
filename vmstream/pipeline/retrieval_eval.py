"""Zero-shot video-text retrieval on the official annotation format, the official way.

Annotations: a JSON list of `{"video": path under --videos, "caption": str | [str]}`
(the official `*_ret_test.json`). As the official `VidTxtRetEvalDataset`: every caption
is a text (a video with several has several ground truths); paragraph mode (DiDeMo,
ActivityNet) joins a video's captions with spaces first; captions pass `pre_text`
(lower case, `,.'!?"()*#:;~` removed, `-` and `/` to spaces). Frames: T at the middle of
T equal intervals ("middle"), resized straight to the model's square size with bicubic
filtering, ImageNet-normalised. Text: bert-base-uncased, padded and cut to the dataset's
maximum length. Scores: ITC = the mean over frames of the per-frame cosine; ITM re-ranks
each query's top `k_test` by `itm_head` logit 1 (the rest stay at -100). Recall as
`retrieval_metrics.itm_eval`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from vmstream.models.text_query import check_vocabulary
from vmstream.records import Frame
from vmstream.stages.decode import FrameSize, VideoInputError, make_decoder
from vmstream.stages.sampling import FrameIndexSampling, stream_length
from vmstream.stages.sources import Source

from .retrieval_metrics import itm_eval

log = logging.getLogger(__name__)

__all__ = [
    "RetrievalSet",
    "load_annotations",
    "pre_text",
    "middle_indices",
    "ClipReader",
    "evaluate",
    "retrieval_scores",
]

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")


def pre_text(text: str) -> str:
    """The official caption cleaning (dataset/utils.py `pre_text`)."""
    text = _PUNCT.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")


@dataclass
class RetrievalSet:
    videos: list[Path]
    texts: list[str]
    txt2vid: list[int]  # the video of each text
    vid2txt: list[list[int]]  # the texts of each video


def load_annotations(path, video_dir, *, paragraph: bool = False) -> RetrievalSet:
    """Read the official retrieval annotations; a ValueError names what is wrong."""
    path, video_dir = Path(path), Path(video_dir)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"annotations {path}: {e}") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f'annotations {path}: expected a non-empty JSON list of {{"video", "caption"}}')
    data = RetrievalSet([], [], [], [])
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "video" not in item or "caption" not in item:
            raise ValueError(f'annotations {path}: entry {i} lacks "video" or "caption"')
        caps = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
        if not caps or not all(isinstance(c, str) for c in caps):
            raise ValueError(f"annotations {path}: entry {i} has no caption text")
        if paragraph:
            caps = [" ".join(caps)]
        v = len(data.videos)
        data.videos.append(video_dir / item["video"])
        data.vid2txt.append([])
        for c in caps:
            data.vid2txt[v].append(len(data.texts))
            data.txt2vid.append(v)
            data.texts.append(pre_text(c))
    missing = [str(p) for p in data.videos if not p.is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(data.videos)} videos are missing under {video_dir}, e.g. {missing[0]}"
        )
    return data


def middle_indices(num_frames: int, vlen: int) -> list[int]:
    """The official "middle" sampling: the middle frame of each of `num_frames` equal
    intervals (fewer frames than that: each once, then the last repeated)."""
    n = min(num_frames, vlen)
    edges = np.linspace(0, vlen, n + 1).astype(int)
    idx = [int((edges[i] + edges[i + 1] - 1) // 2) for i in range(n)]
    return idx + [idx[-1]] * (num_frames - len(idx))


class ClipReader:
    """Clips [3, T, S, S] of video files: middle sampling, bicubic resize to S x S, normalised."""

    def __init__(self, img_size: int, mean, std, decoder: str = "pyav"):
        self.decoder = make_decoder(decoder)
        self.size = FrameSize(img_size, img_size, "direct", interpolation="BICUBIC")
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None, None]

    def read(self, path: Path, num_frames: int) -> Tensor:
        try:
            info = self.decoder.probe(str(path))
            try:
                n, _ = stream_length(info)
            except ValueError:
                info = self.decoder.probe(str(path), count=True)
                n, _ = stream_length(info)
            want = middle_indices(num_frames, n)
            policy = FrameIndexSampling(indices=tuple(want))
            frames = [
                np.asarray(f.image)
                for f in self.decoder.frames(Source(stream_id="eval", uri=str(path)), policy, self.size, info=info)
                if isinstance(f, Frame)
            ]
        except (VideoInputError, ValueError, OSError) as e:
            raise ValueError(f"{path}: {e}") from None
        if not frames:
            raise ValueError(f"{path}: no frame could be decoded")
        frames += [frames[-1]] * (num_frames - len(frames))  # a container that over-reports its length
        x = torch.from_numpy(np.stack(frames[:num_frames])).permute(3, 0, 1, 2).float().div(255.0)
        return (x - self.mean) / self.std


@torch.inference_mode()
def _encode_texts(model, tokenizer, texts, max_len: int, device, batch: int = 256):
    check_vocabulary(model, tokenizer)
    states, masks, feats, cut = [], [], [], 0
    for s in range(0, len(texts), batch):
        tb = tokenizer(texts[s : s + batch], max_length=max_len, padding="max_length", warn=False)
        cut += sum(tb.truncated)
        enc = model.encode_text(tb.input_ids.to(device), tb.attention_mask.to(device))
        states.append(enc.tokens)
        masks.append(tb.attention_mask.to(device))
        feats.append(enc.features)
    if cut:
        log.warning(
            "%d of %d captions were truncated to %d tokens (the dataset's maximum text length)",
            cut,
            len(texts),
            max_len,
        )
    return torch.cat(states), torch.cat(masks), torch.cat(feats)


@torch.inference_mode()
def evaluate(
    model,
    data: RetrievalSet,
    tokenizer,
    *,
    reader: ClipReader,
    num_frames: int,
    max_text_len: int,
    k_test: int = 128,
    itm: bool = True,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> dict[str, dict[str, float]]:
    """{"itc": recall, "itm": recall (when `itm`)} for `data` with the official scoring."""
    device = next(model.parameters()).device
    t_states, t_masks, t_feats = _encode_texts(model, tokenizer, data.texts, max_text_len, device)
    v_feats, v_tokens = [], []
    for i, path in enumerate(data.videos):
        enc = model.encode_video(reader.read(path, num_frames)[None].to(device))
        v_feats.append(enc.features[0])
        if itm:
            v_tokens.append(enc.tokens[0].half())  # memory: [T*N, D] per video, as the official fp16 eval
        if progress:
            progress("videos", i + 1, len(data.videos))
    v_feats = torch.stack(v_feats)
    i2t_x, t2i_x, i2t = retrieval_scores(
        model, v_feats, v_tokens if itm else None, t_states, t_masks, t_feats, k_test=k_test, progress=progress
    )
    out = {"itc": itm_eval(i2t.cpu().numpy(), i2t.T.cpu().numpy(), data.txt2vid, data.vid2txt)}
    if not itm:
        return out
    out["itm"] = itm_eval(i2t_x.numpy(), t2i_x.numpy(), data.txt2vid, data.vid2txt)
    return out


@torch.inference_mode()
def retrieval_scores(
    model,
    v_feats: Tensor,
    v_tokens,
    t_states: Tensor,
    t_masks: Tensor,
    t_feats: Tensor,
    *,
    k_test: int = 128,
    progress: Optional[Callable[[str, int, int], None]] = None,
):
    """(i2t_x, t2i_x, i2t): the official `evaluation()` score matrices. i2t [V, Tn] is the
    ITC similarity; i2t_x / t2i_x hold each query's top `k_test` re-scored by ITM (logit
    1), -100 elsewhere (None, None when `v_tokens`, the videos' [T*N, D] memories, is None)."""
    i2t = model.similarity(v_feats, t_feats)  # [V, Tn]
    if v_tokens is None:
        return None, None, i2t
    i2t_x = torch.full(i2t.shape, -100.0)
    for i in range(i2t.shape[0]):
        top = i2t[i].topk(min(k_test, i2t.shape[1])).indices
        i2t_x[i, top.cpu()] = model.itm_scores(
            v_tokens[i][None].float(), None, t_masks[top], text_tokens=t_states[top]
        )[0].cpu()
        if progress:
            progress("re-rank videos", i + 1, i2t.shape[0])
    t2i = i2t.T
    t2i_x = torch.full(t2i.shape, -100.0)
    for j in range(t2i.shape[0]):
        top = t2i[j].topk(min(k_test, t2i.shape[1])).indices
        memory = torch.stack([v_tokens[int(v)] for v in top]).float()
        t2i_x[j, top.cpu()] = model.itm_scores(memory, None, t_masks[j : j + 1], text_tokens=t_states[j : j + 1])[
            :, 0
        ].cpu()
        if progress:
            progress("re-rank texts", j + 1, t2i.shape[0])
    return i2t_x, t2i_x, i2t
