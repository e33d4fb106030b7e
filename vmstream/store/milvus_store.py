"""The video store on Milvus: the same interface as `VideoStore` (add, upsert by uid,
remove a stream, commit with a consumer record, search by vector / id / stream+time /
video / text), its vectors in a Milvus collection.

    output.store: {backend: milvus, uri: ./store.db}               # milvus-lite, embedded
    output.store: {backend: milvus, uri: http://host:19530}        # a Milvus server/cluster

The same client (pymilvus) talks to both. The store's directory (OUT/index, as for
FAISS) holds its description, `store.json` (backend, uri, collection, dimension,
metric, model), which `vmstream search --index OUT` reads to find the backend, and,
for an indexer, `consumer.json` (its committed offsets; see below).

One row per segment, primary key the segment's uid (`segment_uid(stream, segment)`),
so every write is an upsert: writing a segment twice leaves one row. Vectors are
stored L2-normalised for the cosine metric (as in FAISS) and as given for "ip" (a
video-text model's store), and searched with Milvus' COSINE / IP metric, so scores are
FAISS's.

Exactly once (the indexer). Milvus has no transaction spanning rows and another
record, so the offsets cannot commit atomically with the rows as they do in the FAISS
store's CURRENT. Instead `commit(consumer=...)` flushes the collection first (the rows
are persisted: Milvus' own write-ahead log holds them) and then writes the consumer
record atomically beside the description (`consumer.json`, sealed with its checksum).
A crash between the two leaves Milvus *ahead* of the recorded offsets, never behind:
the restarted indexer consumes those records again, and re-applying them converges to
the same rows, because every change is idempotent: upserts by uid write the same row,
and a stream's replacement (delete by stream id, then upsert the new version) is
re-decided from the same recorded stream versions and applied again. Readers never
see a segment twice (one row per primary key) and never lose a committed one.

milvus-lite is single-process: while an indexer or run holds `store.db`, another
process cannot open it (searching a live store needs a Milvus server).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from vmstream.errors import UserError
from vmstream.records import SegmentResult

from .atomic import DirLock, write_bytes_atomic
from .files import seal, unseal
from .idmap import ID_MAP_SCHEMA
from .searching import SearchHit, StoreSearch, unit_rows

log = logging.getLogger(__name__)

DESCRIPTION = "store.json"
CONSUMER = "consumer.json"
DEFAULT_COLLECTION = "vmstream_segments"
_MAX_LIMIT = 16384  # Milvus' largest top-k
_FIELDS = ["uid", "stream_id", "segment_index", "t_start", "t_end", "uri", "labels", "scores"]

PathLike = Union[str, os.PathLike]


def read_description(path: PathLike) -> Optional[dict]:
    """The store description in `path` (an OUT/index dir), or None where there is none
    (a FAISS store written before descriptions existed)."""
    p = Path(path) / DESCRIPTION
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"video store {path}: {DESCRIPTION} cannot be read ({e})") from None
    if not isinstance(d, dict) or d.get("backend") not in ("faiss", "milvus"):
        raise UserError(f"video store {path}: {DESCRIPTION} names no known backend")
    return d


def read_consumer_file(path: PathLike) -> Optional[dict]:
    """The consumer record beside a Milvus store (None if none), without opening Milvus."""
    p = Path(path) / CONSUMER
    if not p.exists():
        return None
    try:
        return unseal(p.read_bytes(), ("consumer",))["consumer"]
    except (OSError, ValueError) as e:
        raise UserError(f"video store {path}: {CONSUMER} {e}") from None


def resolve_uri(uri: str) -> str:
    """A local milvus-lite file as an absolute path (the store may be searched from
    another directory); a server URI as given."""
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().absolute())


class MilvusStore(StoreSearch):
    """See the module doc. `path`: the store's directory (OUT/index)."""

    backend = "milvus"

    def __init__(
        self,
        path: PathLike,
        *,
        uri: Optional[str] = None,
        collection: Optional[str] = None,
        dim: Optional[int] = None,
        metric: Optional[str] = None,
        readonly: bool = False,
        token: Optional[str] = None,
        **_faiss_options: Any,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self._closed = False
        self._lock = None
        desc = read_description(self.path) if self.path.is_dir() else None
        if desc is not None and desc["backend"] != "milvus":
            raise UserError(f"video store {self.path} is a {desc['backend']} store, not a Milvus one")
        if desc is None:
            if readonly:
                raise FileNotFoundError(f"no video store at {self.path} (no {DESCRIPTION})")
            if not uri:
                raise UserError(
                    "output.store.uri: the Milvus store needs a uri (./store.db for milvus-lite, "
                    "http://host:19530 for a server)"
                )
            desc = {
                "backend": "milvus",
                "uri": resolve_uri(uri),
                "collection": collection or DEFAULT_COLLECTION,
                "dim": dim,
                "metric": metric or "cosine",
                "model": "",
                "checkpoint_digest": "",
                "kind": "milvus",
            }
        elif uri and resolve_uri(uri) != desc["uri"]:
            raise UserError(f"video store {self.path} is kept in Milvus at {desc['uri']}, asked for {uri}")
        if metric is not None and metric != desc["metric"]:
            raise ValueError(f"video store {self.path} scores by {desc['metric']!r}, asked for {metric!r}")
        self.meta = desc
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = DirLock(self.path, what="video store").acquire()
        try:
            self.client = self._connect(token)
            self.collection = desc["collection"]
            if not readonly:
                self._write_description()
            if self.meta.get("dim") and not self.client.has_collection(self.collection):
                self._create()
            if self.client.has_collection(self.collection):
                self.client.load_collection(self.collection)
            self.consumer: Optional[dict] = self._read_consumer()
        except BaseException:
            if self._lock:
                self._lock.release()
            raise
        self._dirty = False
        self._gpu_res = None

    # -- connection and schema ---------------------------------------------------------
    def _connect(self, token: Optional[str]):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise UserError(
                "output.store.backend: milvus needs pymilvus (and milvus-lite for a local "
                "store.db): pip install pymilvus milvus-lite"
            ) from None
        uri = self.meta["uri"]
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            # milvus-lite has no MVCC timestamp service: its embedded server logs each
            # call for one with a traceback, and pymilvus' query iterator warns and uses
            # the client's clock instead, harmless with one writer.
            logging.getLogger("pymilvus").setLevel(logging.ERROR)
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        try:
            return MilvusClient(uri, token=token or os.environ.get("VMSTREAM_MILVUS_TOKEN", ""))
        except Exception as e:  # noqa: BLE001 - pymilvus raises its own classes for every way to fail
            hint = (
                " (milvus-lite opens a store.db in one process at a time: is an indexer or run holding it?)"
                if "://" not in uri
                else " (is the Milvus server up?)"
            )
            raise UserError(f"video store {self.path}: cannot open Milvus at {uri}: {e}{hint}") from None

    def _create(self) -> None:
        from pymilvus import DataType

        s = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("uid", DataType.INT64, is_primary=True)
        s.add_field("stream_id", DataType.VARCHAR, max_length=4096)
        s.add_field("segment_index", DataType.INT64)
        s.add_field("t_start", DataType.DOUBLE)
        s.add_field("t_end", DataType.DOUBLE)
        s.add_field("uri", DataType.VARCHAR, max_length=8192)
        s.add_field("labels", DataType.VARCHAR, max_length=8192)  # JSON lists: top-k labels and scores
        s.add_field("scores", DataType.VARCHAR, max_length=8192)
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=int(self.meta["dim"]))
        ip = self.client.prepare_index_params()
        ip.add_index(field_name="vector", index_type="AUTOINDEX", metric_type=self._milvus_metric())
        ip.add_index(field_name="stream_id", index_type="INVERTED")
        self.client.create_collection(self.collection, schema=s, index_params=ip)
        self.client.load_collection(self.collection)

    def _milvus_metric(self) -> str:
        return "IP" if self.metric == "ip" else "COSINE"

    def _write_description(self) -> None:
        write_bytes_atomic(self.path / DESCRIPTION, json.dumps(self.meta, indent=1, sort_keys=True).encode())

    def _read_consumer(self) -> Optional[dict]:
        return read_consumer_file(self.path)

    # -- writing -----------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.readonly:
            raise RuntimeError(f"video store {self.path} was opened read-only")
        if self._closed:
            raise RuntimeError(f"video store {self.path} is closed")

    def add_results(self, results: Iterable[SegmentResult]) -> int:
        results = list(results)
        if not results:
            return 0
        self._check_writable()
        for r in results:
            self._check_model(r)
        x = np.stack([np.asarray(r.embedding, np.float32).reshape(-1) for r in results])
        if self.meta.get("dim") is None:
            self.meta["dim"] = int(x.shape[1])
            self._write_description()
        try:
            x = unit_rows(x, self.dim, f"video store {self.path}", unit=self.metric == "cosine")
        except ValueError as e:
            r = results[0] if len(results) == 1 else None
            where = f"segment {r.segment_index} of stream {r.stream_id!r}" if r else f"{len(results)} results"
            raise ValueError(f"{e} ({where})") from e
        if not self.client.has_collection(self.collection):
            self._create()
        rows = {}
        for r, v in zip(results, x):  # within a batch the last row of a uid wins, as in FAISS
            rows[int(r.uid)] = {
                "uid": int(r.uid),
                "stream_id": r.stream_id,
                "segment_index": int(r.segment_index),
                "t_start": float(r.t_start),
                "t_end": float(r.t_end),
                "uri": r.uri or "",
                "labels": json.dumps(list(r.labels)),
                "scores": json.dumps([float(s) for s in r.scores]),
                "vector": v.tolist(),
            }
        self.client.upsert(self.collection, list(rows.values()))
        self._dirty = True
        return len(results)

    def _check_model(self, r: SegmentResult) -> None:
        for key, value in (("model", r.model), ("checkpoint_digest", r.checkpoint_digest)):
            if not value:
                continue
            have = self.meta.get(key) or ""
            if not have:
                self.meta[key] = value
                self._write_description()
            elif have != value:
                raise ValueError(
                    f"video store {self.path} holds embeddings from {key} {have!r}; segment "
                    f"{r.segment_index} of stream {r.stream_id!r} comes from {value!r} (use another store)"
                )

    def remove(self, uids: Sequence[int]) -> int:
        self._check_writable()
        uids = [int(u) for u in np.asarray(uids, np.int64).reshape(-1)]
        if not uids or not self.client.has_collection(self.collection):
            return 0
        present = self.client.get(self.collection, ids=uids, output_fields=["uid"])
        if present:
            self.client.delete(self.collection, ids=[int(p["uid"]) for p in present])
            self._dirty = True
        return len(present)

    def remove_stream(self, stream_id: str) -> int:
        self._check_writable()
        if not self.client.has_collection(self.collection):
            return 0
        n = len(self._stream_uids(stream_id))
        if n:
            self.client.delete(self.collection, filter=f"stream_id == {json.dumps(stream_id)}")
            self._dirty = True
        return n

    def commit(self, consumer: Optional[dict] = None) -> bool:
        """Flush the collection (the rows persisted), then record `consumer` beside it
        (see the module doc for why this order gives exactly once)."""
        self._check_writable()
        wrote = False
        if self._dirty and self.client.has_collection(self.collection):
            self.client.flush(self.collection)
            self._dirty, wrote = False, True
        if consumer is not None and consumer != self.consumer:
            write_bytes_atomic(self.path / CONSUMER, seal({"consumer": consumer}))
            self.consumer, wrote = consumer, True
        return wrote

    def save(self) -> bool:
        return self.commit()

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self.readonly:
                self.commit()
            self.client.close()
        finally:
            self._closed = True
            if self._lock:
                self._lock.release()

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------
    def __len__(self) -> int:
        if not self.client.has_collection(self.collection):
            return 0
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    @property
    def index_kind(self) -> str:
        return "milvus"

    def _row(self, e: dict) -> dict:
        return {
            "uid": int(e["uid"]),
            "stream_id": e["stream_id"],
            "segment_index": int(e["segment_index"]),
            "t_start": float(e["t_start"]),
            "t_end": float(e["t_end"]),
            "uri": e["uri"] or None,
            "labels": json.loads(e["labels"]),
            "scores": json.loads(e["scores"]),
        }

    def _hit(self, score: float, e: dict) -> SearchHit:
        r = self._row(e)
        return SearchHit(
            uid=r["uid"],
            score=float(score),
            stream_id=r["stream_id"],
            segment_index=r["segment_index"],
            t_start=r["t_start"],
            t_end=r["t_end"],
            uri=r["uri"] or "",
            labels=tuple(r["labels"]),
            label_scores=tuple(r["scores"]),
        )

    def _search_units(self, q: np.ndarray, k: int, keep=None, **params) -> list[list[SearchHit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n_live = len(self)
        if n_live == 0:
            return [[] for _ in range(q.shape[0])]
        fields = [f for f in _FIELDS if f != "uid"]
        first = min(k if keep is None else 2 * k + 8, n_live, _MAX_LIMIT)
        res = self.client.search(
            self.collection, data=q.tolist(), limit=first, output_fields=fields, anns_field="vector"
        )
        out = []
        for row, found in enumerate(res):
            hits = [self._hit(h["distance"], dict(h["entity"], uid=h["uid"])) for h in found]
            kk = first
            if keep is not None:
                hits = [h for h in hits if keep(h)]
            while len(hits) < k and kk < min(n_live, _MAX_LIMIT):
                kk = min(4 * kk, n_live, _MAX_LIMIT)
                wide = self.client.search(
                    self.collection, data=q[row : row + 1].tolist(), limit=kk, output_fields=fields, anns_field="vector"
                )[0]
                hits = [
                    h
                    for h in (self._hit(w["distance"], dict(w["entity"], uid=w["uid"])) for w in wide)
                    if keep is None or keep(h)
                ]
            out.append(hits[:k])
        return out

    def vector(self, uid: int) -> np.ndarray:
        got = (
            self.client.get(self.collection, ids=[int(uid)], output_fields=["vector"])
            if self.client.has_collection(self.collection)
            else []
        )
        if not got:
            raise KeyError(f"id {uid} is not in video store {self.path}")
        return np.asarray(got[0]["vector"], np.float32)

    def get(self, uid: int) -> Optional[dict]:
        if not self.client.has_collection(self.collection):
            return None
        got = self.client.get(self.collection, ids=[int(uid)], output_fields=_FIELDS)
        return self._row(got[0]) if got else None

    def _query_all(self, filter: str, fields: list) -> list[dict]:
        if not self.client.has_collection(self.collection):
            return []
        it = self.client.query_iterator(self.collection, batch_size=4096, filter=filter, output_fields=fields)
        out = []
        try:
            while True:
                page = it.next()
                if not page:
                    break
                out += page
        finally:
            it.close()
        return out

    def _stream_uids(self, stream_id: str) -> list[int]:
        return [int(r["uid"]) for r in self._query_all(f"stream_id == {json.dumps(stream_id)}", ["uid"])]

    def streams(self) -> list[str]:
        return sorted({r["stream_id"] for r in self._query_all("", ["stream_id"])})

    def stream_rows(self, stream_id: str) -> pa.Table:
        rows = sorted(
            (self._row(r) for r in self._query_all(f"stream_id == {json.dumps(stream_id)}", _FIELDS)),
            key=lambda r: r["segment_index"],
        )
        return (
            pa.Table.from_pylist(rows)
            if rows
            else pa.table(
                {
                    "uid": pa.array([], pa.int64()),
                    "t_start": pa.array([], pa.float64()),
                    "t_end": pa.array([], pa.float64()),
                }
            )
        )

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(uids, vectors) of every stored segment, by uid."""
        rows = self._query_all("", ["uid", "vector"])
        rows.sort(key=lambda r: int(r["uid"]))
        d = int(self.meta.get("dim") or 0)
        uids = np.array([int(r["uid"]) for r in rows], np.int64)
        vecs = np.array([r["vector"] for r in rows], np.float32).reshape(len(rows), d)
        return uids, vecs

    def id_table(self) -> pa.Table:
        """Every segment's id-map row (ID_MAP_SCHEMA), by uid."""
        return pa.Table.from_pylist(self.id_rows(), schema=ID_MAP_SCHEMA)

    def id_rows(self) -> list[dict]:
        """Every segment's id-map row (what FAISS' id map holds), by uid."""
        return sorted((self._row(r) for r in self._query_all("", _FIELDS)), key=lambda r: r["uid"])

    def verify(self) -> list[str]:
        """What is wrong with the store, one line each ([] when sound)."""
        problems = []
        if not self.client.has_collection(self.collection):
            if self.meta.get("dim"):
                problems.append(f"Milvus at {self.meta['uri']} has no collection {self.collection!r}")
            return problems
        d = self.client.describe_collection(self.collection)
        dims = [f.get("params", {}).get("dim") for f in d.get("fields", []) if f.get("name") == "vector"]
        if dims and int(dims[0]) != int(self.meta["dim"]):
            problems.append(
                f"collection {self.collection!r} holds {dims[0]}-dim vectors, {DESCRIPTION} records {self.meta['dim']}"
            )
        return problems
