"""The JSON API: search (text, id, stream+time, uploaded clip), streams, timelines,
segments. Ids travel as strings (64-bit ids do not fit a JavaScript number)."""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from . import params as P
from .live_store import Snapshot, stream_timeline
from .media import is_playable
from .moments import merge_moments
from .params import ApiError, bad
from .text_batcher import QueueFull

router = APIRouter(prefix="/api")
MAX_SCAN = 10_000


def _state(request: Request):
    return request.app.state.serve


def finite(x):
    """JSON has no NaN: an unknown time (a store filled without times) is null."""
    return x if x is not None and math.isfinite(x) else None


def hit_json(h) -> dict:
    return {
        "id": str(h.uid),
        "stream": h.stream_id,
        "segment": h.segment_index,
        "start": finite(h.t_start),
        "end": finite(h.t_end),
        "score": round(float(h.score), 6),
        "labels": [{"label": lb, "score": round(float(s), 4)} for lb, s in zip(h.labels, h.label_scores)][:5],
    }


def moment_json(m, uri: str) -> dict:
    first, last = m.hits[0], m.hits[-1]
    playable = is_playable(uri)
    clip = f"/api/clips/{first.uid}" + (f"?to={last.uid}" if last.uid != first.uid else "")
    return {
        "id": str(m.best.uid),
        "ids": [str(u) for u in m.ids],
        "stream": m.stream,
        "stream_name": os.path.basename(m.stream.rstrip("/")) or m.stream,
        "start": finite(m.start),
        "end": finite(m.end),
        "score": round(float(m.score), 6),
        "labels": hit_json(m.best)["labels"],
        "thumb_url": f"/api/thumbs/{m.best.uid}.jpg",
        "clip_url": clip if playable else None,
        "clip_info_url": (
            clip.replace(f"/api/clips/{first.uid}", f"/api/clips/{first.uid}/info") if playable else None
        ),
        "live": not playable,
    }


def find_stream(snap: Snapshot, given: str, field: str = "stream") -> str:
    if given in snap.streams:
        return given
    by_name = [s for s in snap.streams if os.path.basename(s.rstrip("/")) == given]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise bad(field, f"{given[:80]!r} matches {len(by_name)} streams; give the whole id")
    raise ApiError(404, f"{field}: {given[:80]!r} is not a stream of this store", field)


def _filtered_search(
    snap: Snapshot, vec: np.ndarray, k: int, *, group: str, streams, after, before, exclude=()
) -> list:
    """Hits passing the filters: fetched wider until there are enough, or MAX_SCAN nearest
    were looked at (bounded work: a filter that matches little gives fewer hits, not a
    scan of the whole store). Moments need more segments than k (adjacent ones merge)."""
    store = snap.store
    n = len(store)
    if n == 0:
        return []
    want = k if group == "segments" else 2 * k
    filtering = bool(streams) or after is not None or before is not None
    kk = min(n, want + len(exclude) + (want if filtering else 0))
    while True:
        hits = store.search(vec, kk, exclude=exclude)
        kept = [
            h
            for h in hits
            if (not streams or h.stream_id in streams)
            and (after is None or h.t_end >= after)
            and (before is None or h.t_start <= before)
        ]
        if len(kept) >= want or kk >= min(n, MAX_SCAN):
            return kept[:want]
        kk = min(n, MAX_SCAN, kk * 4)


def _answer(snap: Snapshot, hits: list, k: int, group: str, query: dict, t0: float) -> dict:
    uri = {name: s.uri for name, s in snap.streams.items()}
    if group == "segments":
        results = []
        for h in hits[:k]:
            m = merge_moments([h])[0]
            results.append(moment_json(m, uri.get(h.stream_id, h.uri)))
    else:
        moments = merge_moments(hits)[:k]
        results = [moment_json(m, uri.get(m.stream, m.best.uri)) for m in moments]
    return {
        "query": query,
        "group": group,
        "generation": snap.generation,
        "count": len(results),
        "took_ms": round((time.perf_counter() - t0) * 1e3, 2),
        "results": results,
    }


