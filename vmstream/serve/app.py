"""The app factory: `create_app(out_dir, ...)` -> a FastAPI app over one store.

Routes: the page at `/` (static/), the JSON API under `/api` (api.py, media_routes.py),
`/healthz`, `/readyz`, `/metrics`, and FastAPI's OpenAPI description at `/docs`.
Every error is JSON {"error": one line, "field": the parameter} with a 4xx/5xx status;
with a token, every request needs `Authorization: Bearer TOKEN` (the page: open
`/?token=TOKEN` once, a cookie carries it after).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import api, media_routes
from .clips import ClipCache
from .live_store import LiveStore
from .metrics import Metrics
from .params import ApiError
from .state import Limits, ServeState
from .text_batcher import TextBatcher

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
COOKIE = "vmstream_token"


def create_app(out_dir, *, index_dir=None, model=None, tokenizer=None, cfg=None, model_error: str = "",
               token: str | None = None, limits: Limits | None = None, cache_dir=None,
               cache_bytes: int = 512 << 20, poll_s: float = 0.5) -> FastAPI:
    out_dir = Path(out_dir)
    index_dir = Path(index_dir) if index_dir else out_dir / "index"
    limits = limits or Limits()
    metrics = Metrics()
    live = LiveStore(out_dir, index_dir, poll_s=poll_s)
    batcher = None
    if model is not None and tokenizer is not None:
        batcher = TextBatcher(model, tokenizer, max_batch=limits.max_batch, max_queue=limits.max_queue)
    if cache_dir is None:
        # one cache per store, the same in every run of the server
        digest = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
        cache_dir = Path(tempfile.gettempdir()) / f"vmstream-clips-{digest}"
    st = ServeState(live=live, limits=limits, metrics=metrics, clips=ClipCache(Path(cache_dir), cache_bytes),
                    model=model, cfg=cfg, batcher=batcher,
                    model_error=model_error or ("" if model is not None else "no model loaded"), token=token)
    _gauges(st)

    @asynccontextmanager
    async def lifespan(app):
        live.start()
        try:
            yield
        finally:
            live.stop()
            if batcher is not None:
                batcher.close()

    app = FastAPI(title="vmstream serve", version="1", lifespan=lifespan, description=(
        "Search one vmstream video store by text, by a stored segment, by a stream's moment, or by an "
        "uploaded clip; thumbnails and playable clips of what is found."))
    app.state.serve = st
    app.include_router(api.router)
    app.include_router(media_routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page(request: Request):
        given = request.query_params.get("token")
        if given is not None and st.token and hmac.compare_digest(given, st.token):
            r = RedirectResponse("/", status_code=303)
            r.set_cookie(COOKIE, st.token, httponly=True, samesite="strict")
            return r
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", summary="The process is up")
    def healthz():
        return {"ok": True}

    @app.get("/readyz", summary="Model loaded, store open and verified")
    def readyz():
        body = {"store": live.error or "ok", "generation": live.generation,
                "model": "ok" if model is not None else st.model_error, "text_search": batcher is not None}
        ok = live.ready and (model is not None or not st.model_error.startswith("loading"))
        return JSONResponse(dict(body, ready=ok), status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        if st.token and not _authorised(request, st.token):
            response = JSONResponse({"error": "authorization: send the bearer token (Authorization: Bearer "
                                              "TOKEN)", "field": "authorization"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "other"
        metrics.observe("vmstream_request_seconds", time.perf_counter() - t0, route=path)
        if response.status_code >= 400:
            metrics.inc("vmstream_errors_total", status=response.status_code)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        err = (e.errors() or [{}])[0]
        field = str((err.get("loc") or ["", "request"])[-1])
        return JSONResponse({"error": f"{field}: {err.get('msg', 'is not valid')}", "field": field},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"},
                            status_code=500)

    return app


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and hmac.compare_digest(header[7:].strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    if cookie and hmac.compare_digest(cookie, token):
        return True
    given = request.query_params.get("token")
    return request.url.path == "/" and given is not None and hmac.compare_digest(given, token)


def _gauges(st: ServeState) -> None:
    m, live = st.metrics, st.live
    m.gauge("vmstream_store_segments", "segments in the served store", lambda: len(live.snapshot()))
    m.gauge("vmstream_store_generation", "the served store's generation", lambda: live.snapshot().generation)
    m.gauge("vmstream_store_reloads_total", "times the store was opened again after a change",
            lambda: live.reloads)
    m.gauge("vmstream_store_ready", "1 when the store is open and verified", lambda: int(live.ready))
    m.gauge("vmstream_thumbnails_captured", "captured thumbnails indexed", lambda: len(live.thumbs))
    m.gauge("vmstream_clip_cache_bytes", "bytes of cut clips on disk", st.clips.size)
    if st.batcher is not None:
        b = st.batcher
        m.gauge("vmstream_text_batches_total", "text encoder batches run", lambda: b.batches)
        m.gauge("vmstream_text_queries_encoded_total", "text queries encoded", lambda: b.encoded)
        m.gauge("vmstream_text_queue_waiting", "text queries waiting for the encoder", lambda: b.waiting)
