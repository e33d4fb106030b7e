"""The store's behaviour through its one interface (`open_store`), on both backends:
FAISS (embedded files) and Milvus (milvus-lite: the real engine, embedded)."""

from __future__ import annotations

import numpy as np
import pytest

from vmstream.records import SegmentResult, segment_uid
from vmstream.store import open_store, store_backend

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

BACKENDS = ["faiss", "milvus"]


def seg(sid: str, i: int, v, model: str = "m", **kw) -> SegmentResult:
    return SegmentResult(
        stream_id=sid,
        segment_index=i,
        t_start=float(i),
        t_end=i + 1.0,
        labels=["a", "b"],
        scores=[0.75, 0.25],
        label_ids=[1, 2],
        embedding=np.asarray(v, np.float32),
        uri=f"/v/{sid}.mp4",
        model=model,
        **kw,
    )


def vecs(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture(params=BACKENDS)
def make(request, tmp_path):
    """make(**options) -> a writable store of the backend at tmp/index."""
    opened = []

    def open_(readonly: bool = False, **options):
        s = open_store(
            tmp_path / "index",
            backend=None if readonly else request.param,
            uri=str(tmp_path / "store.db"),
            readonly=readonly,
            **options,
        )
        opened.append(s)
        return s

    open_.backend = request.param
    yield open_
    for s in opened:
        s.close()


def test_writes_are_idempotent_upserts_by_stream_and_segment(make):
    s = make()
    v = vecs(5)
    s.add_results([seg("a", i, v[i]) for i in range(5)])
    s.add_results([seg("a", i, v[i]) for i in range(5)])  # a re-delivery: the same ids
    s.add_results([seg("a", 4, v[0])])  # a changed segment: replaced
    s.commit()
    assert len(s) == 5
    uids, got = s.live_vectors()
    assert uids.tolist() == sorted(segment_uid("a", i) for i in range(5))
    by_uid = dict(zip(uids.tolist(), got))
    np.testing.assert_allclose(by_uid[segment_uid("a", 4)], v[0] / np.linalg.norm(v[0]), rtol=1e-6)
    assert s.get(segment_uid("a", 2))["segment_index"] == 2 and s.get(12345) is None


def test_search_scores_and_hits_agree_with_cosine(make):
    s = make()
    v = vecs(20, seed=1)
    s.add_results([seg(f"s{i % 2}", i, v[i]) for i in range(20)])
    s.commit()
    q = v[3] + 0.01 * vecs(1, seed=9)[0]
    hits = s.search(q, 5)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    want = np.argsort(-(unit @ (q / np.linalg.norm(q))))[:5]
    assert [h.segment_index for h in hits] == want.tolist()
    np.testing.assert_allclose(
        [h.score for h in hits], np.sort(-(unit @ (q / np.linalg.norm(q))))[:5] * -1, rtol=1e-4, atol=1e-5
    )
    h = hits[0]
    assert (h.stream_id, h.t_start, h.t_end, h.uri, h.labels) == ("s1", 3.0, 4.0, "/v/s1.mp4", ("a", "b"))
    assert h.label_scores == pytest.approx((0.75, 0.25))
    # By id (itself excluded), by stream and time, by a query video.
    assert segment_uid("s1", 3) not in [x.uid for x in s.search_id(segment_uid("s1", 3), 3)]
    assert s.search_at("s1", 3.5, 1)[0].uid == s.search_id(segment_uid("s1", 3), 1)[0].uid
    assert s.search_video(v[[3, 5]], 2, mode="max")[0].uid in (segment_uid("s1", 3), segment_uid("s1", 5))
    assert s.streams() == ["s0", "s1"]
    assert s.stream_rows("s0").num_rows == 10


def test_remove_a_stream_and_replace_it(make):
    s = make()
    v = vecs(8, seed=2)
    s.add_results([seg("a", i, v[i]) for i in range(4)] + [seg("b", i, v[4 + i]) for i in range(4)])
    s.commit()
    assert s.remove_stream("a") == 4
    assert s.remove_stream("a") == 0
    s.add_results([seg("a", 0, v[7])])  # the new version: one segment
    s.commit()
    assert len(s) == 5 and sorted(s.streams()) == ["a", "b"]
    assert all(h.stream_id == "b" or h.segment_index == 0 for h in s.search(v[0], 8))
    assert s.remove([segment_uid("b", 0), 999]) == 1 and len(s) == 4


def test_the_consumer_record_and_the_data_reopen_together(make):
    s = make()
    s.add_results([seg("a", i, v) for i, v in enumerate(vecs(3, seed=3))])
    s.commit(consumer={"offsets": {"t:0": 3}})
    s.close()
    r = make(readonly=True)  # the backend from the store's own description
    assert store_backend(r.path) == make.backend
    assert r.consumer == {"offsets": {"t:0": 3}} and len(r) == 3
    r.close()
    w = make()
    assert w.consumer == {"offsets": {"t:0": 3}}
    assert w.commit(consumer={"offsets": {"t:0": 5}})  # offsets only (events): still a commit
    w.close()
    assert make(readonly=True).consumer == {"offsets": {"t:0": 5}}


def test_inner_product_store_keeps_vectors_as_given(make):
    s = make(metric="ip")
    v = vecs(4, seed=4) * 3
    s.add_results([seg("a", i, v[i]) for i in range(4)])
    s.commit()
    hit = s.search(v[0], 1)[0]  # a unit query (a text feature) against the stored vector as given
    assert hit.score == pytest.approx(float(np.linalg.norm(v[0])), rel=1e-4)
    assert s.metric == "ip"


def test_embeddings_of_another_model_or_dimension_are_refused(make):
    s = make()
    s.add_results([seg("a", 0, vecs(1)[0])])
    with pytest.raises(ValueError, match="model"):
        s.add_results([seg("a", 1, vecs(1)[0], model="other")])
    with pytest.raises(ValueError, match="16"):
        s.add_results([seg("a", 2, vecs(1, d=7)[0])])
    assert len(s) == 1


def test_a_store_of_one_backend_is_not_opened_as_the_other(tmp_path):
    from vmstream.errors import UserError

    with open_store(tmp_path / "f", backend="faiss") as s:
        s.add_results([seg("a", 0, vecs(1)[0])])
    with pytest.raises(UserError, match="FAISS store"):
        open_store(tmp_path / "f", backend="milvus", uri=str(tmp_path / "x.db"))
    with open_store(tmp_path / "m", backend="milvus", uri=str(tmp_path / "m.db")) as s:
        s.add_results([seg("a", 0, vecs(1)[0])])
    with pytest.raises(UserError, match="milvus store"):
        open_store(tmp_path / "m", backend="faiss")


def test_search_and_verify_commands_find_the_backend_from_the_store(make, tmp_path, capsys):
    from vmstream.cli import main

    s = make()
    v = vecs(6, seed=5)
    s.add_results([seg("cam", i, v[i]) for i in range(6)])
    s.close()
    assert main(["search", "--index", str(tmp_path), "--stream", "cam", "--at", "2.5", "-k", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all('"stream_id": "cam"' in line for line in lines)
    assert main(["store", "verify", str(tmp_path)]) == 0
    assert "sound" in capsys.readouterr().out


def test_run_on_milvus_gives_the_store_run_on_faiss_gives(tmp_path, tiny_ckpt, capsys):
    """`vmstream run --set output.store.backend=milvus`: the same ids, vectors and hits."""
    from tests.fixtures.media import make_video
    from vmstream.cli import main

    video = make_video(str(tmp_path / "cam.mp4"), fps=10, seconds=4, gop=20, size=(64, 48))
    common = [
        "--checkpoint",
        tiny_ckpt,
        "--fps",
        "4",
        "--no-progress",
        "--set",
        "decode.img_size=32",
        "--set",
        "output.console=false",
    ]
    assert main(["run", video, "--out", str(tmp_path / "f"), *common]) == 0
    assert (
        main(
            [
                "run",
                video,
                "--out",
                str(tmp_path / "m"),
                *common,
                "--set",
                "output.store.backend=milvus",
                "--set",
                f"output.store.uri={tmp_path / 'run.db'}",
            ]
        )
        == 0
    )
    views = []
    for d in ("f", "m"):
        with open_store(tmp_path / d / "index", readonly=True) as s:
            views.append((s.backend, *s.live_vectors(), s.id_rows()))
    assert [v[0] for v in views] == ["faiss", "milvus"]
    assert views[0][1].tolist() == views[1][1].tolist() and len(views[0][1]) == 4
    np.testing.assert_array_equal(views[0][2], views[1][2])
    assert views[0][3] == views[1][3]
    capsys.readouterr()
    hits = []
    for d in ("f", "m"):
        assert main(["search", "--index", str(tmp_path / d), "--id", str(views[0][1][0]), "-k", "3", "--json"]) == 0
        hits.append([__import__("json").loads(line) for line in capsys.readouterr().out.splitlines()])
    assert [h["uid"] for h in hits[0]] == [h["uid"] for h in hits[1]]
    assert [h["score"] for h in hits[0]] == pytest.approx([h["score"] for h in hits[1]], abs=1e-5)
