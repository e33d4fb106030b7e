"""A searchable store of segment embeddings: a faiss index plus an id map, kept as
generations and a change log (the layout and its checksums are in `files.py`).

`save()` writes a whole new generation aside, renames it into place and points CURRENT
at it; only then are the older generation and its log deleted. `commit()` (what the
sink's flush calls, every few segments) makes the changes since the last commit
durable without rewriting the index: they go to a new log file, O(changes) instead of
O(store) (a 1M-vector IVF-SQ8 generation is ~210 MB), recorded in CURRENT with its
checksum. The log is compacted into a new generation when it passes `wal_max_rows`
rows, `wal_max_bytes` bytes or `wal_max_files` files, after an index conversion, and on
`close()`: a store closed cleanly is one generation and no log.

Every file is checked against its recorded sha256 and size on open. A damaged or
missing one is a `StoreCorruptError` naming it: a reader gets no hits from half a
store, and a writer refuses to append on top of it (`vmstream store repair` rebuilds
the store from the run's Parquet results).

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
see the last commit (generation plus logs); a reader that raced a compaction (its
generation deleted while it read) reads CURRENT again.

Threads: the store works beside the model, which keeps every core busy, and there
faiss's OpenMP/OpenBLAS threads mostly spin waiting for each other. By default
(`threads=None`) faiss runs on one thread except for HNSW bulk adds (the measurements
are in `index.py`); `threads=n` uses n threads for everything.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import faiss
import numpy as np
import pyarrow as pa

from vmstream.records import SCHEMA_VERSION, SegmentResult

from . import files
from .atomic import DirLock, remove_stale_tmp
from .files import Problem, StoreCorruptError, StoredState
from .idmap import ID_MAP_FIELDS, ID_MAP_SCHEMA, IdMap, meta_table
from .index import KINDS, TRAINED_KINDS, VectorIndex, default_nlist, gpu_available, min_train_size
from .searching import SearchHit, StoreSearch, unit_rows

METRICS = ("cosine", "ip")

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

AUTO_LARGE_KIND = "ivfsq8"
AUTO_TRAIN_AT = 200_000
IVF_TRAIN_AT = 50_000

__all__ = ["SearchHit", "StoreCorruptError", "VideoStore"]


class VideoStore(StoreSearch):
    """The FAISS video embedding store. See the module docstring for the layout.

    store = VideoStore("out/index", dim=192)        # create or load-and-continue
    store.add_results(results)                       # upsert by SegmentResult.uid
    store.commit()                                   # durable (a log file)
    store.search(vec, k=10)                          # -> list[SearchHit]
    store.search_id(uid), store.search_at("cam0", 65.0), store.search_video(E)
    store.close()                                    # one compacted generation
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
        wal_max_bytes: int = 256 << 20,
        set_aside: Optional[str] = None,
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
        self.wal_max_bytes = int(wal_max_bytes)
        self._log: list[pa.Table] = []  # changes since the last commit, in order
        self._full_save = False  # a change the log cannot express (conversion, meta)
        self._wal: list[dict] = []  # this generation's committed log files (CURRENT's records)
        self._lock: Optional[DirLock] = None
        if not readonly:
            self._lock = DirLock(self.path, what="video store").acquire()
        try:
            fresh = bool(set_aside) and not readonly
            if fresh:  # start over, keeping what was there (see `repair`)
                files.move_aside(self.path, set_aside)
            self._open(dim, kind, train_at, nlist, pq_m, hnsw_m, fresh=fresh)
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
    def _load_state(self) -> Optional[StoredState]:
        """The committed state, verified and loaded (`_replay`). A reader whose
        generation was deleted while it read (a writer compacted meanwhile: CURRENT
        changed) reads again."""
        for attempt in range(5):
            before = self._current_bytes()
            state, problems = files.read_state(self.path)
            if state is not None or not problems:
                if state is not None:
                    self._replay(state)
                return state
            if self.readonly and attempt < 4 and self._current_bytes() != before:
                time.sleep(0.05 * (attempt + 1))
                continue
            raise StoreCorruptError(self.path, problems)
        raise AssertionError("unreachable")

    def _current_bytes(self) -> Optional[bytes]:
        try:
            return (self.path / files.CURRENT).read_bytes()
        except OSError:
            return None

    def _open(self, dim, kind, train_at, nlist, pq_m, hnsw_m, fresh: bool = False) -> None:
        if not self.readonly:
            remove_stale_tmp(self.path)
        state = None if fresh else self._load_state()
        if state is None:
            if self.readonly:
                raise FileNotFoundError(f"no video store at {self.path} (no CURRENT file; has anything been saved?)")
            self.meta = {
                "format": files.STORE_FORMAT,
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
            self.consumer = None
            self._dirty = False
            self._full_save = True  # nothing on disk yet: the first commit is a generation
            return
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
        self._dirty = False
        if not self.readonly:
            if state.adopted:  # an interrupted first save: its generation is complete
                files.write_current(self.path, state.generation, [])
            files.remove_leftovers(self.path, state.generation, self._wal)

    def _replay(self, state: StoredState) -> None:
        """Load a verified generation and apply its log, checking that the two agree."""
        self.meta = state.meta
        # What an indexer had consumed at this commit (None for a store `run` wrote).
        self.consumer: Optional[dict] = state.consumer
        self.index = VectorIndex(state.index, threads=self.threads) if state.index is not None else None
        self.ids = IdMap(state.ids)
        gen = files.gen_name(state.generation)
        if int(self.meta.get("count", len(self.ids))) != len(self.ids):
            raise StoreCorruptError(
                self.path,
                [
                    Problem(
                        f"{gen}/ids.parquet", f"holds {len(self.ids)} rows, meta.json records {self.meta.get('count')}"
                    )
                ],
            )
        for entry, table in zip(state.log_entries, state.logs):
            try:
                self._apply_log(table)
            except (KeyError, ValueError, TypeError, pa.ArrowException) as e:
                raise StoreCorruptError(self.path, [Problem(entry["name"], f"cannot be applied ({e})")]) from None
        self._wal = list(state.log_entries)
        live = (self.index.ntotal - self.index.tombstones) if self.index else 0
        if live != len(self.ids):
            raise StoreCorruptError(self.path, [Problem(gen, f"{live} vectors, {len(self.ids)} id-map rows")])

    # -- the change log ----------------------------------------------------------------
    def _apply_log(self, t: pa.Table) -> None:
        for op, part in files.log_runs(t):
            uids = part.column("uid").to_numpy()
            if op == "remove":
                present = uids[self.ids.contains(uids)]
                if present.size:
                    self.index.remove(present)
                    self.ids.remove(present)
                continue
            # Several logged adds may upsert one uid: as in `add`, the last wins.
            rev_first = np.unique(uids[::-1], return_index=True)[1]
            if rev_first.size != uids.size:
                keep = np.sort(uids.size - 1 - rev_first)
                part, uids = part.take(pa.array(keep)), uids[keep]
            x = part.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, int(self.meta["dim"]))
            if self.index is None:
                self.index = self._new_index()
            self.index.upsert(uids, x, uids[self.ids.contains(uids)])
            self.ids.add(part.select(list(ID_MAP_FIELDS)).cast(ID_MAP_SCHEMA))

    def _compaction_due(self, rows: int) -> bool:
        return (
            self._wal_rows + rows > self.wal_max_rows
            or len(self._wal) + 1 > self.wal_max_files
            or sum(e["size"] for e in self._wal) > self.wal_max_bytes
        )

    @property
    def _wal_rows(self) -> int:
        return sum(int(e.get("rows", 0)) for e in self._wal)

    def commit(self, consumer: Optional[dict] = None) -> bool:
        """Make every change durable: a log file of the changes since the last commit,
        or a whole new generation when one is due. True if it wrote anything.

        `consumer` (an indexer's consumed offsets, any JSON object) is recorded in the
        same commit point as the changes, so the two are durable together or not at all;
        it is kept through later commits and compactions until replaced."""
        self._check_writable()
        moved = consumer is not None and consumer != self.consumer
        if moved:
            self.consumer = consumer
        if not self._dirty:
            if moved and int(self.meta["generation"]) > 0:
                files.write_current(self.path, int(self.meta["generation"]), self._wal, self.consumer)
                return True
            if not moved:
                return False
        rows = sum(t.num_rows for t in self._log)
        if self._full_save or int(self.meta["generation"]) == 0 or self._compaction_due(rows):
            self._dirty = True
            return self.save()
        gen = int(self.meta["generation"])
        entry = files.write_log_file(self.path, gen, len(self._wal), pa.concat_tables(self._log))
        files.write_current(self.path, gen, self._wal + [entry], self.consumer)  # the commit point
        self._wal.append(entry)
        self._log = []
        self._dirty = False
        return True

    def save(self) -> bool:
        """Write a new generation (the changes and the log compacted into it) if
        anything changed or a log exists; True if it wrote."""
        self._check_writable()
        if not self._dirty and not self._wal and int(self.meta["generation"]) > 0:
            return False
        gen = int(self.meta["generation"]) + 1
        t0 = time.perf_counter()
        meta = dict(
            self.meta,
            generation=gen,
            count=len(self.ids),
            saved_at=time.time(),
            index_kind=self.index.kind if self.index else None,
        )
        files.write_generation(self.path, gen, meta, self.index.index if self.index else None, self.ids, self.consumer)
        # CURRENT names the new generation: the old one and its log can go.
        files.remove_leftovers(self.path, gen, [])
        self.meta = meta
        self._dirty = False
        self._log, self._full_save, self._wal = [], False, []
        log.debug(
            "saved %s (%d vectors) in %.2fs", self.path / files.gen_name(gen), len(self.ids), time.perf_counter() - t0
        )
        return True

    def close(self) -> None:
        """Compact into one generation (for a writer) and release the directory."""
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

    # -- the store interface beside MilvusStore (backends.py) ---------------------------
    backend = "faiss"

    def stream_rows(self, stream_id: str) -> pa.Table:
        return self.ids.stream_rows(stream_id)

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(uids, vectors) of every stored segment, by uid (decoded codes for IVF kinds)."""
        if self.index is None:
            return np.empty(0, np.int64), np.empty((0, int(self.meta["dim"] or 0)), np.float32)
        ids, vecs = self.index.live_vectors()
        order = np.argsort(ids)
        return ids[order], vecs[order]

    def id_table(self) -> pa.Table:
        """Every segment's id-map row (ID_MAP_SCHEMA), in no particular order."""
        return self.ids.table

    def id_rows(self) -> list[dict]:
        """Every segment's id-map row, by uid."""
        return sorted(self.ids.table.to_pylist(), key=lambda r: r["uid"])

    # -- properties ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def log_files(self) -> int:
        """Committed change-log files not yet compacted into a generation."""
        return len(self._wal)

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
        x = unit_rows(vectors, self.dim, f"video store {self.path}", unit=self.metric == "cosine")
        if x.shape[0] != uids.size:
            raise ValueError(f"video store {self.path}: {uids.size} ids for {x.shape[0]} vectors")
        if (uids < 0).any():
            raise ValueError(
                f"video store {self.path}: ids must be non-negative (segment_uid), got {int(uids[uids < 0][0])}"
            )
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
        self._log.append(files.log_table("add", uids, x, table, int(self.meta["dim"])))
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
        self._log.append(files.log_table("remove", present, None, meta_table(present), int(self.meta["dim"])))
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
            fresh = VectorIndex.trained(
                kind, sample, n_expected=n, nlist=nlist, pq_m=self.meta.get("pq_m"), threads=self.threads
            )
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
        log.info(
            "video store %s: built %s index over %d vectors in %.1fs", self.path, kind, n, time.perf_counter() - t0
        )

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
