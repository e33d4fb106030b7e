"""`/healthz` (the process is up), `/readyz` (store open and verified, model loaded) and
`/metrics` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

router = APIRouter()


@router.get("/healthz", summary="The process is up")
def healthz():
    return {"ok": True}


@router.get("/readyz", summary="Model loaded, store open and verified")
def readyz(request: Request):
    st = request.app.state.serve
    live = st.live
    body = {
        "store": live.error or "ok",
        "generation": live.generation,
        "model": "ok" if st.model is not None else st.model_error,
        "text_search": st.batcher is not None,
    }
    ok = live.ready
    return JSONResponse(dict(body, ready=ok), status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
def prometheus(request: Request):
    return PlainTextResponse(request.app.state.serve.metrics.render(), media_type="text/plain; version=0.0.4")