def _common(request: Request, snap: Snapshot):
    q = request.query_params
    k = P.int_param(q.get("k"), "k", default=12, lo=1, hi=P.MAX_K)
    group = q.get("group") or "moments"
    if group not in ("moments", "segments"):
        raise bad("group", f"{group[:40]!r} is not one of moments, segments")
    names = P.streams_param(q.get("streams"))
    streams = {find_stream(snap, s, "streams") for s in names} if names else None
    after, before = P.seconds_param(q.get("after"), "after"), P.seconds_param(q.get("before"), "before")
    P.time_range(after, before)
    return k, group, streams, after, before


KNOWN = {"text", "id", "stream", "at", "k", "group", "streams", "after", "before"}


@router.get("/search", summary="Search by text, by a stored segment id, or by a stream's moment")
async def search(
    request: Request,
    text: str | None = None,
    id: str | None = None,
    stream: str | None = None,
    at: str | None = None,
    k: str | None = None,
    group: str | None = None,
    streams: str | None = None,
    after: str | None = None,
    before: str | None = None,
):
    """One of `text=` (a video-text store), `id=`, or `stream=` with `at=` (seconds).
    `k` moments (1-200, default 12), `group=segments` for raw segments, `streams=a,b`,
    `after=`/`before=` (seconds) filters."""
    st = _state(request)
    t0 = time.perf_counter()
    q = request.query_params
    for name in q.keys():
        if name not in KNOWN:
            raise bad(
                name, "is not a search parameter (expected text, id, stream+at, k, group, streams, after, before)"
            )
    given = [n for n in ("text", "id", "stream") if q.get(n) is not None]
    if len(given) != 1:
        raise bad(
            "text",
            "give exactly one of text=, id=, or stream= with at=" + (f" (got {', '.join(given)})" if given else ""),
        )
    snap = st.live.snapshot()
    k_, group_, streams_, after_, before_ = _common(request, snap)
    exclude: tuple = ()
    if text is not None:
        text = P.text_param(text)
        if st.batcher is None:
            raise ApiError(400, f"text: this store cannot be searched by text ({st.model_error})", "text")
        why = st.batcher.check(text)
        if why:
            raise bad("text", why)
        try:
            fut = st.batcher.submit(text)
        except QueueFull as e:
            raise ApiError(503, str(e)) from None
        vec = await asyncio.wrap_future(fut)
        kind, query = "text", {"text": text}
    else:
        if id is not None:
            uid = P.uid_param(id, "id")
            kind, query = "id", {"id": str(uid)}
        else:
            name = find_stream(snap, stream)
            t = P.seconds_param(at, "at")
            if t is None:
                raise bad("at", "stream= needs at= (seconds)")
            info = snap.streams[name]
            if not info.start - 0.5 <= t <= info.end + 0.5:
                raise bad("at", f"{t:g} s is outside the stream ({info.start:.1f}-{info.end:.1f} s)")
            uid = snap.store.segment_at(name, t)
            kind, query = "stream", {"stream": name, "at": t}
        if snap.store.get(uid) is None:
            raise ApiError(404, f"id: {uid} is not a segment of this store", "id")
        vec = await run_in_threadpool(snap.store.vector, uid)
        exclude = (uid,)
    hits = await run_in_threadpool(
        _filtered_search, snap, vec, k_, group=group_, streams=streams_, after=after_, before=before_, exclude=exclude
    )
    st.metrics.inc("vmstream_queries_total", kind=kind)
    return _answer(snap, hits, k_, group_, query, t0)


