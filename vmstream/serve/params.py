"""Request checks: every bad parameter is a 4xx JSON error naming the field."""

from __future__ import annotations

import math

MAX_K = 200
MAX_TEXT_CHARS = 500
MAX_STREAMS_FILTER = 100
MAX_SECONDS = 1e9  # ~31 years: any stored time is below this


class ApiError(Exception):
    """An error answered as {"error": message, "field": field} with `status`."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        out = {"error": self.message}
        if self.field:
            out["field"] = self.field
        return out


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, f"{field}: {message}", field)


def int_param(value: str | None, field: str, *, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise bad(field, f"{value[:40]!r} is not a whole number") from None
    if not lo <= v <= hi:
        raise bad(field, f"{v} is out of range (from {lo} to {hi})")
    return v


def seconds_param(value: str | None, field: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise bad(field, f"{value[:40]!r} is not a number of seconds") from None
    if not math.isfinite(v) or not 0 <= v <= MAX_SECONDS:
        raise bad(field, f"{value[:40]!r}: a time must be a finite number of seconds from 0 to {MAX_SECONDS:g}")
    return v


def uid_param(value: str, field: str = "id") -> int:
    """A segment id: a signed 64-bit decimal number, nothing else (no paths, no signs of
    anything else): media are found by id in the store, never by a name from the request."""
    text = str(value)
    if not (text.isascii() and (text.isdigit() or (text[:1] == "-" and text[1:].isdigit()))) or len(text) > 20:
        raise bad(field, f"{text[:40]!r} is not a segment id (a whole number)")
    v = int(text)
    if not -(2**63) <= v < 2**63:
        raise bad(field, f"{text[:40]!r} is not a segment id (ids are signed 64-bit numbers)")
    return v


def text_param(value: str | None, field: str = "text") -> str | None:
    if value is None:
        return None
    if len(value) > MAX_TEXT_CHARS:
        raise bad(field, f"{len(value)} characters; the most a query may have is {MAX_TEXT_CHARS}")
    if not value.strip():
        raise bad(field, "is empty")
    return value


def streams_param(value: str | None, field: str = "streams") -> list[str] | None:
    if value is None or value == "":
        return None
    names = [s for s in value.split(",") if s]
    if len(names) > MAX_STREAMS_FILTER:
        raise bad(field, f"{len(names)} streams; at most {MAX_STREAMS_FILTER}")
    return names


def time_range(after: float | None, before: float | None) -> None:
    if after is not None and before is not None and after >= before:
        raise bad("before", f"{before:g} is not later than after={after:g}")
