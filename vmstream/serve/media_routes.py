"""Thumbnail and clip routes: the segment comes from the store by its id; the file
served is the captured thumbnail, a frame decoded from the stored source, or a clip cut
from it into the cache. No part of a request is ever used as a path."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from . import params as P
from .media import MAX_CLIP_S, is_playable
from .params import ApiError

router = APIRouter(prefix="/api")


def _row(snap, uid: int, field: str = "id") -> dict:
    row = snap.store.get(uid)
    if row is None:
        raise ApiError(404, f"{field}: {uid} is not a segment of this store", field)
    return row


@router.get("/thumbs/{name}", summary="A segment's thumbnail (JPEG), by id: /api/thumbs/{id}.jpg")
async def thumb(request: Request, name: str):
    st = request.app.state.serve
    if not name.endswith(".jpg"):
        raise P.bad("id", f"{name[:40]!r}: ask for /api/thumbs/ID.jpg")
    uid = P.uid_param(name[:-4], "id")
    snap = st.live.snapshot()
    jpeg = st.live.thumbs.get(uid)
    if jpeg is None:
        row = _row(snap, uid)
        info = snap.streams.get(row["stream_id"])
        uri = (info.uri if info else "") or row["uri"] or ""
        jpeg = await run_in_threadpool(st.decoded.get, uid, uri, (row["t_start"] + row["t_end"]) / 2)
        if jpeg is None:
            raise ApiError(
                404, f"id: segment {uid} has no thumbnail (none was captured and its source cannot be read)", "id"
            )
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


def _span(request: Request, id: str, to: str | None):
    st = request.app.state.serve
    uid = P.uid_param(id, "id")
    snap = st.live.snapshot()
    row = _row(snap, uid)
    last, end = uid, row["t_end"]
    if to is not None:
        last = P.uid_param(to, "to")
        other = _row(snap, last, "to")
        if other["stream_id"] != row["stream_id"]:
            raise P.bad("to", f"segment {last} is of another stream than segment {uid}")
        if other["t_end"] < row["t_start"]:
            raise P.bad("to", f"segment {last} ends before segment {uid} starts")
        end = other["t_end"]
    start = row["t_start"]
    if end - start > MAX_CLIP_S:
        raise P.bad("to", f"the span is {end - start:.0f} s; a clip is at most {MAX_CLIP_S:.0f} s")
    info = snap.streams.get(row["stream_id"])
    uri = (info.uri if info else "") or row["uri"] or ""
    if not is_playable(uri):
        raise ApiError(
            404, f"id: segment {uid} is of a live feed or a source that is gone: it has a thumbnail but no clip", "id"
        )
    return st, uid, last, start, end, uri


async def _clip(request: Request, id: str, to: str | None):
    st, uid, last, start, end, uri = _span(request, id, to)
    name = f"{uid}" if last == uid else f"{uid}_{last}"
    try:
        path, info = await run_in_threadpool(st.clips.get, name, uri, start, end)
    except TimeoutError as e:
        raise ApiError(503, f"clips: {e}; try again shortly") from None
    except (OSError, ValueError) as e:
        raise ApiError(
            422, f"id: segment {uid}'s source could not be cut ({str(e).splitlines()[0][:200]})", "id"
        ) from None
    return path, info, uid, last, start, end


@router.get("/clips/{id}/info", summary="Where a moment's clip starts in its source (for seeking)")
async def clip_info(request: Request, id: str, to: str | None = None):
    path, info, uid, last, start, end = await _clip(request, id, to)
    url = f"/api/clips/{uid}" + (f"?to={last}" if last != uid else "")
    return {
        "url": url,
        "start": start,
        "end": end,
        "clip_start": info["clip_start"],
        "offset": max(0.0, start - info["clip_start"]),
        "mode": info["mode"],
        "codec": info["codec"],
    }


@router.get("/clips/{id}", summary="The moment around a segment as an MP4 clip (to=ID: up to that segment)")
async def clip(request: Request, id: str, to: str | None = None):
    path, info, *_ = await _clip(request, id, to)
    return FileResponse(
        path,
        media_type="video/mp4",
        headers={"X-Clip-Start": f"{info['clip_start']:.3f}", "Cache-Control": "private, max-age=300"},
    )