@router.post("/search", summary="Search by an uploaded query clip (multipart field `video`)")
async def search_upload(request: Request):
    """Upload a short video as the multipart field `video` (at most the server's
    --max-upload-mb); it is embedded with the store's own model and decoding. Query
    parameters as for GET: k, group, streams, after, before."""
    st = _state(request)
    t0 = time.perf_counter()
    limit = st.limits.max_upload_bytes
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(411, "video: send the upload with a Content-Length", "video")
    if not length.isdigit() or int(length) > limit + 65536:
        raise ApiError(
            413, f"video: the upload is {length[:20]} bytes; the most this server takes is {limit} bytes", "video"
        )
    snap = st.live.snapshot()
    k_, group_, streams_, after_, before_ = _common(request, snap)
    if st.model is None:
        raise ApiError(400, f"video: this server has no model to embed a clip with ({st.model_error})", "video")
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("video")
    if upload is None or isinstance(upload, str):
        raise bad("video", "send the query clip as the multipart file field `video`")
    with tempfile.TemporaryDirectory(prefix="vmstream-upload-") as tmp:
        path = os.path.join(tmp, "query")
        size = 0
        with open(path, "wb") as f:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"video: the upload is over {limit} bytes", "video")
                f.write(chunk)
        why = await run_in_threadpool(not_a_video, path)
        if why:
            raise ApiError(415, f"video: {why}", "video")
        if not st.video_slots.acquire(blocking=False):
            raise ApiError(503, "every query-clip embedder is busy; try again shortly")
        try:
            embs = await run_in_threadpool(embed_upload, st, path)
        finally:
            st.video_slots.release()
    m = embs.mean(axis=0)
    if not np.isfinite(m).all() or not np.linalg.norm(m):
        raise bad("video", "the clip's embedding has no direction (all zero)")
    hits = await run_in_threadpool(
        _filtered_search, snap, m, k_, group=group_, streams=streams_, after=after_, before=before_
    )
    st.metrics.inc("vmstream_queries_total", kind="video")
    return _answer(snap, hits, k_, group_, {"video": getattr(upload, "filename", "") or "upload"}, t0)


def not_a_video(path: str) -> str | None:
    """Why the file is not a video this server can read, or None (a frame decodes)."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                return "the upload has no video stream"
            for _ in c.decode(video=0):
                return None
            return "the upload's video stream has no frames"
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        return f"the upload is not a video this server can read ({type(e).__name__})"


def embed_upload(st, path: str) -> np.ndarray:
    from vmstream.errors import UserError
    from vmstream.pipeline.sequential import embed_video

    try:
        embs, _ = embed_video(st.cfg, st.model, path)
    except UserError as e:
        raise bad("video", str(e).replace(path, "the upload")) from None
    return np.asarray(embs, np.float32)


@router.get("/streams", summary="The store's streams: name, duration, version, segments")
def streams(request: Request):
    snap = _state(request).live.snapshot()
    return {
        "generation": snap.generation,
        "segments": len(snap),
        "streams": [dict(s.to_json(), playable=is_playable(s.uri)) for s in snap.streams.values()],
    }


@router.get("/streams/{stream:path}/timeline", summary="A stream's labels over time")
def timeline(request: Request, stream: str):
    snap = _state(request).live.snapshot()
    name = find_stream(snap, stream)
    info = snap.streams[name]
    return {
        "stream": name,
        "start": info.start,
        "end": info.end,
        "generation": snap.generation,
        "segments": stream_timeline(snap, name),
    }


@router.get("/segments/{id}", summary="One stored segment")
def segment(request: Request, id: str):
    uid = P.uid_param(id, "id")
    snap = _state(request).live.snapshot()
    row = snap.store.get(uid)
    if row is None:
        raise ApiError(404, f"id: {uid} is not a segment of this store", "id")
    uri = snap.streams[row["stream_id"]].uri if row["stream_id"] in snap.streams else row["uri"]
    playable = is_playable(uri or "")
    return {
        "id": str(uid),
        "stream": row["stream_id"],
        "segment": row["segment_index"],
        "start": row["t_start"],
        "end": row["t_end"],
        "labels": [
            {"label": lb, "score": round(float(s), 4)} for lb, s in zip(row["labels"] or [], row["scores"] or [])
        ],
        "thumb_url": f"/api/thumbs/{uid}.jpg",
        "clip_url": f"/api/clips/{uid}" if playable else None,
        "live": not playable,
    }
