"""Search by text end to end: `vmstream run` with a (tiny) video-text model stores its
joint-space embeddings unnormalised (inner product), `vmstream search --text` encodes the
query with the store's model from the run manifest, `--labels` gives open-vocabulary
labels; the bad inputs each get one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.fixtures.videomamba import make_tiny_model
from tests.fixtures.videotext import TINY_VOCAB, make_tiny_videotext
from vmstream.cli import main
from vmstream.models import load_model
from vmstream.models.text_query import encode_queries
from vmstream.models.tokenizer import BertTokenizer
from vmstream.records import segment_uid
from vmstream.store import VideoStore

VOCAB = TINY_VOCAB


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vt")
    torch.save({"model": make_tiny_videotext(seed=3).state_dict()}, d / "vt.pth")
    torch.save({"model": make_tiny_model(seed=5).state_dict()}, d / "cls.pth")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (d / "prompts.txt").write_text("a dog\ncooking\n\na person\n")
    return d


def _run(src, ckpt, out, *extra):
    return main(
        [
            "run",
            src,
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--fps",
            "4",
            "--set",
            "decode.img_size=32",
            "--no-progress",
            "--set",
            "output.console=false",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def vt_store(files, h264_mp4):
    out = files / "out"
    assert (
        _run(
            h264_mp4,
            files / "vt.pth",
            out,
            "--vocab",
            str(files / "vocab.txt"),
            "--labels",
            str(files / "prompts.txt"),
            "--label-template",
            "a video of {}",
        )
        == 0
    )
    return out


def test_run_stores_unnormalised_joint_space_embeddings_scored_by_inner_product(vt_store):
    store = VideoStore(vt_store / "index", readonly=True)
    assert store.metric == "ip" and store.dim == 16 and len(store) == 4
    norms = [np.linalg.norm(store.vector(int(u))) for u in store.ids.table.column("uid").to_pylist()]
    assert all(0.1 < n < 1.0 - 1e-4 for n in norms), "the mean of unit per-frame features, not renormalised"


def test_search_text_scores_are_the_stored_embedding_dot_the_text_feature(vt_store, files, capsys):
    capsys.readouterr()
    code = main(
        [
            "search",
            "--index",
            str(vt_store),
            "--text",
            "a dog catches the frisbee",
            "--text",
            "cooking",
            "--vocab",
            str(files / "vocab.txt"),
            "-k",
            "3",
            "--json",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in rows] == ["a dog catches the frisbee"] * 3 + ["cooking"] * 3
    model = load_model(files / "vt.pth")
    store = VideoStore(vt_store / "index", readonly=True)
    feats = encode_queries(
        model, ["a dog catches the frisbee", "cooking"], tokenizer=BertTokenizer(files / "vocab.txt")
    ).numpy()
    for r in rows:
        q = feats[1] if r["query"] == "cooking" else feats[0]
        assert r["score"] == pytest.approx(float(store.vector(r["uid"]) @ q), abs=1e-5)
    scores = [r["score"] for r in rows[:3]]
    assert scores == sorted(scores, reverse=True)
    # the store's Python API answers the same
    hits = store.search_text("cooking", model, k=3, tokenizer=BertTokenizer(files / "vocab.txt"))
    assert [h.uid for h in hits] == [r["uid"] for r in rows[3:]]


def test_open_vocabulary_labels_are_softmax_of_similarity_over_temp(vt_store, files):
    table = pq.read_table(next((vt_store / "segments").rglob("*.parquet")))
    labels = table.column("labels").to_pylist()
    scores = table.column("scores").to_pylist()
    assert set(labels[0]) == {"a dog", "cooking", "a person"}
    model = load_model(files / "vt.pth")
    store = VideoStore(vt_store / "index", readonly=True)
    prompts = encode_queries(
        model,
        ["a video of a dog", "a video of cooking", "a video of a person"],
        tokenizer=BertTokenizer(files / "vocab.txt"),
    )
    uid0 = store.ids.table.column("uid").to_pylist()[0]
    row = store.get(uid0)
    i = next(j for j in range(table.num_rows) if table.column("segment_index")[j].as_py() == row["segment_index"])
    probs = torch.softmax(torch.from_numpy(store.vector(uid0)) @ prompts.T / model.temp.detach(), dim=-1)
    names = ["a dog", "cooking", "a person"]
    for name, score in zip(labels[i], scores[i]):
        assert score == pytest.approx(float(probs[names.index(name)]), abs=1e-5)


@pytest.mark.parametrize("text, says", [("   ", "is empty"), ("a dog " * 40, "the maximum is 16")])
def test_bad_queries_get_one_line(vt_store, files, capsys, text, says):
    assert main(["search", "--index", str(vt_store), "--text", text, "--vocab", str(files / "vocab.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err


def test_text_against_a_classifier_store_names_the_model(files, h264_mp4, capsys):
    out = files / "cls_out"
    assert _run(h264_mp4, files / "cls.pth", out) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--text", "a dog", "--vocab", str(files / "vocab.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "video-text model" in err and "'cls'" in err and "\n" not in err
    assert _run(h264_mp4, files / "cls.pth", files / "cls_out2", "--labels", "cooking,riding a bike") == 2
    err = capsys.readouterr().err.strip()
    assert "open-vocabulary labels need a video-text model" in err and "'cls'" in err


def test_missing_vocabulary_offline_is_one_line(vt_store, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("VMSTREAM_BERT_VOCAB", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    # the run's --vocab is in its manifest; clear it to see the error
    assert main(["search", "--index", str(vt_store), "--text", "a dog", "--set", "model.vocab="]) == 2
    err = capsys.readouterr().err.strip()
    assert "vocab.txt" in err and "VMSTREAM_BERT_VOCAB" in err and "\n" not in err


def test_rerank_rescores_the_top_k_with_itm_on_re_decoded_segments(vt_store, files, capsys):
    from vmstream.cli.search import search_config
    from vmstream.pipeline.rerank import segment_clips

    capsys.readouterr()
    assert (
        main(
            [
                "search",
                "--index",
                str(vt_store),
                "--text",
                "a dog catches the frisbee",
                "--rerank",
                "3",
                "-k",
                "4",
                "--json",
                "--vocab",
                str(files / "vocab.txt"),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and [r["itm"] is not None for r in rows] == [True, True, True, False]
    itms = [r["itm"] for r in rows[:3]]
    assert itms == sorted(itms, reverse=True)
    # the ITM score of a hit, computed here from the segment decoded the run's way
    model = load_model(files / "vt.pth")

    class Args:
        config, checkpoint, model, device, sets = None, None, None, None, []

    cfg = search_config(Args, vt_store / "index")
    first, top = 0, rows[0]["segment_index"]
    clips = segment_clips(cfg, model, rows[0]["uri"], {first, top})
    # The re-decoded pixels are the run's, checked against what the run itself recorded:
    # the run encoded segment 0 from the zero state, so the same model on the re-decoded
    # segment 0 from the zero state must give the embedding the run stored for it.
    store = VideoStore(vt_store / "index", readonly=True)
    with torch.no_grad():
        again = model.forward_segment(clips[first][None]).features[0].numpy()
    np.testing.assert_allclose(again, store.vector(segment_uid(rows[0]["stream_id"], first)), atol=1e-5)
    tb = BertTokenizer(files / "vocab.txt")(["a dog catches the frisbee"])
    with torch.no_grad():
        want = model.itm_scores(model.encode_video(clips[top][None]).tokens, tb.input_ids, tb.attention_mask)[0, 0]
    assert rows[0]["itm"] == pytest.approx(float(want), abs=1e-4)


def test_rerank_says_when_a_source_can_no_longer_be_read(files, h264_mp4, capsys, tmp_path):
    import shutil

    src = tmp_path / "gone.mp4"
    shutil.copy(h264_mp4, src)
    out = tmp_path / "out"
    assert _run(str(src), files / "vt.pth", out, "--vocab", str(files / "vocab.txt")) == 0
    src.unlink()
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--text", "a dog", "--rerank", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert "can no longer be read" in captured.err and "gone.mp4" in captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert rows and all(r["itm"] is None for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert main(["search", "--index", str(out), "--id", str(rows[0]["uid"]), "--rerank", "2"]) == 2
    assert "needs --text" in capsys.readouterr().err


def test_a_store_of_other_weights_than_the_query_model_is_refused(vt_store, files, capsys, tmp_path):
    other = tmp_path / "other.pth"
    torch.save(make_tiny_videotext(seed=4).state_dict(), other)
    assert (
        main(
            [
                "search",
                "--index",
                str(vt_store),
                "--text",
                "a dog",
                "--checkpoint",
                str(other),
                "--vocab",
                str(files / "vocab.txt"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "not comparable" in err and "\n" not in err


def test_without_labels_segments_carry_none(files, h264_mp4, tmp_path):
    out = tmp_path / "out"
    assert (
        _run(h264_mp4, files / "vt.pth", out, "--vocab", str(files / "vocab.txt"), "--set", "output.console=true") == 0
    )
    table = pq.read_table(next((out / "segments").rglob("*.parquet")))
    assert table.num_rows == 4 and all(labels == [] for labels in table.column("labels").to_pylist())


def test_text_search_and_rerank_on_a_milvus_store_answer_as_on_faiss(vt_store, files, h264_mp4, capsys, tmp_path):
    pytest.importorskip("milvus_lite")
    out = tmp_path / "milvus-out"
    assert (
        _run(
            h264_mp4,
            files / "vt.pth",
            out,
            "--vocab",
            str(files / "vocab.txt"),
            "--labels",
            str(files / "prompts.txt"),
            "--label-template",
            "a video of {}",
            "--set",
            "output.store.backend=milvus",
            "--set",
            f"output.store.uri={tmp_path / 'vt.db'}",
        )
        == 0
    )
    answers = []
    for where in (vt_store, out):
        capsys.readouterr()
        assert (
            main(
                [
                    "search",
                    "--index",
                    str(where),
                    "--text",
                    "a dog catches the frisbee",
                    "--rerank",
                    "3",
                    "-k",
                    "4",
                    "--json",
                    "--vocab",
                    str(files / "vocab.txt"),
                ]
            )
            == 0
        )
        answers.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    faiss_rows, milvus_rows = answers
    assert [r["uid"] for r in milvus_rows] == [r["uid"] for r in faiss_rows]
    for a, b in zip(faiss_rows, milvus_rows):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
        assert (b["itm"] is None) == (a["itm"] is None) and (
            a["itm"] is None or b["itm"] == pytest.approx(a["itm"], abs=1e-4)
        )
