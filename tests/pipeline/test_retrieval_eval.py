"""eval-retrieval: the official caption cleaning, frame sampling and annotation layout,
and the ITM re-ranking plumbing against brute force on a tiny model."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.fixtures.videotext import make_tiny_videotext
from vmstream.cli import main
from vmstream.models import load_model
from vmstream.models.tokenizer import BertTokenizer
from vmstream.pipeline.retrieval_eval import ClipReader, evaluate, load_annotations, middle_indices, pre_text
from vmstream.pipeline.retrieval_metrics import itm_eval

VOCAB = [
    "[PAD]",
    "[unused0]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "dog",
    "catch",
    "##es",
    "frisbee",
    "the",
    "person",
    "cooking",
    "man",
    "runs",
]


def test_pre_text_is_the_official_cleaning():
    assert (
        pre_text("A man's dog -- catches (the) Frisbee!  <person>/cat.") == "a mans dog catches the frisbee person cat"
    )


def test_middle_sampling_by_hand():
    # intervals of 10 frames in 4: [0,1], [2,4], [5,6], [7,9] -> middles 0, 3, 5, 8
    assert middle_indices(4, 10) == [0, 3, 5, 8]
    assert middle_indices(8, 5) == [0, 1, 2, 3, 4, 4, 4, 4]  # fewer frames: the last repeated
    assert middle_indices(8, 200) == [12, 37, 62, 87, 112, 137, 162, 187]


def test_annotations_several_captions_and_paragraphs(tmp_path):
    (tmp_path / "v").mkdir()
    for n in ("a.mp4", "b.mp4"):
        (tmp_path / "v" / n).write_bytes(b"x")
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            [{"video": "a.mp4", "caption": ["A dog.", "The dog runs"]}, {"video": "b.mp4", "caption": "Cooking!"}]
        )
    )
    d = load_annotations(ann, tmp_path / "v")
    assert d.texts == ["a dog", "the dog runs", "cooking"]
    assert d.txt2vid == [0, 0, 1] and d.vid2txt == [[0, 1], [2]]
    p = load_annotations(ann, tmp_path / "v", paragraph=True)
    assert p.texts == ["a dog the dog runs", "cooking"] and p.vid2txt == [[0], [1]]
    (tmp_path / "v" / "b.mp4").unlink()
    with pytest.raises(ValueError, match="1 of 2 videos are missing"):
        load_annotations(ann, tmp_path / "v")
    ann.write_text(json.dumps([{"video": "a.mp4"}]))
    with pytest.raises(ValueError, match="entry 0 lacks"):
        load_annotations(ann, tmp_path / "v")


@pytest.fixture
def small_set(tmp_path, h264_mp4, h264_ts, vp9_webm):
    vids = tmp_path / "videos"
    vids.mkdir()
    for src in (h264_mp4, h264_ts, vp9_webm):
        shutil.copy(src, vids / os.path.basename(src))
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            [
                {"video": os.path.basename(h264_mp4), "caption": ["a dog catches the frisbee", "a man runs"]},
                {"video": os.path.basename(h264_ts), "caption": "a person cooking"},
                {"video": os.path.basename(vp9_webm), "caption": "the dog runs"},
            ]
        )
    )
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    torch.save(make_tiny_videotext(seed=11).state_dict(), tmp_path / "vt.pth")
    return tmp_path, ann, vids


def test_itm_reranking_of_every_candidate_equals_the_full_itm_matrix(small_set):
    tmp, ann, vids = small_set
    model = load_model(tmp / "vt.pth")
    data = load_annotations(ann, vids)
    tok = BertTokenizer(tmp / "vocab.txt")
    reader = ClipReader(32, model.card.mean, model.card.std)
    res = evaluate(model, data, tok, reader=reader, num_frames=4, max_text_len=16, k_test=100)
    with torch.no_grad():
        encs = [model.encode_video(reader.read(p, 4)[None]) for p in data.videos]
        feats = torch.cat([e.features for e in encs])
        tokens = torch.cat([e.tokens for e in encs])
        tb = tok(data.texts, max_length=16, padding="max_length")
        t = model.encode_text(tb.input_ids, tb.attention_mask)
        sim = model.similarity(feats, t.features)
        full = model.itm_scores(tokens.half().float(), tb.input_ids, tb.attention_mask)
    assert res["itc"] == itm_eval(sim.numpy(), sim.T.numpy(), data.txt2vid, data.vid2txt)
    assert res["itm"] == itm_eval(full.numpy(), full.T.numpy(), data.txt2vid, data.vid2txt)


def test_cli_prints_recall_and_refuses_a_classifier(small_set, capsys):
    tmp, ann, vids = small_set
    code = main(
        [
            "eval-retrieval",
            "--checkpoint",
            str(tmp / "vt.pth"),
            "--annotations",
            str(ann),
            "--videos",
            str(vids),
            "--vocab",
            str(tmp / "vocab.txt"),
            "--k-test",
            "2",
            "--max-text-len",
            "16",
            "--json",
        ]
    )
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["videos"] == 3 and res["texts"] == 4
    assert set(res["itc"]) >= {"t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r_mean", "r_mean"}
    assert res["itc"]["t2v_r10"] == 100.0 and "itm" in res
    from tests.fixtures.videomamba import make_tiny_model

    torch.save(make_tiny_model().state_dict(), tmp / "cls.pth")
    assert (
        main(["eval-retrieval", "--checkpoint", str(tmp / "cls.pth"), "--annotations", str(ann), "--videos", str(vids)])
        == 2
    )
    assert "needs a video-text model" in capsys.readouterr().err
