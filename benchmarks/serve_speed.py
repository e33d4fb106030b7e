"""`vmstream serve` speed over the 1M-vector store of `text_search_speed.py` (issue 22).

Builds that store (its builder, `build_store`, 512-d joint-space embeddings, ivfsq8,
inner product) as a served OUT directory: the id map names 1000 streams of 1000 two-second
segments, and a captured-thumbnail table holds a 64x64 JPEG for every segment (32
distinct pictures, so the table stays ~100 MB). A separate process serves it with the
official VideoMamba-M video-text shapes (BERT-base text encoder, random weights: speed
does not depend on them) behind the batching text encoder, on 127.0.0.1. Then:

  * one client, text queries one after another -> serve_text_p50_ms, serve_text_p99_ms
  * 16 clients at once -> serve_text_qps_16_clients (and the mean batch the encoder ran)
  * one client, search by a stored id -> serve_id_p99_ms
  * one client, captured thumbnails -> serve_thumb_p99_ms
  * headless Chromium (Selenium): Enter in the page's search box to every thumbnail of the
    results loaded -> browser_results_visible_ms (median of the queries; figure only)

Baseline measured in the same run: the text encoder alone at batch 1 (a fresh process, no
HTTP), printed as serve_text_p50_over_encoder= (the cost of the HTTP service on top);
`--encoder-only VOCAB` prints that baseline alone.

    .venv/bin/python benchmarks/serve_speed.py                # 1M stored
    .venv/bin/python benchmarks/serve_speed.py --n 100000     # quicker
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

QUERIES = [
    "a dog catches a frisbee in the park",
    "a person is cooking in a kitchen",
    "people riding bikes on a street",
    "waves on the sea at sunset",
    "a crowd in a train station",
    "snow falling on parked cars",
    "a man playing the guitar",
    "children playing football",
    "a cat sleeping on a sofa",
    "traffic at a busy crossing at night",
    "a woman reading a book",
    "fireworks over a city",
]
WORDS = sorted({w for q in QUERIES for w in q.split()})
SEG_PER_STREAM = 1000


def write_vocab(path: Path) -> None:
    """A WordPiece vocabulary with BERT-base's size and special tokens, holding the
    queries' words (tokenization cost as for real captions; the weights are random)."""
    special = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [w for w in WORDS if w not in special]
    filler = [f"w{i}" for i in range(30522 - len(special) - len(words))]
    path.write_text("\n".join(special + words + filler) + "\n")


def build_out(out: Path, n: int) -> None:
    from PIL import Image
    from text_search_speed import build_store, segment_embeddings

    from vmstream.records import THUMB_SCHEMA
    from vmstream.stages.thumbnails import jpeg_thumbnail
    from vmstream.store.results import TABLES, PartTable

    t0 = time.perf_counter()
    x = segment_embeddings(n)

    def columns(ids):
        stream = [f"archive/video{int(i) // SEG_PER_STREAM:04d}.mp4" for i in ids]
        t = (ids % SEG_PER_STREAM) * 2.0
        return {
            "stream_id": stream,
            "segment_index": (ids % SEG_PER_STREAM).tolist(),
            "t_start": t.tolist(),
            "t_end": (t + 1.9).tolist(),
            "labels": [["a label"]] * len(ids),
            "scores": [[0.5]] * len(ids),
        }

    store = build_store(out / "index", x, columns)
    store.close()
    del x
    rng = np.random.default_rng(0)
    pics = []
    for j in range(32):
        base = np.linspace(0, 255, 64, dtype=np.float32)
        im = (
            np.stack(
                [np.add.outer(base, base * (j % 4) / 3) % 256, np.tile(base, (64, 1)).T, np.full((64, 64), 8 * j)], -1
            )
            + rng.normal(0, 12, (64, 64, 3))
        ).clip(0, 255)
        pics.append(jpeg_thumbnail(im.astype(np.uint8)))
    assert Image.open(io.BytesIO(pics[0])).size == (64, 64)
    schema, key = TABLES["thumbs"]
    assert schema.equals(THUMB_SCHEMA)
    table = PartTable(out / "thumbs", schema, key, max_delay_s=None, max_small_parts=1 << 30)
    for i in range(n):
        table.append(
            {
                "uid": i,
                "stream_id": f"archive/video{i // SEG_PER_STREAM:04d}.mp4",
                "segment_index": i % SEG_PER_STREAM,
                "t": (i % SEG_PER_STREAM) * 2.0 + 0.95,
                "jpeg": pics[i % 32],
            }
        )
    table.close()
    print(f"built {n:,d} stored segments with captured thumbnails in {time.perf_counter() - t0:.0f} s", flush=True)


