"""A live store: a `vmstream run` writes the store a server is serving; the server picks
up each new generation without a restart and no answer ever mixes two of them. A damaged
store answers 503 with its one-line reason, and recovers when the files are whole."""

from __future__ import annotations

import threading

from .conftest import Server, copy_store, run_store, wait_for


def test_a_run_writing_the_store_under_a_running_server(serve_store, serve_files, tmp_path):
    out = copy_store(serve_store, tmp_path / "out")
    s = Server(out, files=serve_files)
    seen, problems, stop = [], [], threading.Event()

    def watch():
        while not stop.is_set():
            r = s.get("/api/streams")
            if r.status_code != 200:
                problems.append((r.status_code, r.text[:200]))
                continue
            b = r.json()
            seen.append((b["generation"], b["segments"], sum(x["segments"] for x in b["streams"]), len(b["streams"])))
            q = s.get("/api/search", params={"text": "a dog", "k": 50, "group": "segments"})
            if q.status_code != 200:
                problems.append((q.status_code, q.text[:200]))

    try:
        before = s.get("/api/streams").json()
        assert before["segments"] == 14
        t = threading.Thread(target=watch)
        t.start()
        try:
            run_store(serve_files, out, str(serve_files / "later.mp4"))
            after = wait_for(lambda: (lambda b: b if len(b["streams"]) == 3 else None)(s.get("/api/streams").json()))
        finally:
            stop.set()
            t.join(timeout=60)
        assert not problems, problems[:3]
        assert after["segments"] == 14 + 4 and after["generation"] > before["generation"]
        assert all(total == parts for _, total, parts, _ in seen), "an answer mixed two states of the store"
        counts = [total for _, total, _, _ in seen]
        assert counts == sorted(counts) and set(counts) <= set(range(14, 19))
        later = next(x["name"] for x in after["streams"] if x["name"].endswith("later.mp4"))
        segs = s.get(f"/api/streams/{later}/timeline").json()["segments"]
        assert len(segs) == 4
        r = s.get(f"/api/thumbs/{segs[1]['id']}.jpg")
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
        hits = s.get("/api/search", params={"id": segs[0]["id"], "k": 17, "group": "segments"}).json()["results"]
        assert len(hits) == 17
    finally:
        s.stop()


def test_a_damaged_store_answers_503_with_its_reason_and_recovers(serve_store, serve_files, tmp_path):
    out = copy_store(serve_store, tmp_path / "out")
    s = Server(out, files=serve_files)
    try:
        uid = s.get("/api/search", params={"text": "a dog"}).json()["results"][0]["id"]
        ids = next((out / "index").glob("gen-*/ids.parquet"))
        good = ids.read_bytes()
        ids.write_bytes(good[:100] + bytes(b ^ 0xFF for b in good[100:200]) + good[200:])
        r = wait_for(lambda: (lambda r: r if r.status_code == 503 else None)(s.get("/api/search", params={"id": uid})))
        body = r.json()
        assert "ids.parquet" in body["error"] and "vmstream store repair" in body["error"]
        assert "\n" not in body["error"] and "Traceback" not in r.text
        for path in ("/api/streams", f"/api/thumbs/{uid}.jpg", f"/api/segments/{uid}", "/readyz"):
            assert s.get(path).status_code == 503
        assert s.get("/healthz").status_code == 200
        assert "vmstream_store_ready 0" in s.get("/metrics").text
        ids.write_bytes(good)
        wait_for(lambda: s.get("/api/search", params={"id": uid}).status_code == 200)
        assert s.get("/readyz").status_code == 200
    finally:
        s.stop()
