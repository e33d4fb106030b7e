"""`vmstream search`: segments like a stored one, like a stream's moment, or like a query video."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from vmstream.cli.common import add_common, add_model_args, config_from_args
from vmstream.errors import UserError
from vmstream.printable import printable

# Upper bounds: FAISS allocates k results per query up front (-k 1e9 took 1 GB before
# answering), and every --rerank candidate is decoded again from its source.
MAX_HITS = 100_000
MAX_RERANK = 1_000


def _positive_int(text: str, top: int = MAX_HITS) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} hits: ask for at least 1")
    if v > top:
        raise argparse.ArgumentTypeError(f"{v} hits: at most {top}")
    return v


def _rerank_k(text: str) -> int:
    return _positive_int(text, MAX_RERANK)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a time must be a finite number of seconds >= 0")
    return v


def _uid(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a segment id (a whole number)") from None
    if not -(2**63) <= v < 2**63:
        raise argparse.ArgumentTypeError(f"{v} is not a segment id (ids are signed 64-bit numbers)")
    return v


def add_parser(sub) -> None:
    search = sub.add_parser(
        "search",
        help="search a FAISS store by text, by id, by stream+time, or by a query video",
        description="Find the stored segments most like a query: a stored segment (--id), the segment of a "
        "stream at a time (--stream ID --at S; the stream as given to `run`), or a query video "
        "embedded with the store's own model and decoding (--video FILE); in a store built by a "
        "video-text model, a sentence (--text). Prints rank, score (cosine; for --text the "
        "model's video-text similarity), stream, time range, segment index, id and label.",
    )
    search.add_argument("--index", required=True, metavar="DIR", help="the store (a run's --out or its index/ dir)")
    q = search.add_mutually_exclusive_group(required=True)
    q.add_argument("--video", metavar="FILE", help="embed this video and search with it")
    q.add_argument(
        "--text",
        action="append",
        metavar="TEXT",
        help="search by a sentence (repeatable; a store built by a video-text model, e.g. "
        "videomamba_m16_25M_f8_res224)",
    )
    q.add_argument("--id", type=_uid, metavar="N", help="search with a stored vector's id")
    q.add_argument("--stream", metavar="ID", help="search with the stored segment of stream ID at --at")
    search.add_argument(
        "--at",
        type=_seconds,
        metavar="SECONDS",
        help="with --video: use the segment covering this time (default: the whole video, "
        "mean of its segment embeddings); with --stream: required",
    )
    search.add_argument("-k", type=_positive_int, default=10, help=f"number of hits (default 10, at most {MAX_HITS})")
    search.add_argument("--json", action="store_true", help="print hits as JSON lines")
    search.add_argument("--config", help="YAML config for embedding --video (model, decoding)")
    search.add_argument(
        "--rerank",
        type=_rerank_k,
        metavar="K",
        help="--text: re-score the top K hits with the model's ITM head, re-decoding those "
        "segments from their sources (the official two-stage retrieval)",
    )
    search.add_argument(
        "--vocab",
        metavar="FILE",
        help="--text: bert-base-uncased vocab.txt (default $VMSTREAM_BERT_VOCAB or the hub cache)",
    )
    add_model_args(search)
    add_common(search)
    search.set_defaults(handler=main)


def store_dir(path: str) -> Path:
    p = Path(path)
    # A run's --out holds the store in index/ (even when the store's CURRENT is damaged
    # or missing: the store then says so, naming the file).
    if (p / "index").is_dir():
        return p / "index"
    return p


def main(args) -> int:
    from vmstream.store import open_store

    if args.at is not None and args.video is None and args.stream is None:
        query = "--id" if args.id is not None else "--text"
        raise UserError(f"--at {args.at:g} picks a time of --video or --stream; it has no meaning with {query}")
    where = store_dir(args.index)
    try:
        store = open_store(where, readonly=True)  # the backend its description names
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    k = args.k
    if args.rerank is not None and args.text is None:
        raise UserError("--rerank re-scores text search hits; it needs --text")
    if args.text is not None:
        queries = list(args.text)
        print_text_hits(
            queries,
            _search_by_text(args, store, where, queries, k),
            as_json=args.json,
            reranked=args.rerank is not None,
        )
        return 0
    if args.id is not None:
        if store.get(args.id) is None:
            raise UserError(f"id {args.id} is not in the store {where}")
        hits = store.search_id(args.id, k)
    elif args.stream is not None:
        if args.at is None:
            raise UserError("--stream needs --at SECONDS")
        stream = find_stream(args.stream, store.streams(), where)
        at_segment(store, stream, args.at)
        hits = store.search_at(stream, args.at, k)
    else:
        hits = _search_by_video(args, store, where, k)
    print_hits(hits, as_json=args.json)
    return 0


def find_stream(given: str, streams: list[str], where) -> str:
    """The stored stream id the user means: the id itself, or the path as given to
    `run` (ids of files are absolute paths), or a unique file name."""
    if given in streams:
        return given
    for candidate in (os.path.abspath(given), os.path.realpath(given)):
        if candidate in streams:
            return candidate
    name = os.path.basename(given.rstrip("/"))
    by_name = [s for s in streams if os.path.basename(s.rstrip("/")) == name]
    if len(by_name) == 1:
        return by_name[0]
    shown = ", ".join(streams[:10]) + (f" ... ({len(streams)} in all)" if len(streams) > 10 else "")
    if len(by_name) > 1:
        raise UserError(
            f"stream {given!r} matches {len(by_name)} streams in the store {where}: "
            f"{', '.join(by_name[:10])}; give the whole id"
        )
    raise UserError(f"stream {given!r} is not in the store {where}; it holds: {shown or 'no streams'}")


def at_segment(store, stream: str, t: float) -> None:
    """Refuse a time outside what the store holds of the stream (search_at would quietly
    take the nearest segment)."""
    from vmstream.stages.sinks.console import fmt_time

    rows = store.stream_rows(stream)
    t0 = min(rows.column("t_start").to_pylist())
    t1 = max(rows.column("t_end").to_pylist())
    if not t0 - 0.5 <= t <= t1 + 0.5:
        raise UserError(
            f"--at {t:g}: the store holds stream {stream!r} from {fmt_time(t0)} to {fmt_time(t1)} ({t0:.1f}-{t1:.1f} s)"
        )


def _search_by_video(args, store, where: Path, k: int):
    from vmstream.pipeline.assembly import load_pipeline_model
    from vmstream.pipeline.sequential import embed_video
    from vmstream.stages.sources import SourceSpecError, resolve_sources

    try:  # before the model loads: a mistyped name is one line at once
        resolve_sources([args.video])
    except (SourceSpecError, ValueError, FileNotFoundError) as e:
        raise UserError(f"--video {e}") from None
    cfg = search_config(args, where)
    model = load_pipeline_model(cfg)
    digest = store.meta.get("checkpoint_digest") or ""
    ours = model.card.checkpoint_digest
    if digest and ours and digest != ours:
        raise UserError(
            f"the store was built with checkpoint {digest[:12]}…, the query model is "
            f"{ours[:12]}…; embeddings would not be comparable"
        )
    embs, spans = embed_video(cfg, model, args.video)
    if args.at is None:
        return store.search_video(embs, k)
    inside = [j for j, (t0, t1) in enumerate(spans) if t0 <= args.at <= t1]
    if not inside:
        raise UserError(f"--at {args.at:g}: the query video's segments cover {spans[0][0]:.1f}-{spans[-1][1]:.1f} s")
    return store.search(embs[inside[0]], k)


def _search_by_text(args, store, where: Path, queries: list, k: int):
    from vmstream.pipeline.assembly import is_videotext, load_pipeline_model, make_tokenizer

    for i, q in enumerate(queries):
        if not q.strip():
            raise UserError(f"--text {i + 1} is empty")
    cfg = search_config(args, where)
    cfg.model.labels = None  # the run's label prompts play no part in a search
    model = load_pipeline_model(cfg)
    if not is_videotext(model):
        raise UserError(
            f"--text needs a store built by a video-text model; {where} was built with model "
            f"{model.card.name!r}, a video classifier with no text encoder"
        )
    tokenizer = make_tokenizer(args.vocab or cfg.model.vocab)
    try:
        hits = store.search_text(queries, model, max(k, args.rerank or 0), tokenizer=tokenizer)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not args.rerank:
        return [[(h, None) for h in hs[:k]] for hs in hits]
    from vmstream.pipeline.rerank import rerank

    out = []
    for query, hs in zip(queries, hits):
        ranked, notes = rerank(cfg, model, tokenizer, query, hs, args.rerank)
        for note in dict.fromkeys(notes):
            print(f"vmstream search: --rerank: {printable(note)}", file=sys.stderr)
        out.append([(r.hit, r.itm) for r in ranked[:k]])
    return out


def print_text_hits(queries, hits_per_query, as_json: bool = False, reranked: bool = False) -> None:
    """Hits as (SearchHit, ITM logit or None): `score` is the video-text similarity."""
    from vmstream.stages.sinks.console import fmt_time

    for query, hits in zip(queries, hits_per_query):
        if as_json:
            for rank, (h, itm) in enumerate(hits, 1):
                row = {
                    "query": query,
                    "rank": rank,
                    "id": h.uid,
                    "uid": h.uid,
                    "score": round(float(h.score), 6),
                    "stream_id": h.stream_id,
                    "segment_index": h.segment_index,
                    "t_start": h.t_start,
                    "t_end": h.t_end,
                    "uri": h.uri,
                }
                if reranked:
                    row["itm"] = None if itm is None else round(itm, 6)
                print(json.dumps(row))
            continue
        if len(queries) > 1:
            print(f"query: {printable(query)}")
        for rank, (h, itm) in enumerate(hits, 1):
            extra = "" if itm is None else f"  itm {itm:.4f}"
            print(
                f"{rank:3d}. {h.score:.4f}{extra}  {printable(h.stream_id)}  "
                f"[{fmt_time(h.t_start)}-{fmt_time(h.t_end)}]  "
                f"segment {h.segment_index}  id {h.uid}"
            )
        if not hits:
            print("no hits")


def search_config(args, where: Path):
    """Embed the query video with the store's decoding and segmenting (its embeddings are
    comparable only then), and with the store's model unless --model/--checkpoint name it
    (e.g. the checkpoint file moved; the digest check catches a different model). A
    --config replaces the store's settings; --set overrides either."""
    from vmstream.pipeline.config import ConfigError, load_config
    from vmstream.pipeline.manifest import RUN_MANIFEST, read_manifest

    manifest = None if getattr(args, "config", None) else read_manifest(where.parent)
    if manifest is None:
        return config_from_args(args)
    run_cfg = manifest.get("config", {})
    data = {k: dict(run_cfg[k]) for k in ("model", "decode", "segment") if k in run_cfg}
    model = data.setdefault("model", {})
    if getattr(args, "checkpoint", None) or getattr(args, "model", None):
        model["checkpoint"] = getattr(args, "checkpoint", None)
        model["name"] = getattr(args, "model", None) or model.get("name")
    if getattr(args, "device", None):
        model["device"] = args.device
    try:
        return load_config(overrides=data, sets=getattr(args, "sets", []))
    except ConfigError as e:
        raise UserError(f"{where.parent / RUN_MANIFEST}: {e}") from None


def print_hits(hits, as_json: bool = False) -> None:
    from vmstream.stages.sinks.console import fmt_time

    for rank, h in enumerate(hits, 1):
        if as_json:
            # "id" as the text output says it; "uid" kept for readers written before it
            print(
                json.dumps(
                    {
                        "rank": rank,
                        "id": h.uid,
                        "uid": h.uid,
                        "score": round(float(h.score), 6),
                        "stream_id": h.stream_id,
                        "segment_index": h.segment_index,
                        "t_start": h.t_start,
                        "t_end": h.t_end,
                        "uri": h.uri,
                        "labels": list(h.labels),
                    }
                )
            )
        else:
            label = f"  {printable(h.label)}" if h.labels else ""
            print(
                f"{rank:3d}. {h.score:.4f}  {printable(h.stream_id)}  [{fmt_time(h.t_start)}-{fmt_time(h.t_end)}]  "
                f"segment {h.segment_index}  id {h.uid}{label}"
            )
    if not hits:
        print("no hits")
