"""The JSON API against a real `vmstream serve` (uvicorn on 127.0.0.1) over a store that
`vmstream run` built from real encoded videos with a (tiny, random) video-text model."""

from __future__ import annotations

import io
import json
import subprocess

import pytest
from PIL import Image

from vmstream.models import load_model
from vmstream.models.tokenizer import BertTokenizer
from vmstream.store import VideoStore

from .conftest import Server


def test_health_ready_and_prometheus_metrics(server):
    assert server.get("/healthz").json() == {"ok": True}
    r = server.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and r.json()["text_search"]
    server.get("/api/search", params={"text": "a dog"})
    m = server.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert "# TYPE vmstream_request_seconds histogram" in text
    assert 'vmstream_queries_total{kind="text"}' in text
    assert "vmstream_store_segments 14" in text and "vmstream_store_generation " in text
    assert 'vmstream_request_seconds_bucket{le="+Inf",route="/api/search"}' in text
    assert "/api/search" in server.get("/openapi.json").json()["paths"]


def test_the_api_docs_need_no_network(server):
    import re

    for page in ("/docs", "/redoc"):
        html = server.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
        assert urls and not [u for u in urls if "//" in u], f"{page} loads from elsewhere: {urls}"
        for u in urls:
            assert server.get(u).status_code == 200, u


def test_text_search_returns_moments_scored_by_the_store_model(server, serve_store, serve_files):
    r = server.get("/api/search", params={"text": "a dog catches the frisbee", "k": 5, "group": "segments"})
    assert r.status_code == 200, r.text
    body = r.json()
    segs = body["results"]
    assert body["group"] == "segments" and len(segs) == 5
    store = VideoStore(serve_store / "index", readonly=True)
    model = load_model(serve_files / "vt.pth")
    want = store.search_text(
        "a dog catches the frisbee", model, k=5, tokenizer=BertTokenizer(serve_files / "vocab.txt")
    )
    assert [s["id"] for s in segs] == [str(h.uid) for h in want]
    assert [s["score"] for s in segs] == pytest.approx([h.score for h in want], abs=1e-5)
    for s in segs:
        assert isinstance(s["id"], str) and s["ids"] == [s["id"]]
        assert s["thumb_url"] == f"/api/thumbs/{s['id']}.jpg"
        assert s["labels"] and {lb["label"] for lb in s["labels"]} <= {"a dog", "cooking", "a person", "riding a bike"}

    moments = server.get("/api/search", params={"text": "a dog catches the frisbee", "k": 3}).json()["results"]
    assert 1 <= len(moments) <= 3
    assert [m["score"] for m in moments] == sorted((m["score"] for m in moments), reverse=True)
    for m in moments:
        rows = [store.get(int(i)) for i in m["ids"]]
        idx = [r["segment_index"] for r in rows]
        assert idx == list(range(idx[0], idx[0] + len(idx))), "a moment is adjacent segments"
        assert {r["stream_id"] for r in rows} == {m["stream"]}
        assert m["start"] == min(r["t_start"] for r in rows) and m["end"] == max(r["t_end"] for r in rows)
        assert m["clip_url"].startswith(f"/api/clips/{m['ids'][0]}") and not m["live"]


def test_search_by_id_and_by_stream_time_and_the_filters(server, serve_store):
    streams = server.get("/api/streams").json()
    names = {s["name"].rsplit("/", 1)[-1]: s for s in streams["streams"]}
    assert set(names) == {"park.mp4", "kitchen.webm"}
    assert names["park.mp4"]["segments"] == 8 and names["park.mp4"]["duration"] == pytest.approx(7.72, abs=0.1)
    assert names["park.mp4"]["version"] and streams["segments"] == 14
    park = names["park.mp4"]["name"]
    tl = server.get(f"/api/streams/{park}/timeline").json()
    assert len(tl["segments"]) == 8 and all(s["label"] for s in tl["segments"])
    assert [s["start"] for s in tl["segments"]] == sorted(s["start"] for s in tl["segments"])
    first = tl["segments"][0]["id"]
    seg = server.get(f"/api/segments/{first}").json()
    assert seg["stream"] == park and seg["start"] == 0.0 and seg["segment"] == 0

    by_id = server.get("/api/search", params={"id": first, "k": 13, "group": "segments"}).json()["results"]
    assert len(by_id) == 13 and first not in [h["id"] for h in by_id]
    by_at = server.get("/api/search", params={"stream": park, "at": 0.3, "k": 13, "group": "segments"}).json()
    assert [h["id"] for h in by_at["results"]] == [h["id"] for h in by_id]
    only = server.get("/api/search", params={"id": first, "streams": "kitchen.webm", "group": "segments"}).json()
    assert only["results"] and {h["stream_name"] for h in only["results"]} == {"kitchen.webm"}
    late = server.get("/api/search", params={"id": first, "after": 3, "before": 5, "group": "segments"}).json()
    assert late["results"] and all(h["end"] >= 3 and h["start"] <= 5 for h in late["results"])


