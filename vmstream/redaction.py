"""Secrets out of what vmstream writes: a URL's user:password (`rtsp://user:pw@cam/s`).

A source keeps its full URL (FFmpeg needs the credentials to connect); every copy of it
that leaves the process (results, events, the worker's log, the state topic, dead
letters) goes through here first."""

from __future__ import annotations

import re

# scheme://userinfo@ ; the userinfo ends at the last "@" before the path (a password
# may hold a raw "@").
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s'\"<>]*@")


def redact_uri(uri: str) -> str:
    """`uri` without its user:password; anything else unchanged."""
    if not isinstance(uri, str) or "@" not in uri:
        return uri
    return _USERINFO.sub(r"\g<scheme>", uri)


def redact_text(text: str) -> str:
    """`text` (a message, a log line) with every URL's user:password taken out."""
    return redact_uri(text)
