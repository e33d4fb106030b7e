"""The bearer token: with one configured, every request needs `Authorization: Bearer
TOKEN` (or the cookie the page gets from opening `/?token=TOKEN` once)."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse

COOKIE = "vmstream_token"


def authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and hmac.compare_digest(header[7:].strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    if cookie and hmac.compare_digest(cookie, token):
        return True
    given = request.query_params.get("token")
    return request.url.path == "/" and given is not None and hmac.compare_digest(given, token)


def refused() -> JSONResponse:
    return JSONResponse(
        {"error": "authorization: send the bearer token (Authorization: Bearer TOKEN)", "field": "authorization"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def token_redirect(request: Request, token: str | None):
    """`/?token=TOKEN`: a redirect to `/` that leaves the token in an HttpOnly cookie, or None."""
    given = request.query_params.get("token")
    if given is None or not token or not hmac.compare_digest(given, token):
        return None
    r = RedirectResponse("/", status_code=303)
    r.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return r
