"""A searchable store of segment embeddings: a faiss index plus an id map, on disk as

    STORE/CURRENT               "gen-000042": the one complete generation to load
    STORE/gen-000042/index.faiss   the faiss CPU index (vectors under segment uids)
    STORE/gen-000042/ids.parquet   uid -> stream_id, segment_index, t_start, t_end, uri,
                                   labels, scores (readable with pandas alone)
    STORE/gen-000042/meta.json     kind, dimension, model, counts

    STORE/wal-000042-000007.arrow  changes since generation 42 (Arrow IPC: op, uid,
                                   unit vector, id-map columns), replayed on open

`save()` writes a whole new generation directory aside (every file fsynced), renames
it into place, then atomically replaces CURRENT and fsyncs the directory; only then
are older generations and their logs deleted. A crash at any point leaves CURRENT
naming a complete, mutually consistent index and id map.

`commit()` (what the sink's flush calls, every few segments) makes the changes since
the last commit durable without rewriting the index: they go to a new log file
(written aside, fsynced, renamed), O(changes) instead of O(store) (a 1M-vector
IVF-SQ8 generation is ~210 MB). It rolls a new generation when the logs pass
`wal_max_rows` rows or `wal_max_files` files, after an index conversion, and on close.

Index kinds (see `index.py`): "flat" (exact cosine), "ivfpq", "ivfsq8", "hnsw", or
"auto": exact flat until `train_at` vectors (default 200k), then converted once to
`AUTO_LARGE_KIND`, trained on a sample of the flat store's own exact vectors. An
explicit IVF kind also starts flat and converts at `train_at` (default 50k), because
k-means needs ~39 vectors per list. After conversion the exact vectors are gone (the
IVF codes are what is stored), so later growth does not re-train automatically:
`rebuild()` re-trains from the decoded vectors when a store has outgrown its lists
(searches stay correct meanwhile, only slower per query).

Upsert: every vector is stored under its SegmentResult's `uid` (`segment_uid(stream,
segment)`); adding a uid that exists replaces its vector and its id-map row.

One writer per store directory (an flock); readers (`readonly=True`) take no lock and
see the last commit (generation plus logs).

Threads: the store works beside the model, which keeps every core busy, and there
faiss's OpenMP/OpenBLAS threads mostly spin waiting for each other. By default
(`threads=None`) faiss runs on one thread except for HNSW bulk adds (the measurements
are in `index.py`); `threads=n` uses n threads for everything.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import faiss
import numpy as np
import pyarrow as pa

from vmstream.records import SCHEMA_VERSION, SegmentResult

from ..atomic import DirLock, atomic_path, remove_quietly, remove_stale_tmp, write_bytes_atomic
from .idmap import ID_MAP_FIELDS, ID_MAP_SCHEMA, IdMap, meta_table
from .index import KINDS, TRAINED_KINDS, VectorIndex, default_nlist, gpu_available, min_train_size

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

STORE_FORMAT = 1
METRICS = ("cosine", "ip")
AUTO_LARGE_KIND = "ivfsq8"
AUTO_TRAIN_AT = 200_000
IVF_TRAIN_AT = 50_000
_GEN_RE = re.compile(r"^gen-(\d{6,})$")
_WAL_RE = re.compile(r"^wal-(\d{6,})-(\d{6,})\.arrow$")


@dataclass(frozen=True)
class SearchHit:
    """One search result: which segment of which stream, and how similar (cosine)."""

    uid: int
    score: float
    stream_id: str
    segment_index: int
    t_start: float
    t_end: float
    uri: str = ""
    labels: tuple[str, ...] = ()
    label_scores: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return self.labels[0] if self.labels else ""


def _unit_rows(x, dim: Optional[int], what: str, unit: bool = True) -> np.ndarray:
    """Validate and L2-normalise vectors (`unit=False`: only validate); always returns a
    fresh float32 [n, d] array."""
    x = np.array(x, dtype=np.float32, copy=True)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{what}: expected vectors of shape [n, d], got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: vectors have dimension {x.shape[1]}, the store holds dimension {dim}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{what}: row {int(np.flatnonzero(bad)[0])} has NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{what}: row {int(np.flatnonzero(norms == 0)[0])} is all zeros (no direction to compare)")
    if unit:
        x /= norms[:, None]
    return x


class VideoStore:
    """The FAISS video embedding store. See the module docstring for the layout.

        store = VideoStore("out/index", dim=192)        # create or load-and-continue
        store.add_results(results)                       # upsert by SegmentResult.uid
        store.save()                                     # atomic
        store.search(vec, k=10)                          # -> list[SearchHit]
        store.search_id(uid), store.search_at("cam0", 65.0), store.search_video(E)
    """

    def __init__(
        self,
        path: PathLike,
        *,
        dim: Optional[int] = None,
        kind: Optional[str] = None,
        train_at: Optional[int] = None,
        nlist: Optional[int] = None,
        pq_m: Optional[int] = None,
        hnsw_m: int = 32,
        metric: Optional[str] = None,
        use_gpu: Union[bool, str] = "auto",
        readonly: bool = False,
        threads: Optional[int] = None,
        wal_max_rows: int = 50_000,
        wal_max_files: int = 256,
    ):
        if metric is not None and metric not in METRICS:
            raise ValueError(f"unknown store metric {metric!r} (expected one of {', '.join(METRICS)})")
        self._metric_arg = metric
        if kind is not None and kind not in ("auto", *KINDS):
            raise ValueError(f"unknown index kind {kind!r} (expected auto, {', '.join(KINDS)})")
        self.path = Path(path)
        self.readonly = readonly
        self.threads = None if threads is None else int(threads)
        self.wal_max_rows, self.wal_max_files = int(wal_max_rows), int(wal_max_files)
        self._log: list[pa.Table] = []   # changes since the last commit, in order
        self._full_save = False          # a change the log cannot express (conversion, meta)
        self._wal_seq = 0                # next log file number of this generation
        self._wal_rows = 0               # rows in this generation's log files
        self._lock: Optional[DirLock] = None
        if not readonly:
            self._lock = DirLock(self.path, what="video store").acquire()
        try:
            for attempt in range(5):
                try:
                    self._open(dim, kind, train_at, nlist, pq_m, hnsw_m)
                    break
                except FileNotFoundError:
                    # A reader raced the writer: CURRENT moved on and the generation it
                    # named was deleted while we read it. Read CURRENT again.
                    if not readonly or attempt == 4 or not (self.path / "CURRENT").exists():
                        raise
                    time.sleep(0.05 * (attempt + 1))
        except BaseException:
            if self._lock:
                self._lock.release()
            raise
        if use_gpu == "auto":
            use_gpu = gpu_available()
        self._gpu_res = faiss.StandardGpuResources() if use_gpu and gpu_available() else None
        self._gpu_index = None
        self._closed = False

    # -- open / save -----------------------------------------------------------------
    def _current_gen(self) -> Optional[str]:
        cur = self.path / "CURRENT"
        if not cur.exists():
            return None
        name = cur.read_text().strip()
        if not _GEN_RE.match(name):
            raise RuntimeError(f"video store {self.path}: CURRENT names {name!r}, which is not a generation")
        if not (self.path / name).is_dir():
            raise FileNotFoundError(f"video store {self.path}: CURRENT names {name!r}, which does not exist")
        return name

    def _open(self, dim, kind, train_at, nlist, pq_m, hnsw_m) -> None:
        self._wal_seq = self._wal_rows = 0
        if not self.readonly:
            remove_stale_tmp(self.path)
        gen = self._current_gen() if self.path.exists() else None
        if gen is None:
            if self.readonly:
                raise FileNotFoundError(f"no video store at {self.path} (no CURRENT file; has anything been saved?)")
            self.meta = {
                "format": STORE_FORMAT,
                "schema_version": SCHEMA_VERSION,
                "dim": dim,
                "kind": kind or "auto",
                "train_at": train_at,
                "nlist": nlist,
                "pq_m": pq_m,
                "hnsw_m": hnsw_m,
                "metric": self._metric_arg or "cosine",
                "model": "",
                "checkpoint_digest": "",
                "generation": 0,
            }
            self.index: Optional[VectorIndex] = None
            self.ids = IdMap()
            self._dirty = False
            self._full_save = True  # nothing on disk yet: the first commit is a generation
        else:
            d = self.path / gen
            self.meta = json.loads((d / "meta.json").read_text())
            if self.meta.get("format") != STORE_FORMAT:
                raise RuntimeError(f"video store {self.path} has format {self.meta.get('format')}, this vmstream reads {STORE_FORMAT}")
            if dim is not None and self.meta["dim"] is not None and dim != self.meta["dim"]:
                raise ValueError(f"video store {self.path} holds {self.meta['dim']}-dim vectors, asked for dim={dim}")
            if kind is not None and kind != self.meta["kind"]:
                raise ValueError(
                    f"video store {self.path} is of kind {self.meta['kind']!r}, asked for {kind!r} "
                    "(open it without kind=, or call rebuild(kind=...))"
                )
            if self._metric_arg is not None and self._metric_arg != self.metric:
                raise ValueError(f"video store {self.path} scores by {self.metric!r}, asked for {self._metric_arg!r}")
            for name, value in (("train_at", train_at), ("nlist", nlist), ("pq_m", pq_m)):
                if value is not None:
                    self.meta[name] = value
            self.index = VectorIndex(faiss.read_index(str(d / "index.faiss")), threads=self.threads) if (d / "index.faiss").exists() else None
            self.ids = IdMap.read(d / "ids.parquet")
            self._replay_wal(int(self.meta["generation"]))
            live = (self.index.ntotal - self.index.tombstones) if self.index else 0
            if live != len(self.ids):
                raise RuntimeError(f"video store {self.path}/{gen} is inconsistent: {live} vectors, {len(self.ids)} id-map rows")
            self._dirty = False
            if not self.readonly:  # generations and logs a crash left behind
                for p in self.path.iterdir():
                    m = _WAL_RE.match(p.name)
                    if (_GEN_RE.match(p.name) and p.name != gen) or (m and int(m.group(1)) != self.meta["generation"]):
                        remove_quietly(p)

    # -- the change log ----------------------------------------------------------------
    def _wal_files(self, generation: int) -> list[Path]:
        found = []
        for p in self.path.iterdir():
            m = _WAL_RE.match(p.name)
            if m and int(m.group(1)) == generation:
                found.append((int(m.group(2)), p))
        return [p for _, p in sorted(found)]

    def _replay_wal(self, generation: int) -> None:
        files = self._wal_files(generation)
        for p in files:
            with pa.memory_map(str(p)) as src:
                t = pa.ipc.open_file(src).read_all()
            ops = t.column("op").to_pylist()
            # Consecutive rows of one op are applied together, in file order.
            start = 0
            while start < t.num_rows:
                end = start
                while end < t.num_rows and ops[end] == ops[start]:
                    end += 1
                part = t.slice(start, end - start)
                uids = part.column("uid").to_numpy()
                if ops[start] == "remove":
                    present = uids[self.ids.contains(uids)]
                    if present.size:
                        self.index.remove(present)
                        self.ids.remove(present)
                else:
                    # Several logged adds may upsert one uid: as in `add`, the last wins.
                    rev_first = np.unique(uids[::-1], return_index=True)[1]
                    if rev_first.size != uids.size:
                        keep = np.sort(uids.size - 1 - rev_first)
                        part, uids = part.take(pa.array(keep)), uids[keep]
                    d = int(self.meta["dim"])
                    x = part.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, d)
                    if self.index is None:
                        self.index = self._new_index()
                    self.index.upsert(uids, x, uids[self.ids.contains(uids)])
                    self.ids.add(part.select(list(ID_MAP_FIELDS)).cast(ID_MAP_SCHEMA))
                start = end
            self._wal_rows += t.num_rows
        self._wal_seq = int(_WAL_RE.match(files[-1].name).group(2)) + 1 if files else 0

    def _log_table(self, op: str, uids: np.ndarray, x: Optional[np.ndarray], table: Optional[pa.Table]) -> None:
        d = int(self.meta["dim"])
        if table is None:
            table = meta_table(uids)
        vec = (pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), d) if x is not None
               else pa.nulls(len(uids), pa.list_(pa.float32(), d)))
        t = (table.select(list(ID_MAP_FIELDS)).cast(ID_MAP_SCHEMA)
             .append_column("op", pa.array([op] * len(uids), pa.string())).append_column("vector", vec))
        self._log.append(t)

    def commit(self) -> bool:
        """Make every change durable: a log file of the changes since the last commit,
        or a whole new generation when one is due. True if it wrote anything."""
        self._check_writable()
        if not self._dirty:
            return False
        rows = sum(t.num_rows for t in self._log)
        if (self._full_save or self._current_gen() is None or self._wal_rows + rows > self.wal_max_rows
                or self._wal_seq + 1 > self.wal_max_files):
            return self.save()
        gen = int(self.meta["generation"])
        final = self.path / f"wal-{gen:06d}-{self._wal_seq:06d}.arrow"
        t = pa.concat_tables(self._log)
        with atomic_path(final) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, t.schema) as writer:
                writer.write_table(t)
        self._wal_seq += 1
        self._wal_rows += rows
        self._log = []
        self._dirty = False
        return True

    def save(self) -> bool:
        """Write a new generation atomically if anything changed; True if it wrote."""
        self._check_writable()
        if not self._dirty and self._current_gen() is not None:
            return False
        gen = int(self.meta["generation"]) + 1
        name = f"gen-{gen:06d}"
        t0 = time.perf_counter()
        meta = dict(self.meta, generation=gen, count=len(self.ids), saved_at=time.time(),
                    index_kind=self.index.kind if self.index else None)
        with atomic_path(self.path / name) as tmp:
            tmp.mkdir()
            if self.index is not None:
                faiss.write_index(self.index.index, str(tmp / "index.faiss"))
            self.ids.write(tmp / "ids.parquet")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        old = self._current_gen()
        old_logs = self._wal_files(int(self.meta["generation"]))
        write_bytes_atomic(self.path / "CURRENT", f"{name}\n".encode())
        if old and old != name:
            remove_quietly(self.path / old)
        for p in old_logs:  # now inside the new generation
            remove_quietly(p)
        self.meta = meta
        self._dirty = False
        self._log, self._full_save, self._wal_seq, self._wal_rows = [], False, 0, 0
        log.debug("saved %s (%d vectors) in %.2fs", self.path / name, len(self.ids), time.perf_counter() - t0)
        return True

    def close(self) -> None:
        """Save a generation (for a writer) and release the directory."""
        if getattr(self, "_closed", True):
            return
        try:
            if not self.readonly:
                self.save()
        finally:
            self._closed = True
            if self._lock:
                self._lock.release()

    def __enter__(self) -> "VideoStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_writable(self) -> None:
        if self.readonly:
            raise RuntimeError(f"video store {self.path} was opened read-only")
        if self._closed:
            raise RuntimeError(f"video store {self.path} is closed")

    # -- properties ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def metric(self) -> str:
        """"cosine": vectors are stored L2-normalised; "ip": as given (a video-text model's
        joint-space embeddings, whose inner product with a text feature is its score)."""
        return self.meta.get("metric", "cosine")

    def search_text(self, texts, model, k: int = 10, *, tokenizer=None, **params):
        """Segments matching each text query (a video-text model's store): one hit list
        per text, scored by the model's similarity. See `text_search.search_text`."""
        from .text_search import search_text

        return search_text(self, texts, model, k, tokenizer=tokenizer, **params)

    @property
    def dim(self) -> Optional[int]:
        return self.meta["dim"]

    @property
    def kind(self) -> str:
        """The configured kind ("auto", "flat", "ivfpq", "ivfsq8", "hnsw")."""
        return self.meta["kind"]

    @property
    def index_kind(self) -> Optional[str]:
        """The kind of the index right now (an IVF or auto store is "flat" until trained)."""
        return self.index.kind if self.index else None

    def _target_kind(self) -> str:
        return AUTO_LARGE_KIND if self.kind == "auto" else self.kind

    def _train_at(self) -> int:
        if self.meta.get("train_at"):
            return int(self.meta["train_at"])
        return AUTO_TRAIN_AT if self.kind == "auto" else IVF_TRAIN_AT

    # -- writing ---------------------------------------------------------------------
    def add(self, uids: Sequence[int], vectors, meta: Union[dict, pa.Table, None] = None) -> None:
        """Upsert vectors under explicit int64 ids; `meta` gives the id-map columns
        (a dict of equal-length sequences or an id-map table; missing ones are blank)."""
        self._check_writable()
        uids = np.asarray(uids, dtype=np.int64).reshape(-1)
        x = _unit_rows(vectors, self.dim, f"video store {self.path}", unit=self.metric == "cosine")
        if x.shape[0] != uids.size:
            raise ValueError(f"video store {self.path}: {uids.size} ids for {x.shape[0]} vectors")
        if (uids < 0).any():
            raise ValueError(f"video store {self.path}: ids must be non-negative (segment_uid), got {int(uids[uids < 0][0])}")
        table = meta if isinstance(meta, pa.Table) else meta_table(uids, meta)
        if table.num_rows != uids.size or not np.array_equal(table.column("uid").to_numpy(), uids):
            raise ValueError(f"video store {self.path}: id-map rows do not match the ids")
        # Within one batch the last row of a uid wins, as across batches.
        rev_first = np.unique(uids[::-1], return_index=True)[1]
        if rev_first.size != uids.size:
            keep = np.sort(uids.size - 1 - rev_first)
            uids, x, table = uids[keep], x[keep], table.take(pa.array(keep))
        if self.dim is None:
            self.meta["dim"] = int(x.shape[1])
            self._full_save = True
        if self.index is None:
            self.index = self._new_index()
        existing = uids[self.ids.contains(uids)]
        self.index.upsert(uids, x, existing)
        self.ids.add(table)
        self._log_table("add", uids, x, table)
        self._dirty = True
        self._gpu_index = None
        if self.index.kind == "flat" and self._target_kind() in TRAINED_KINDS and len(self.ids) >= self._train_at():
            self._convert(self._target_kind())

    def add_results(self, results: Iterable[SegmentResult]) -> int:
        """Upsert segment results (embedding + id-map row each); returns how many."""
        results = list(results)
        if not results:
            return 0
        for r in results:
            self._check_model(r)
        uids = np.array([r.uid for r in results], np.int64)
        vecs = np.stack([np.asarray(r.embedding, np.float32).reshape(-1) for r in results]) if results else None
        meta = {
            "stream_id": [r.stream_id for r in results],
            "segment_index": [int(r.segment_index) for r in results],
            "t_start": [float(r.t_start) for r in results],
            "t_end": [float(r.t_end) for r in results],
            "uri": [r.uri for r in results],
            "labels": [list(r.labels) for r in results],
            "scores": [[float(s) for s in r.scores] for r in results],
        }
        try:
            self.add(uids, vecs, meta)
        except ValueError as e:
            r = results[0] if len(results) == 1 else None
            where = f"segment {r.segment_index} of stream {r.stream_id!r}" if r else f"{len(results)} results"
            raise ValueError(f"{e} ({where})") from e
        return len(results)

    def _check_model(self, r: SegmentResult) -> None:
        # Embeddings of two different models are not comparable; mixing them in one
        # store would return nonsense silently.
        for key, value in (("model", r.model), ("checkpoint_digest", r.checkpoint_digest)):
            if not value:
                continue
            have = self.meta.get(key) or ""
            if not have:
                self.meta[key] = value
                self._full_save = True  # the log carries vectors, not store metadata
            elif have != value:
                raise ValueError(
                    f"video store {self.path} holds embeddings from {key} {have!r}; segment "
                    f"{r.segment_index} of stream {r.stream_id!r} comes from {value!r} (use another store)"
                )

    def remove(self, uids: Sequence[int]) -> int:
        self._check_writable()
        uids = np.asarray(uids, np.int64).reshape(-1)
        present = uids[self.ids.contains(uids)]
        if present.size == 0:
            return 0
        self.index.remove(present)
        self.ids.remove(present)
        self._log_table("remove", present, None, None)
        self._dirty = True
        self._gpu_index = None
        return int(np.unique(present).size)

    def remove_stream(self, stream_id: str) -> int:
        return self.remove(self.ids.stream_rows(stream_id).column("uid").to_numpy())

    def _new_index(self) -> VectorIndex:
        target = self._target_kind()
        if target == "hnsw":
            return VectorIndex.empty("hnsw", self.dim, hnsw_m=int(self.meta.get("hnsw_m") or 32), threads=self.threads)
        return VectorIndex.empty("flat", self.dim, threads=self.threads)  # IVF kinds start exact, see docstring

    def _convert(self, kind: str, *, from_ids=None, from_vecs=None) -> None:
        ids, vecs = (from_ids, from_vecs) if from_ids is not None else self.index.live_vectors()
        n = ids.size
        t0 = time.perf_counter()
        if kind in TRAINED_KINDS:
            nlist = int(self.meta.get("nlist") or default_nlist(n))
            rng = np.random.default_rng(0)
            n_train = min(n, max(min_train_size(nlist), 64 * 1024))
            sample = vecs[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else vecs
            fresh = VectorIndex.trained(kind, sample, n_expected=n, nlist=nlist, pq_m=self.meta.get("pq_m"),
                                        threads=self.threads)
        elif kind == "hnsw":
            fresh = VectorIndex.empty("hnsw", self.dim, hnsw_m=int(self.meta.get("hnsw_m") or 32), threads=self.threads)
        else:
            fresh = VectorIndex.empty("flat", self.dim, threads=self.threads)
        for i in range(0, n, 65536):
            fresh.add(ids[i : i + 65536], vecs[i : i + 65536])
        self.index = fresh
        self._dirty = True
        self._full_save = True  # a new index: the log of the old one no longer applies
        self._gpu_index = None
        log.info("video store %s: built %s index over %d vectors in %.1fs", self.path, kind, n, time.perf_counter() - t0)

    def rebuild(self, kind: Optional[str] = None, *, nlist: Optional[int] = None) -> None:
        """Re-build the index (optionally of another kind, or with more IVF lists) from
        the vectors it holds: exact for flat/HNSW, decoded codes for IVF kinds."""
        self._check_writable()
        if kind is not None:
            if kind not in ("auto", *KINDS):
                raise ValueError(f"unknown index kind {kind!r}")
            self.meta["kind"] = kind
        if nlist is not None:
            self.meta["nlist"] = nlist
        if self.index is None:
            return
        ids, vecs = self.index.live_vectors()
        target = self._target_kind()
        if target in TRAINED_KINDS and ids.size < self._train_at():
            target = "flat"  # too few to train; `add` converts once there are enough
        self._convert(target, from_ids=ids, from_vecs=vecs)

    # -- searching -------------------------------------------------------------------
    def _searchable(self):
        if self._gpu_res is None or self.index is None:
            return None
        if self._gpu_index is None:
            try:
                self._gpu_index = self.index.to_gpu(self._gpu_res)
            except RuntimeError as e:  # a kind or size faiss-gpu cannot take: stay on CPU
                log.warning("video store %s: GPU index unavailable (%s); searching on CPU", self.path, e)
                self._gpu_res = None
        return self._gpu_index

    def _hits(self, scores: np.ndarray, uids: np.ndarray) -> list[SearchHit]:
        valid = uids >= 0
        rows = self.ids.rows(uids[valid])
        hits = []
        for s, row in zip(scores[valid], rows):
            if row is None:
                continue
            hits.append(SearchHit(
                uid=int(row["uid"]), score=float(s), stream_id=row["stream_id"],
                segment_index=int(row["segment_index"]), t_start=float(row["t_start"]),
                t_end=float(row["t_end"]), uri=row["uri"] or "",
                labels=tuple(row["labels"] or ()), label_scores=tuple(row["scores"] or ()),
            ))
        return hits

    def _search_units(self, q: np.ndarray, k: int, keep=None, **params) -> list[list[SearchHit]]:
        """Top-k per query of unit vectors, keeping hits `keep` accepts (widening the
        search until k accepted hits are found or the store is exhausted)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.index is None or len(self.ids) == 0:
            return [[] for _ in range(q.shape[0])]
        n_live = len(self.ids)
        first = min(k if keep is None else 2 * k + 8, n_live)
        D, I = self.index.search(q, first, gpu_index=self._searchable(), **params)
        out = []
        for row in range(q.shape[0]):
            hits, kk = self._hits(D[row], I[row]), first
            if keep is not None:
                hits = [h for h in hits if keep(h)]
            while len(hits) < k and kk < n_live:  # filtered too many: widen this query
                kk = min(4 * kk, n_live)
                Dw, Iw = self.index.search(q[row : row + 1], kk, gpu_index=self._searchable(), **params)
                hits = [h for h in self._hits(Dw[0], Iw[0]) if keep is None or keep(h)]
            out.append(hits[:k])
        return out

    def search(self, vectors, k: int = 10, *, nprobe: Optional[int] = None, ef: Optional[int] = None,
               exclude: Iterable[int] = ()):
        """Nearest stored segments by cosine similarity.

        `vectors` [D] returns list[SearchHit]; [n, D] returns one list per row. `nprobe`
        (IVF kinds) and `ef` (HNSW) trade speed for recall; `exclude` drops uids."""
        single = np.ndim(vectors) == 1
        q = _unit_rows(vectors, self.dim, f"search in {self.path}")
        exclude = set(int(u) for u in exclude)
        keep = (lambda h: h.uid not in exclude) if exclude else None
        res = self._search_units(q, k, keep, nprobe=nprobe, ef=ef)
        return res[0] if single else res

    def vector(self, uid: int) -> np.ndarray:
        """The stored (unit) vector of `uid`; decoded from codes for IVF kinds."""
        if not self.ids.contains(np.array([uid]))[0]:
            raise KeyError(f"id {uid} is not in video store {self.path}")
        return self.index.reconstruct(int(uid))

    def get(self, uid: int) -> Optional[dict]:
        """The id-map row of `uid`, or None."""
        return self.ids.rows([int(uid)])[0]

    def search_id(self, uid: int, k: int = 10, *, exclude_self: bool = True, **params) -> list[SearchHit]:
        """Segments like the stored segment `uid`."""
        return self.search(self.vector(uid), k, exclude=[uid] if exclude_self else (), **params)

    def search_at(self, stream_id: str, t: float, k: int = 10, *, exclude_self: bool = True, **params) -> list[SearchHit]:
        """Segments like the one of `stream_id` at `t` seconds (the covering segment,
        else the nearest in time)."""
        return self.search_id(self.ids.segment_at(stream_id, float(t)), k, exclude_self=exclude_self, **params)

    def search_video(self, embeddings, k: int = 10, *, mode: str = "mean",
                     exclude_stream: Optional[str] = None, **params) -> list[SearchHit]:
        """Search by a query video given as its segments' embeddings [n, D] (embed the
        video with the model, then call this).

        mode "mean": one query, the mean direction of the segments (what the video is
        about overall); "max": each segment searched, a stored segment scored by its
        best match (finds a video that shares any part with the query)."""
        q = _unit_rows(embeddings, self.dim, f"query video for {self.path}")
        keep = (lambda h: h.stream_id != exclude_stream) if exclude_stream is not None else None
        if mode == "mean":
            m = q.mean(axis=0, keepdims=True)
            norm = np.linalg.norm(m)
            if norm == 0:
                raise ValueError("query video: its segment embeddings cancel out (mean is zero); use mode='max'")
            return self._search_units(m / norm, k, keep, **params)[0]
        if mode == "max":
            best: dict[int, SearchHit] = {}
            for hits in self._search_units(q, k, keep, **params):
                for h in hits:
                    if h.uid not in best or h.score > best[h.uid].score:
                        best[h.uid] = h
            return sorted(best.values(), key=lambda h: -h.score)[:k]
        raise ValueError(f"mode must be 'mean' or 'max', got {mode!r}")

    def streams(self) -> list[str]:
        return self.ids.streams()
