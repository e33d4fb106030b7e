"""Retrieval recall as the official `itm_eval` computes it (video_mm/tasks/retrieval_utils.py).

For each query the rank of its best-ranked ground truth in the scores sorted descending
(`np.argsort(score)[::-1]`, ties as numpy orders them); R@K = % of queries whose rank
is < K. A video may have several captions (`img2txt[v]` a list: the best of them
counts) and a caption one video (`txt2img[t]`) or several (a list).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

__all__ = ["ranks", "recall", "itm_eval"]

GroundTruth = Union[int, Sequence[int]]


def ranks(scores: np.ndarray, gt: Sequence[GroundTruth]) -> np.ndarray:
    """0-based rank of each row's best ground truth."""
    out = np.zeros(scores.shape[0])
    for i, row in enumerate(np.asarray(scores)):
        order = np.argsort(row)[::-1]
        wanted = [gt[i]] if isinstance(gt[i], (int, np.integer)) else list(gt[i])
        out[i] = min(int(np.where(order == j)[0][0]) for j in wanted)
    return out


def recall(r: np.ndarray, k: int) -> float:
    return 100.0 * float(np.count_nonzero(r < k)) / len(r)


def itm_eval(
    scores_v2t: np.ndarray, scores_t2v: np.ndarray, txt2vid: Sequence[GroundTruth], vid2txt: Sequence[GroundTruth]
) -> dict[str, float]:
    """R@1/5/10 and means for video-to-text (`v2t_*`, the official `txt_r*`) and
    text-to-video (`t2v_*`, the official `img_r*`), and their overall mean, rounded to 2."""
    rv = ranks(scores_v2t, vid2txt)
    rt = ranks(scores_t2v, txt2vid)
    res = {f"v2t_r{k}": recall(rv, k) for k in (1, 5, 10)}
    res.update({f"t2v_r{k}": recall(rt, k) for k in (1, 5, 10)})
    res["v2t_r_mean"] = (res["v2t_r1"] + res["v2t_r5"] + res["v2t_r10"]) / 3
    res["t2v_r_mean"] = (res["t2v_r1"] + res["t2v_r5"] + res["t2v_r10"]) / 3
    res["r_mean"] = (res["v2t_r_mean"] + res["t2v_r_mean"]) / 2
    return {k: round(v, 2) for k, v in res.items()}
