"""The app factory: `create_app(out_dir, ...)` -> a FastAPI app over one store.

Routes: the page at `/` (static/), the JSON API under `/api` (api.py, media_routes.py),
`/healthz`, `/readyz`, `/metrics` (system_routes.py), and the OpenAPI description at
`/docs` (Swagger UI) and `/redoc`, their scripts served from here (fastapi-offline's
package files): the page and the docs need no network. Every error is JSON {"error": one line, "field": the parameter} (errors.py);
with a token, every request needs it (auth.py).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from . import api, media_routes, system_routes
from .auth import authorised, refused, token_redirect
from .clips import ClipCache
from .errors import install_error_handlers
from .live_store import LiveStore
from .metrics import Metrics
from .state import Limits, ServeState
from .text_batcher import TextBatcher

STATIC = Path(__file__).with_name("static")


def create_app(
    out_dir,
    *,
    index_dir=None,
    model=None,
    tokenizer=None,
    cfg=None,
    model_error: str = "",
    token: Optional[str] = None,
    limits: Optional[Limits] = None,
    cache_dir=None,
    cache_bytes: int = 512 << 20,
    poll_s: float = 0.5,
) -> FastAPI:
    out_dir = Path(out_dir)
    limits = limits or Limits()
    live = LiveStore(out_dir, Path(index_dir) if index_dir else out_dir / "index", poll_s=poll_s)
    batcher = None
    if model is not None and tokenizer is not None:
        batcher = TextBatcher(model, tokenizer, max_batch=limits.max_batch, max_queue=limits.max_queue)
    if cache_dir is None:  # one cache per store, the same in every run of the server
        digest = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
        cache_dir = Path(tempfile.gettempdir()) / f"vmstream-clips-{digest}"
    st = ServeState(
        live=live,
        limits=limits,
        metrics=Metrics(),
        clips=ClipCache(Path(cache_dir), cache_bytes),
        model=model,
        cfg=cfg,
        batcher=batcher,
        model_error=model_error or ("" if model is not None else "no model loaded"),
        token=token,
    )
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

    app = FastAPI(
        title="vmstream serve",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description=(
            "Search one vmstream video store by text, by a stored segment, by a stream's moment, or by an "
            "uploaded clip; thumbnails and playable clips of what is found."
        ),
    )
    app.state.serve = st
    app.include_router(api.router)
    app.include_router(media_routes.router)
    app.include_router(system_routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-static", StaticFiles(directory=_docs_assets()), name="docs-static")
    install_error_handlers(app)

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request):
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=app.title + " - API",
            swagger_js_url=f"{root}/docs-static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-static/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request):
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=app.title + " - API",
            redoc_js_url=f"{root}/docs-static/redoc.standalone.js",
            redoc_favicon_url=f"{root}/docs-static/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/", include_in_schema=False)
    def page(request: Request):
        return token_redirect(request, st.token) or FileResponse(
            STATIC / "index.html", headers={"Cache-Control": "no-cache"}
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        response = refused() if st.token and not authorised(request, st.token) else await call_next(request)
        route = getattr(request.scope.get("route"), "path", None) or "other"
        st.metrics.observe("vmstream_request_seconds", time.perf_counter() - t0, route=route)
        if response.status_code >= 400:
            st.metrics.inc("vmstream_errors_total", status=response.status_code)
        return response

    return app


def _docs_assets() -> Path:
    """Swagger UI's and ReDoc's files, as fastapi-offline ships them."""
    import fastapi_offline  # noqa: PLC0415

    return Path(fastapi_offline.__file__).parent / "static"


def _gauges(st: ServeState) -> None:
    m, live = st.metrics, st.live
    m.gauge("vmstream_store_segments", "segments in the served store", lambda: len(live.snapshot()))
    m.gauge("vmstream_store_generation", "the served store's generation", lambda: live.snapshot().generation)
    m.gauge("vmstream_store_reloads_total", "times the store was opened again after a change", lambda: live.reloads)
    m.gauge("vmstream_store_ready", "1 when the store is open and verified", lambda: int(live.ready))
    m.gauge("vmstream_thumbnails_captured", "captured thumbnails indexed", lambda: len(live.thumbs))
    m.gauge("vmstream_clip_cache_bytes", "bytes of cut clips on disk", st.clips.size)
    if st.batcher is not None:
        b = st.batcher
        m.gauge("vmstream_text_batches_total", "text encoder batches run", lambda: b.batches)
        m.gauge("vmstream_text_queries_encoded_total", "text queries encoded", lambda: b.encoded)
        m.gauge("vmstream_text_queue_waiting", "text queries waiting for the encoder", lambda: b.waiting)
