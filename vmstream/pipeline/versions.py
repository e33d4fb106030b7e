"""Stream versions: which content a stream's results come from, and who owns a stream id.

A stream id names a stream across runs; its content can change under it (a file
replaced by another of the same name). Results of two contents must never mix, so a
stream has a version, its content identity:

- a local file: its size, its mtime and a hash of its first and last MiB (cheap for
  any length, and changed by any rewrite that keeps neither the size nor the mtime);
- anything else (a live feed, a remote URL): the URI itself (without credentials).

The runner records the version with every result and snapshot; a snapshot of another
version is discarded (the stream starts over), and a stream that starts over replaces
what the sinks hold of it.

`StreamIds` keeps, beside the snapshots in the state store, which uri each stream id
was last run from, so a worker can refuse a job that reuses another stream's id.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

from vmstream.redaction import redact_uri

log = logging.getLogger(__name__)

_EDGE = 1 << 20  # bytes hashed at each end of a file
# Snapshot-store keys of the id records: control characters are never in a stream id
# (media.valid_stream_id), so these cannot collide with a stream's snapshot.
_ID_PREFIX = "\x00stream-id\x00"


def content_version(source) -> str:
    """The version of `source` now (see the module doc): 32 hex digits. OSError when
    a local file cannot be read."""
    h = hashlib.blake2b(digest_size=16)
    path = source.path if source.is_file else None
    if path is None:
        from vmstream.stages.sources import redact_uri

        h.update(b"uri\x00" + redact_uri(source.uri).encode("utf-8", "surrogatepass"))
        return h.hexdigest()
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        h.update(f"file\x00{st.st_size}\x00{st.st_mtime_ns}\x00".encode())
        h.update(f.read(_EDGE))
        if st.st_size > _EDGE:
            f.seek(max(_EDGE, st.st_size - _EDGE))
            h.update(f.read(_EDGE))
    return h.hexdigest()


def stream_of_key(key: str) -> str:
    """The stream a state-store key belongs to (its snapshot's or its id record's)."""
    return key[len(_ID_PREFIX) :] if key.startswith(_ID_PREFIX) else key


class StreamIdTaken(ValueError):
    """A stream id already run from another uri, and replacing it is not allowed."""


class StreamIds:
    """Which uri each stream id was last run from, kept in the state store (so every
    worker of a group sees it). Records are never deleted: a finished stream keeps its id."""

    def __init__(self, store):
        self.store = store

    def uri_of(self, stream_id: str) -> Optional[str]:
        rec = self.store.load(_ID_PREFIX + stream_id)
        return None if rec is None else (rec.get("extra") or {}).get("uri")

    def claim(self, stream_id: str, uri: str, *, allow_replace: bool) -> None:
        """Record `uri` as the stream's; StreamIdTaken when the id is known with another
        uri and `allow_replace` is off. The message does not say which uri."""
        # Kept on the state topic, so without a password: two jobs naming one URL with
        # other credentials are the same input.
        uri = redact_uri(uri)
        known = self.uri_of(stream_id)
        if known == uri:
            return
        if known is not None:
            if not allow_replace:
                raise StreamIdTaken(
                    f"stream id {stream_id!r} belongs to another input; this worker does not "
                    "let a job replace another stream's results (kafka.jobs.allow_replace)"
                )
            log.warning("stream %s: now read from another input; its earlier results are replaced", stream_id)
        self.store.save(
            {
                "stream_id": _ID_PREFIX + stream_id,
                "next_index": 0,
                "t_end": 0.0,
                "state": b"",
                "book": b"",
                "extra": {"uri": uri},
            }
        )


def snapshot_version(snapshot: dict) -> Optional[str]:
    return (snapshot.get("extra") or {}).get("stream_version")
