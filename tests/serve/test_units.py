"""The serve parts on their own: moments, the batching text encoder and its bound, the
clip cache's bound, and the thumbnails a run captures."""

from __future__ import annotations

import io
import logging
import shutil

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tests.fixtures.videotext import make_tiny_videotext
from vmstream.models.text_query import encode_queries
from vmstream.models.tokenizer import BertTokenizer
from vmstream.serve.clips import ClipCache
from vmstream.serve.moments import merge_moments
from vmstream.serve.text_batcher import QueueFull, TextBatcher
from vmstream.store import SearchHit
from vmstream.store.results import read_table


def _hit(stream, i, score):
    return SearchHit(
        uid=100 * hash(stream) % 1000 + i,
        score=score,
        stream_id=stream,
        segment_index=i,
        t_start=2.0 * i,
        t_end=2.0 * i + 1.7,
    )


def test_adjacent_hits_of_a_stream_merge_into_a_moment_with_its_best_score():
    hits = [_hit("a", 3, 0.5), _hit("a", 4, 0.9), _hit("b", 4, 0.7), _hit("a", 5, 0.2), _hit("a", 9, 0.8)]
    ms = merge_moments(hits)
    assert [(m.stream, m.start, m.end, m.score) for m in ms] == [
        ("a", 6.0, 11.7, 0.9),
        ("a", 18.0, 19.7, 0.8),
        ("b", 8.0, 9.7, 0.7),
    ]
    assert [h.segment_index for h in ms[0].hits] == [3, 4, 5] and ms[0].best.segment_index == 4
    long = merge_moments([_hit("a", i, 0.5) for i in range(40)], max_span_s=30)
    assert [len(m.hits) for m in sorted(long, key=lambda m: m.start)] == [15, 15, 10]
    assert all(m.end - m.start <= 30 for m in long)


def test_queries_that_arrive_together_are_encoded_in_one_batch(serve_files):
    model = make_tiny_videotext(seed=3)
    tok = BertTokenizer(serve_files / "vocab.txt")
    b = TextBatcher(model, tok, max_batch=32, linger_s=0.05)
    try:
        texts = ["a dog", "cooking", "a person", "riding a bike", "the dog catches a frisbee"]
        futs = [b.submit(t) for t in texts]
        got = np.stack([f.result(timeout=30) for f in futs])
        assert b.batches == 1 and b.encoded == 5
        want = encode_queries(model, texts, tokenizer=tok).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert b.check("a dog " * 30).startswith("62 tokens")
    finally:
        b.close()


def test_a_full_queue_refuses_at_once(serve_files):
    model = make_tiny_videotext(seed=3)
    b = TextBatcher(model, BertTokenizer(serve_files / "vocab.txt"), max_batch=1, max_queue=2, linger_s=0)
    try:
        futs, refused = [], 0
        for _ in range(50):  # each put is microseconds, each encode at least a millisecond
            try:
                futs.append(b.submit("a dog catches the frisbee"))
            except QueueFull as e:
                refused += 1
                assert "queue is full (2 queries waiting)" in str(e)
        assert refused > 0
        assert all(f.result(timeout=30).shape == (16,) for f in futs)
    finally:
        b.close()


def test_clip_cache_stays_under_its_size(serve_files, tmp_path):
    cache = ClipCache(tmp_path / "c", max_bytes=150_000)
    src = str(serve_files / "park.mp4")
    sizes = []
    for i in range(5):
        path, info = cache.get(f"clip{i}", src, float(i), float(i) + 1.5)
        assert info["mode"] == "copy" and path.exists()
        sizes.append(path.stat().st_size)
        assert cache.size() <= max(150_000, sizes[-1])
    assert len(list((tmp_path / "c").glob("*.mp4"))) < 5
    again, _ = cache.get("clip4", src, 4.0, 5.5)
    assert cache.hits == 1 and again.exists()


def test_run_captures_a_thumbnail_of_each_segments_middle_frame(serve_store):
    segs = read_table(serve_store, "segments")
    thumbs = read_table(serve_store, "thumbs")
    assert thumbs.num_rows == segs.num_rows == 14
    assert sorted(thumbs.column("uid").to_pylist()) == sorted(segs.column("uid").to_pylist())
    for row in thumbs.to_pylist()[:4]:
        im = Image.open(io.BytesIO(row["jpeg"]))
        assert im.format == "JPEG" and im.size == (32, 32) and len(row["jpeg"]) < 4000
        seg = next(s for s in segs.to_pylist() if s["uid"] == row["uid"])
        assert seg["t_start"] <= row["t"] <= seg["t_end"]


def test_the_thumbnail_is_the_middle_frame(tmp_path):
    from vmstream.records import Frame
    from vmstream.stages.segmenter import Segmenter

    frames = [Frame("s", i, i / 4, np.full((32, 48, 3), 30 * i, np.uint8)) for i in range(8)]
    seg = next(iter(Segmenter(num_frames=8).segments(frames)))
    im = np.asarray(Image.open(io.BytesIO(seg.thumb)))
    assert im.shape == (32, 48, 3) and abs(float(im.mean()) - 30 * 4) < 3
    assert next(iter(Segmenter(num_frames=8, thumbnails=False).segments(frames))).thumb == b""


def _damage_a_jpeg(part, jpeg: bytes) -> None:
    """Flip one byte inside a JPEG as stored in the part (thumbnails are stored
    uncompressed by Parquet's codecs only when they do not shrink; find it either way)."""
    data = bytearray(part.read_bytes())
    at = data.find(jpeg[100:140])
    assert at > 0, "the JPEG's bytes are not stored verbatim in the part"
    data[at + 5] ^= 0xFF
    part.write_bytes(bytes(data))


def test_a_damaged_thumbnails_part_is_left_out_with_a_warning_never_served(serve_store, tmp_path, caplog):
    from vmstream.serve.thumb_index import ThumbIndex
    from vmstream.store.results import check_part, part_paths

    out = tmp_path / "out"
    shutil.copytree(serve_store, out)
    thumbs = read_table(out, "thumbs")
    want = dict(zip(thumbs.column("uid").to_pylist(), thumbs.column("jpeg").to_pylist()))
    index = ThumbIndex(out / "thumbs")
    index.refresh()
    assert {u: index.get(u) for u in want} == want

    parts = part_paths(out / "thumbs")
    victim = parts[0]
    in_victim = set(pq.read_table(victim).column("uid").to_pylist())
    assert in_victim and check_part(victim) is None
    _damage_a_jpeg(victim, next(j for u, j in want.items() if u in in_victim))
    assert "checksum mismatch" in check_part(victim).what

    fresh = ThumbIndex(out / "thumbs")  # a server started on the damaged store
    with caplog.at_level(logging.WARNING, logger="vmstream.serve.thumb_index"):
        fresh.refresh()
        got = {u: fresh.get(u) for u in want}
    assert all(got[u] is None for u in in_victim)
    assert all(got[u] == want[u] for u in want if u not in in_victim)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and victim.name in warned[0] and "checksum mismatch" in warned[0]

    # The running server's index saw the part intact; the damage is found when the
    # part changes on disk, and its thumbnails are no longer served either.
    index.refresh()
    assert all(index.get(u) is None for u in in_victim)
    assert victim.read_bytes() != b"" and victim.exists()  # detected, never written over
