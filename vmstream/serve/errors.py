"""Every error as JSON {"error": one line, "field": the parameter}: never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .params import ApiError

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        err = (e.errors() or [{}])[0]
        field = str((err.get("loc") or ["", "request"])[-1])
        return JSONResponse({"error": f"{field}: {err.get('msg', 'is not valid')}", "field": field}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        first = str(e).splitlines()[0][:200] if str(e) else ""
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {first}"}, status_code=500)
