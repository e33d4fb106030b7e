"""The store as immutable snapshots, swapped whole when a writer commits.

A `Snapshot` is one verified, fully loaded state of the store (a generation and its
change log, opened read-only) with what the API needs precomputed (streams, sources).
A Milvus store (`output.store.backend: milvus`) is live rather than generational: its
one read-only client is kept, and a change of its directory (a writer's commit record,
milvus-lite's file) only gathers the streams again.
A watcher thread looks at the store's files every `poll_s`; when any changed (a
`vmstream run` committed, compacted, or someone damaged a file) it opens the store again
aside and swaps the reference: a query holds the snapshot it started with, so it never
sees half of a generation. A store that fails to open (`StoreCorruptError`, a missing
file) becomes the one-line reason every query answers 503 with, until it opens again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from vmstream.store import open_store
from vmstream.store.results import read_table

from .params import ApiError
from .thumb_index import ThumbIndex

log = logging.getLogger(__name__)


@dataclass
class StreamInfo:
    name: str
    segments: int
    start: float
    end: float
    uri: str
    version: str = ""

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "segments": self.segments,
            "start": self.start,
            "end": self.end,
            "duration": round(self.end - self.start, 3),
            "version": self.version,
            "uri": self.uri,
        }


@dataclass
class Snapshot:
    store: object  # VideoStore or MilvusStore (store.backends): one reading interface
    key: tuple
    generation: int
    streams: dict[str, StreamInfo] = field(default_factory=dict)
    loaded_at: float = 0.0

    def __len__(self) -> int:
        return len(self.store)


def _streams(store, versions: dict[str, str]) -> dict[str, StreamInfo]:
    t = store.id_table()
    if t.num_rows == 0:
        return {}
    g = t.group_by("stream_id").aggregate([("uid", "count"), ("t_start", "min"), ("t_end", "max"), ("uri", "max")])
    out = {}
    for row in g.to_pylist():
        name = row["stream_id"]
        out[name] = StreamInfo(
            name=name,
            segments=int(row["uid_count"]),
            start=float(row["t_start_min"]),
            end=float(row["t_end_max"]),
            uri=row["uri_max"] or "",
            version=versions.get(name, ""),
        )
    return dict(sorted(out.items()))


def _versions(out_dir: Path) -> dict[str, str]:
    try:
        t = read_table(out_dir, "summaries")
    except (OSError, ValueError, pa.ArrowException):
        return {}
    return {
        r["stream_id"]: r.get("stream_version") or ""
        for r in t.select([c for c in ("stream_id", "stream_version") if c in t.column_names]).to_pylist()
    }


class LiveStore:
    """`snapshot()` is the current state (or ApiError 503 with the store's reason)."""

    def __init__(self, out_dir: Path, index_dir: Path, *, poll_s: float = 0.5):
        self.out_dir, self.index_dir = Path(out_dir), Path(index_dir)
        self.poll_s = float(poll_s)
        self.thumbs = ThumbIndex(self.out_dir / "thumbs")
        self._snap: Snapshot | None = None
        self.error: str | None = None
        self.reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def _key(self) -> tuple:
        """What the store's files are now: names, sizes and mtimes (CURRENT, the
        generation, its log). Any change means a reload."""
        entries = []
        for root, _dirs, names in os.walk(self.index_dir):
            for n in names:
                if n.endswith(".tmp") or ".tmp" in n or n == "LOCK" or n.endswith(".lock"):
                    continue
                p = os.path.join(root, n)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                entries.append((os.path.relpath(p, self.index_dir), st.st_size, st.st_mtime_ns))
        return tuple(sorted(entries))

    def refresh(self) -> bool:
        """Open the store again if its files changed; True if the snapshot changed."""
        key = self._key()
        snap = self._snap
        if snap is not None and snap.key == key and self.error is None:
            self.thumbs.refresh()
            return False
        if snap is None and self.error is not None and getattr(self, "_bad_key", None) == key:
            return False
        try:
            if snap is not None and snap.store.backend == "milvus":
                store = snap.store  # live: the same client sees every commit
            else:  # use_gpu is FAISS' option; a Milvus store takes and ignores it
                store = open_store(self.index_dir, readonly=True, use_gpu=False)
        except FileNotFoundError as e:
            return self._fail(key, str(e))
        except Exception as e:  # StoreCorruptError and anything a damaged file raises
            return self._fail(key, str(e).splitlines()[0] if str(e) else type(e).__name__)
        fresh = Snapshot(
            store=store,
            key=key,
            generation=int(store.meta.get("generation") or 0),
            streams=_streams(store, _versions(self.out_dir)),
            loaded_at=time.time(),
        )
        self.thumbs.refresh()
        self._snap, self.error = fresh, None  # the swap: one reference assignment
        self.reloads += 1
        log.info("serving %s: generation %d, %d segments", self.index_dir, fresh.generation, len(store))
        return True

    def _fail(self, key: tuple, reason: str) -> bool:
        if reason != self.error:
            log.warning("store unavailable: %s", reason)
        self._snap, self.error, self._bad_key = None, reason, key
        return True

    def snapshot(self) -> Snapshot:
        snap = self._snap
        if snap is None:
            raise ApiError(503, f"the store is unavailable: {self.error or 'not opened yet'}")
        return snap

    @property
    def generation(self) -> int | None:
        snap = self._snap
        return None if snap is None else snap.generation

    @property
    def ready(self) -> bool:
        return self._snap is not None

    # -- the watcher --------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="store-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        snap = self._snap
        if snap is not None and snap.store.backend == "milvus":
            snap.store.close()  # milvus-lite's file is one process's at a time

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as e:  # keep watching; the reason is what queries see
                self._fail((), f"{type(e).__name__}: {e}".splitlines()[0])


def stream_timeline(snap: Snapshot, stream: str, max_points: int = 2000) -> list[dict]:
    """The stream's segments in time order: start, end, top label and its score (every
    n-th when there are more than `max_points`)."""
    rows = snap.store.stream_rows(stream)
    rows = rows.take(pc.sort_indices(rows, [("t_start", "ascending")]))
    step = max(1, -(-rows.num_rows // max_points))
    out = []
    for r in rows.slice(0).to_pylist()[::step]:
        labels, scores = r["labels"] or [], r["scores"] or []
        out.append(
            {
                "id": str(r["uid"]),
                "start": r["t_start"],
                "end": r["t_end"],
                "label": labels[0] if labels else "",
                "score": float(scores[0]) if scores else None,
            }
        )
    return out