def serve(out: Path, vocab: Path) -> None:
    """The server process: the app factory with the M-size video-text model, on uvicorn."""
    import torch
    import uvicorn

    from vmstream.models import VideoTextMamba
    from vmstream.models.tokenizer import BertTokenizer
    from vmstream.serve.app import create_app

    torch.manual_seed(0)
    model = VideoTextMamba().eval()
    app = create_app(out, model=model, tokenizer=BertTokenizer(vocab), model_error="")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", http="h11")
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        print(f"listening http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/", flush=True)

    server.startup = startup
    server.run()


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def encoder_baseline_ms(vocab: Path, repeats: int) -> float:
    import torch

    from vmstream.models import VideoTextMamba
    from vmstream.models.text_query import encode_queries
    from vmstream.models.tokenizer import BertTokenizer

    torch.manual_seed(0)
    model, tok = VideoTextMamba().eval(), BertTokenizer(vocab)
    ts = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        encode_queries(model, [QUERIES[i % len(QUERIES)]], tokenizer=tok)
        ts.append(time.perf_counter() - t0)
    return pct(ts[2:], 50)


def browser_ms(url: str, queries: list[str]) -> float | None:
    try:
        from tests.serve.browser import CHROMEDRIVER, CHROMIUM, start_chromium
    except ImportError:
        return None
    if not CHROMIUM or not CHROMEDRIVER:
        return None
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = start_chromium()
    times = []
    try:
        d.get(url)
        d.execute_script(
            "document.getElementById('q').addEventListener('keydown', e => {"
            " if (e.key === 'Enter') { window.__t0 = performance.now(); "
            " document.getElementById('grid').replaceChildren(); } });"
        )
        for q in queries:
            box = d.find_element(By.ID, "q")
            box.clear()
            box.send_keys(q)
            box.send_keys(Keys.ENTER)
            ms = d.execute_async_script("""
                const done = arguments[arguments.length - 1];
                (function poll() {
                  const imgs = [...document.querySelectorAll('#grid .card img')];
                  if (imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)) done(performance.now() - window.__t0);
                  else setTimeout(poll, 2);
                })();""")
            times.append(ms)
    finally:
        d.quit()
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="stored segments (default 1M)")
    ap.add_argument("--queries", type=int, default=200, help="sequential requests per figure")
    ap.add_argument("--serve", nargs=2, metavar=("OUT", "VOCAB"), help=argparse.SUPPRESS)
    ap.add_argument("--encoder-only", metavar="VOCAB", help="print the in-process text encoder's batch-1 p50 (ms)")
    args = ap.parse_args()
    if args.encoder_only:
        print(f"{encoder_baseline_ms(Path(args.encoder_only), 30):.2f}")
        return
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return
    import httpx

    with tempfile.TemporaryDirectory(prefix="serve-speed-") as tmp:
        out, vocab = Path(tmp) / "out", Path(tmp) / "vocab.txt"
        write_vocab(vocab)
        build_out(out, args.n)
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(out), str(vocab)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        try:
            url = None
            for line in proc.stdout:
                m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
                if m:
                    url = m.group(1)
                    break
            if url is None:
                raise SystemExit("the server did not start")
            c = httpx.Client(base_url=url, timeout=120)
            print(f"serving {c.get('/api/streams').json()['segments']:,d} segments at {url}", flush=True)

            def timed(path, **params):
                t0 = time.perf_counter()
                r = c.get(path, params=params)
                dt = time.perf_counter() - t0
                assert r.status_code == 200, r.text[:300]
                return dt, r

            for q in QUERIES[:4]:  # warm up
                timed("/api/search", text=q)
            text_t = [
                timed("/api/search", text=QUERIES[i % len(QUERIES)] + f" {i % 7}")[0] for i in range(args.queries)
            ]
            ids = [h["id"] for h in timed("/api/search", text=QUERIES[0], k=200, group="segments")[1].json()["results"]]
            id_t = [timed("/api/search", id=ids[i % len(ids)])[0] for i in range(args.queries)]
            rng = np.random.default_rng(1)
            thumb_ids = rng.integers(0, args.n, args.queries)
            for u in thumb_ids[:10]:
                timed(f"/api/thumbs/{u}.jpg")
            thumb_t = [timed(f"/api/thumbs/{u}.jpg")[0] for u in thumb_ids]

            stats0 = c.get("/metrics").text
            total, clients, per = 0, 16, max(10, args.queries // 8)
            errors = []

            def client(j):
                nonlocal total
                with httpx.Client(base_url=url, timeout=120) as cc:
                    for i in range(per):
                        r = cc.get("/api/search", params={"text": QUERIES[(i + j) % len(QUERIES)] + f" {j}"})
                        if r.status_code != 200:
                            errors.append(r.status_code)

            threads = [threading.Thread(target=client, args=(j,)) for j in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            qps = (clients * per - len(errors)) / wall
            stats1 = c.get("/metrics").text

            def metric(text, name):
                m = re.search(rf"^{name} (\S+)$", text, re.M)
                return float(m.group(1)) if m else 0.0

            batches = metric(stats1, "vmstream_text_batches_total") - metric(stats0, "vmstream_text_batches_total")
            encoded = metric(stats1, "vmstream_text_queries_encoded_total") - metric(
                stats0, "vmstream_text_queries_encoded_total"
            )
            print(
                f"16 clients: {clients * per} queries in {wall:.1f} s, {len(errors)} refused, mean encoder batch "
                f"{encoded / max(batches, 1):.1f}",
                flush=True,
            )
            vis = browser_ms(url + "/", QUERIES[:6])
            c.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)

        # with the server gone, in a fresh process: faiss's OpenMP pool loaded beside torch's
        # (as in this process, which built the store) slows torch down many times over
        base = subprocess.run(
            [sys.executable, __file__, "--encoder-only", str(vocab)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            check=True,
        )
        base_ms = float(base.stdout.strip().splitlines()[-1])
    p50 = pct(text_t, 50)
    print(f"text encoder alone (batch 1, in process): p50 {base_ms:.1f} ms")
    print(f"serve_text_p50_ms={p50:.1f}")
    print(f"serve_text_p99_ms={pct(text_t, 99):.1f}")
    print(f"serve_text_qps_16_clients={qps:.1f}")
    print(f"serve_id_p50_ms={pct(id_t, 50):.2f}")
    print(f"serve_id_p99_ms={pct(id_t, 99):.2f}")
    print(f"serve_thumb_p50_ms={pct(thumb_t, 50):.2f}")
    print(f"serve_thumb_p99_ms={pct(thumb_t, 99):.2f}")
    print(
        f"browser_results_visible_ms={vis:.0f}"
        if vis is not None
        else "browser_results_visible_ms=nan  # no chromium/chromedriver"
    )
    print(f"serve_text_p50_over_encoder={p50 / base_ms:.2f}")


if __name__ == "__main__":
    main()