def test_thumbnails_are_the_captured_jpegs(server, serve_store):
    tl = server.get("/api/streams").json()["streams"][0]["name"]
    ids = [s["id"] for s in server.get(f"/api/streams/{tl}/timeline").json()["segments"]]
    for uid in ids[:3]:
        r = server.get(f"/api/thumbs/{uid}.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        im = Image.open(io.BytesIO(r.content))
        assert im.format == "JPEG" and im.size == (32, 32)  # the model-size frame the run decoded


def _probe(data: bytes, tmp_path) -> dict:
    p = tmp_path / "clip.mp4"
    p.write_bytes(data)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,height:format=duration", "-of", "json", str(p)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_clips_stream_copy_h264_and_transcode_vp9(server, tmp_path):
    streams = {s["name"].rsplit("/", 1)[-1]: s["name"] for s in server.get("/api/streams").json()["streams"]}
    for name, mode in (("park.mp4", "copy"), ("kitchen.webm", "transcode")):
        segs = server.get(f"/api/streams/{streams[name]}/timeline").json()["segments"]
        a, b = segs[2], segs[3]
        info = server.get(f"/api/clips/{a['id']}/info", params={"to": b["id"]}).json()
        assert info["mode"] == mode and info["start"] == a["start"] and info["end"] == b["end"]
        assert info["clip_start"] <= a["start"] and a["start"] - info["clip_start"] < 1.01  # one GOP at most
        r = server.get(info["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        probe = _probe(r.content, tmp_path)
        assert probe["streams"][0]["codec_name"] == "h264"
        assert b["end"] - a["start"] - 0.1 <= float(probe["format"]["duration"]) <= b["end"] - info["clip_start"] + 1.1
        # a browser seeks: byte ranges are served
        part = server.get(info["url"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100


def test_upload_a_query_clip(server, serve_files):
    with open(serve_files / "query.mp4", "rb") as f:
        r = server.client.post(
            "/api/search", params={"k": 4, "group": "segments"}, files={"video": ("q.mp4", f, "video/mp4")}
        )
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 4 and r.json()["query"] == {"video": "q.mp4"}


def test_a_non_local_bind_needs_a_token_or_insecure(capsys, tmp_path, serve_store):
    from vmstream.cli import main

    assert main(["serve", "--index", str(serve_store), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--token-file" in err and "--insecure" in err and "\n" not in err
    (tmp_path / "short").write_text("abc\n")
    assert main(["serve", "--index", str(serve_store), "--token-file", str(tmp_path / "short")]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_bearer_token_on_every_request(serve_store, serve_files, tmp_path):
    token = "s3cret-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    s = Server(serve_store, "--token-file", str(tmp_path / "token"), files=serve_files)
    try:
        for path in ("/api/streams", "/", "/metrics", "/api/search?text=a+dog"):
            r = s.get(path)
            assert r.status_code == 401 and r.json()["field"] == "authorization"
        assert s.get("/api/streams", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert s.get("/api/streams", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        page = s.get(f"/?token={token}", follow_redirects=False)
        assert page.status_code == 303 and "httponly" in page.headers["set-cookie"].lower()
        s.client.cookies.set("vmstream_token", token)
        assert s.client.get("/api/streams").status_code == 200
    finally:
        s.stop()


def test_a_store_without_captured_thumbnails_decodes_them_from_the_source(serve_store, serve_files, tmp_path):
    import shutil

    from .conftest import copy_store

    out = copy_store(serve_store, tmp_path / "old")
    shutil.rmtree(out / "thumbs")  # a store written before thumbnails were captured
    s = Server(out, files=serve_files)
    try:
        name = next(x["name"] for x in s.get("/api/streams").json()["streams"] if x["name"].endswith("park.mp4"))
        seg = s.get(f"/api/streams/{name}/timeline").json()["segments"][3]
        r = s.get(f"/api/thumbs/{seg['id']}.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        im = Image.open(io.BytesIO(r.content))
        assert im.size == (224, 168)  # decoded from the 320x240 source, 224 wide
    finally:
        s.stop()


def test_a_source_that_is_gone_has_thumbnails_but_no_clip(gone_store, serve_files):
    s = Server(gone_store, files=serve_files)
    try:
        streams = s.get("/api/streams").json()["streams"]
        assert [x["playable"] for x in streams] == [False]
        m = s.get("/api/search", params={"text": "a dog"}).json()["results"][0]
        assert m["live"] and m["clip_url"] is None and m["clip_info_url"] is None
        assert s.get(m["thumb_url"]).status_code == 200
        r = s.get(f"/api/clips/{m['id']}")
        assert r.status_code == 404 and r.json()["field"] == "id" and "thumbnail but no clip" in r.json()["error"]
    finally:
        s.stop()


def test_a_classifier_store_is_served_without_text_search(serve_files, tmp_path):
    import torch

    from tests.fixtures.videomamba import make_tiny_model
    from vmstream.cli import main

    torch.save({"model": make_tiny_model(seed=5).state_dict()}, tmp_path / "cls.pth")
    assert (
        main(
            [
                "run",
                str(serve_files / "later.mp4"),
                "--checkpoint",
                str(tmp_path / "cls.pth"),
                "--out",
                str(tmp_path / "out"),
                "--fps",
                "4",
                "--set",
                "decode.img_size=32",
                "--no-progress",
                "--set",
                "output.console=false",
            ]
        )
        == 0
    )
    s = Server(tmp_path / "out", files=serve_files)
    try:
        ready = s.get("/readyz").json()
        assert ready["ready"] and not ready["text_search"]
        r = s.get("/api/search", params={"text": "a dog"})
        assert r.status_code == 400 and r.json()["field"] == "text"
        assert "video classifier with no text encoder" in r.json()["error"]
        first = s.get("/api/streams").json()["streams"][0]["name"]
        uid = s.get(f"/api/streams/{first}/timeline").json()["segments"][0]["id"]
        hits = s.get("/api/search", params={"id": uid, "group": "segments"}).json()["results"]
        assert len(hits) == 3 and all(h["labels"] for h in hits)
    finally:
        s.stop()


def test_a_missing_store_is_one_line(capsys, tmp_path):
    from vmstream.cli import main

    assert main(["serve", "--index", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such directory" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--index", str(tmp_path / "empty")]) == 2
    assert "not a store" in capsys.readouterr().err
