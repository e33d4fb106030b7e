"""One interface, two stores: `open_store` gives the FAISS `VideoStore` or the
`MilvusStore` (milvus_store.py), chosen by the config for a writer and by the store's
own description (`store.json` in its directory; none: FAISS) for anyone opening an
existing store.

Both take: add_results, remove, remove_stream, commit(consumer=...), consumer, close,
len(), search, search_id, search_at, search_video, search_text, get, vector, streams,
stream_rows, live_vectors, id_rows, meta, metric, dim, path, backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from vmstream.errors import UserError

from .milvus_store import MilvusStore, read_description
from .video_store import VideoStore

BACKENDS = ("faiss", "milvus")


def store_backend(path: Union[str, os.PathLike]) -> str:
    """The backend of the store in `path` (an OUT/index dir): its description's, else faiss."""
    desc = read_description(path) if Path(path).is_dir() else None
    return desc["backend"] if desc else "faiss"


def open_store(
    path: Union[str, os.PathLike],
    *,
    backend: Optional[str] = None,
    uri: Optional[str] = None,
    readonly: bool = False,
    **options: Any,
):
    """The store in `path`. `backend` (a writer's config) must agree with an existing
    store's; None: whatever the store is. `uri` is Milvus' (a store.db or a server)."""
    have = store_backend(path)
    if backend is None:
        backend = have
    if backend not in BACKENDS:
        raise UserError(f"output.store.backend: {backend!r} is not a store backend ({', '.join(BACKENDS)})")
    if Path(path).is_dir() and (Path(path) / "CURRENT").exists() and backend != "faiss":
        raise UserError(f"video store {path} is a FAISS store; output.store.backend is {backend}")
    if have != backend and read_description(path) is not None:
        raise UserError(f"video store {path} is a {have} store; output.store.backend is {backend}")
    if backend == "milvus":
        return MilvusStore(path, uri=uri, readonly=readonly, **options)
    return VideoStore(path, readonly=readonly, **options)
