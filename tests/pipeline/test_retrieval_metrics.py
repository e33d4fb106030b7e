"""Retrieval recall on small cases whose ranks are worked out by hand."""

import numpy as np

from vmstream.pipeline.retrieval_metrics import itm_eval, ranks


def test_ranks_by_hand():
    s = np.array(
        [
            [0.9, 0.1, 0.5],  # gt 2: order 0, 2, 1 -> rank 1
            [0.2, 0.3, 0.1],  # gt 1: order 1, 0, 2 -> rank 0
            [0.7, 0.8, 0.9],
        ]
    )  # gt 0: order 2, 1, 0 -> rank 2
    assert ranks(s, [2, 1, 0]).tolist() == [1, 0, 2]
    # several ground truths: the best-ranked counts
    assert ranks(s, [[1, 2], [2], [0, 1]]).tolist() == [1, 2, 1]


def test_itm_eval_by_hand():
    # 2 videos, 3 captions: video 0 has captions 0 and 1, video 1 has caption 2.
    v2t = np.array(
        [
            [0.1, 0.9, 0.5],  # order 1, 2, 0: best gt (1) at rank 0
            [0.8, 0.3, 0.2],
        ]
    )  # order 0, 1, 2: gt 2 at rank 2
    t2v = np.array(
        [
            [0.2, 0.4],  # caption 0 (gt video 0): order 1, 0 -> rank 1
            [0.9, 0.1],  # caption 1 (gt 0): rank 0
            [0.3, 0.6],
        ]
    )  # caption 2 (gt 1): rank 0
    r = itm_eval(v2t, t2v, txt2vid=[0, 0, 1], vid2txt=[[0, 1], [2]])
    assert (r["v2t_r1"], r["v2t_r5"], r["v2t_r10"]) == (50.0, 100.0, 100.0)
    assert (r["t2v_r1"], r["t2v_r5"], r["t2v_r10"]) == (66.67, 100.0, 100.0)
    assert r["v2t_r_mean"] == round((50 + 100 + 100) / 3, 2)
    assert r["t2v_r_mean"] == round((200 / 3 + 200) / 3, 2)
    assert r["r_mean"] == round(((250 / 3) + (200 / 3 + 200) / 3) / 2, 2)
