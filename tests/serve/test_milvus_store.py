"""`vmstream serve` over a Milvus store (`output.store.backend: milvus`, here
milvus-lite's file): the same answers as over the FAISS store the same run writes,
since both hold the same segments and score by cosine exactly at this size."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO, Server

pytest.importorskip("pymilvus", reason="needs pymilvus and milvus-lite (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def milvus_store(serve_files, tmp_path_factory):
    d = tmp_path_factory.mktemp("milvus")
    sets = ("output.store.backend=milvus", f"output.store.uri={d / 'store.db'}")
    # In a process of its own, as a user runs it: milvus-lite's file stays locked by the
    # process that opened it until that process ends.
    code = (
        "import sys; from tests.serve.conftest import run_store; from pathlib import Path; "
        f"run_store(Path({str(serve_files)!r}), Path({str(d / 'out')!r}), "
        f"{str(serve_files / 'park.mp4')!r}, {str(serve_files / 'kitchen.webm')!r}, sets={sets!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
    return d / "out"


def _ids(r) -> list:
    assert r.status_code == 200, r.text
    return [s["id"] for s in r.json()["results"]]


def test_serve_answers_over_a_milvus_store_as_over_faiss(milvus_store, server, serve_files):
    assert (milvus_store / "index" / "store.json").exists()
    s = Server(milvus_store, files=serve_files)
    try:
        assert s.get("/readyz").status_code == 200
        streams = s.get("/api/streams").json()
        assert streams["streams"] == server.get("/api/streams").json()["streams"]
        assert [x["segments"] for x in streams["streams"]] and sum(x["segments"] for x in streams["streams"]) == 14

        text = {"text": "a dog catches the frisbee", "k": 5, "group": "segments"}
        assert _ids(s.get("/api/search", params=text)) == _ids(server.get("/api/search", params=text))

        first = _ids(s.get("/api/search", params=text))[0]
        by_id = {"id": first, "k": 4, "group": "segments"}
        assert _ids(s.get("/api/search", params=by_id)) == _ids(server.get("/api/search", params=by_id))
        assert first not in _ids(s.get("/api/search", params=by_id))

        name = streams["streams"][0]["name"]
        at = {"stream": name, "at": 3.0, "k": 3, "group": "segments"}
        assert _ids(s.get("/api/search", params=at)) == _ids(server.get("/api/search", params=at))
        timeline = s.get(f"/api/streams/{name}/timeline")
        assert timeline.status_code == 200
        got, want = timeline.json()["segments"], server.get(f"/api/streams/{name}/timeline").json()["segments"]
        assert [(x["id"], x["start"], x["end"], x["label"]) for x in got] == [
            (x["id"], x["start"], x["end"], x["label"]) for x in want
        ]
        assert [x["score"] for x in got] == pytest.approx([x["score"] for x in want], abs=1e-6)

        thumb = s.get(f"/api/thumbs/{first}.jpg")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    finally:
        s.stop()
