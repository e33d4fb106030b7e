"""The vector index under the video store: one faiss CPU index of L2-normalised vectors
under explicit int64 ids, in one of four kinds, with upsert for all of them.

    flat    IndexIDMap2(IndexFlatIP): exact cosine. Best below a few hundred thousand
            vectors (search is a matrix product over all of them; 4*d bytes each).
    ivfpq   IVF{nlist},PQ{m}: coarse k-means lists, product-quantised codes of the
            vectors (m bytes each, d/4 by default). The memory-frugal kind for many
            millions; clearly approximate (benchmarks/faiss_speed.py prints its recall).
    ivfsq8  IVF{nlist},SQ8 of the vectors themselves (not residuals): 8-bit scalar
            codes, d bytes a vector; much higher recall than PQ, 4x smaller than flat.
            The large kind "auto" converts to.
    hnsw    IndexIDMap2(IndexHNSWFlat): graph search, high recall and fast queries, full
            vectors plus the graph in memory; no training.

Cosine similarity is inner product of unit vectors, so every kind uses
METRIC_INNER_PRODUCT and scores are cosines (approximate for the quantised kinds).

Upsert: flat and IVF kinds remove the old id natively (the IVF kinds keep a hashtable
direct map, which makes remove and reconstruct by id O(1)). HNSW cannot remove; an
upserted or removed id's old entry is tombstoned instead — its slot in the id map is
set to a negative id and searches filter negative ids out inside the graph search
(an `IDSelectorRange` in the search parameters), so results stay exact-k. When
tombstones pass `HNSW_PURGE_FRACTION` of the graph it is rebuilt from its own (exact)
stored vectors.

GPU: `to_gpu` clones flat and IVF kinds with `faiss.index_cpu_to_gpu` for searching
when faiss-gpu and a GPU are present; the CPU index stays the master copy, receives the
adds, and is what gets saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("flat", "ivfpq", "ivfsq8", "hnsw")
TRAINED_KINDS = ("ivfpq", "ivfsq8")
HNSW_PURGE_FRACTION = 0.2
# Thread policy. The store runs beside the model, which keeps every core busy; there
# faiss's OpenMP and OpenBLAS threads mostly spin waiting for each other. Measured on
# the 2-core machine under load, 1 thread against 2:
#   one flat query over 20k vectors          1.6 ms   vs 43 ms
#   IVF-SQ8 adds, 1M vectors in 10k batches  63k/s    vs 13k/s
#   k-means (IVF training), 5000 vectors     0.17 s   vs 2.7 s
#   HNSW adds, 3000 vectors in 256 batches   2.1 s    vs 9.7 s
#   HNSW adds, 100k vectors in 10k batches   0.8k/s   vs 1.5k/s   <- the exception
# So everything runs on one thread except HNSW graph building in batches of at least
# HNSW_BULK_ADD vectors (locks, no BLAS: it does share well). VideoStore(threads=n)
# overrides this for a machine that has cores to spare.
HNSW_BULK_ADD = 4096
# Largest id a search may return: tombstones are negative, real ids (segment_uid) >= 0.
_ID_MAX = 2**63 - 1


_OPENBLAS = None


def _faiss_openblas():
    """The OpenBLAS bundled in faiss-cpu wheels (faiss_cpu.libs/), or None.

    faiss runs its k-means and batched distance computations through it, and its thread
    pool is sized once at load (OMP_NUM_THREADS), beyond faiss.omp_set_num_threads's
    reach. It is private to faiss (numpy and torch bring their own BLAS), so sizing it
    here affects faiss only."""
    global _OPENBLAS
    if _OPENBLAS is None:
        _OPENBLAS = False
        libdir = Path(faiss.__file__).resolve().parent.parent / "faiss_cpu.libs"
        for p in sorted(libdir.glob("libopenblas*.so*")) if libdir.is_dir() else ():
            try:
                lib = ctypes.CDLL(str(p))  # the already-loaded copy: same path, same handle
                lib.openblas_get_num_threads.restype = ctypes.c_int
                _OPENBLAS = lib
                break
            except (OSError, AttributeError):
                continue
    return _OPENBLAS or None


@contextlib.contextmanager
def omp_threads(n: int):
    """Run faiss with `n` threads (its OpenMP regions in this thread and its bundled
    OpenBLAS), then restore. On a busy machine, work too small to share runs several
    times faster on one thread than on two that spin waiting for each other (PQ16
    training on 5000 vectors, under load: 7.3 s with OpenMP alone set to 1, 2.2 s with
    OpenBLAS too)."""
    old = faiss.omp_get_max_threads()
    blas = _faiss_openblas()
    old_blas = blas.openblas_get_num_threads() if blas else None
    faiss.omp_set_num_threads(n)
    if blas:
        blas.openblas_set_num_threads(n)
    try:
        yield
    finally:
        # BLAS first: the bundled OpenBLAS is its OpenMP build, whose set_num_threads
        # also sets the calling thread's OpenMP count, and its own count is process-wide
        # (another thread's scope may have changed it meanwhile). Restoring OpenMP last
        # leaves this thread's setting as it was, whatever the BLAS count says.
        if blas:
            blas.openblas_set_num_threads(old_blas)
        faiss.omp_set_num_threads(old)


def default_nlist(n: int) -> int:
    """IVF list count for n vectors: ~4*sqrt(n), a power of two, at least 16."""
    return int(max(16, 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(n))))))


def default_pq_m(d: int) -> int:
    """PQ sub-quantisers: 4 dimensions each (48 bytes for d=192), else the largest
    divisor of d that keeps at least 2 dims per sub-quantiser."""
    if d % 4 == 0:
        return d // 4
    for m in range(d // 2, 0, -1):
        if d % m == 0:
            return m
    return 1


def min_train_size(nlist: int) -> int:
    # faiss warns below 39 points per centroid; k-means is poor there.
    return 39 * nlist


def _ivf(index) -> Optional["faiss.IndexIVF"]:
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


def _id_map_view(index) -> np.ndarray:
    """A writable numpy view of an IndexIDMap's id table (valid until the next add)."""
    return faiss.rev_swig_ptr(index.id_map.data(), index.ntotal)


def kind_of(index) -> str:
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
    ivf = _ivf(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if isinstance(ivf, faiss.IndexIVFPQ):
            return "ivfpq"
        if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
            return "ivfsq8"
    raise ValueError(f"unsupported faiss index type {type(index).__name__}")


class VectorIndex:
    """A faiss index of unit vectors under int64 ids. Callers pass normalised float32
    [n, d] arrays and ids they know to be new or (for `upsert`) maybe present."""

    def __init__(self, index, kind: Optional[str] = None, threads: Optional[int] = None):
        self.index = index
        # None: the policy above; n: n threads for everything.
        self.threads = threads
        self.kind = kind or kind_of(index)
        self.d = int(index.d)
        self.tombstones = int((_id_map_view(index) < 0).sum()) if self.kind == "hnsw" and index.ntotal else 0

    # -- construction ----------------------------------------------------------------
    @classmethod
    def empty(
        cls, kind: str, d: int, *, hnsw_m: int = 32, ef_construction: int = 64, threads: Optional[int] = None
    ) -> "VectorIndex":
        if kind == "flat":
            return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(d)), "flat", threads)
        if kind == "hnsw":
            h = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            h.hnsw.efConstruction = ef_construction
            return cls(faiss.IndexIDMap2(h), "hnsw", threads)
        raise ValueError(f"index kind {kind!r} needs training data: use VectorIndex.trained")

    @classmethod
    def trained(
        cls,
        kind: str,
        train_x: np.ndarray,
        *,
        n_expected: Optional[int] = None,
        nlist: Optional[int] = None,
        pq_m: Optional[int] = None,
        seed: int = 1234,
        threads: Optional[int] = None,
    ) -> "VectorIndex":
        """An empty IVF index trained on `train_x` (a sample of the data, unit rows)."""
        if kind not in TRAINED_KINDS:
            raise ValueError(f"index kind {kind!r} is not trained (trained kinds: {TRAINED_KINDS})")
        n, d = train_x.shape
        nlist = nlist or default_nlist(n_expected or n)
        # Never ask k-means for more lists than the sample supports.
        nlist = int(min(nlist, max(1, n // 39)))
        codes = f"PQ{pq_m or default_pq_m(d)}" if kind == "ivfpq" else "SQ8"
        index = faiss.index_factory(d, f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        # Encode the unit vectors themselves, not their residuals to the list centre.
        # A store is trained once, on its first vectors; residual codes then fit later
        # content (a new scene, another camera) badly: decoded cosine to the original
        # 0.66 for PQ48 and clipped SQ8 ranges, against 0.92 / 0.998 direct, at a small
        # in-distribution cost for PQ and none for SQ8 (measured at d=192, 100k).
        ivf.by_residual = False
        x = np.ascontiguousarray(train_x, dtype=np.float32)

        # 1. The coarse lists: spherical k-means (unit vectors, inner product).
        #    IndexIVF.train skips its quantizer once it holds nlist centroids. One
        #    thread: 0.17 s against 2.7 s on two for 5000 vectors on the busy machine,
        #    and no slower at 50k (20 s against 25 s).
        km = faiss.Kmeans(d, nlist, niter=20, seed=seed, spherical=True)
        with omp_threads(threads or 1):
            km.train(x)
        ivf.quantizer.add(km.centroids)

        # 2. The codes.
        if kind == "ivfpq":
            # index_factory turns on polysemous training (a simulated annealing of the
            # code order for Hamming filtering, which we never use); it dominated the
            # training time (26 s of 27 for 2000 vectors).
            ivf.do_polysemous_training = False
            ivf.pq.cp.seed = seed
            # 64 points a centroid (16k per sub-quantiser, not faiss's 64k) and 15
            # iterations: k-means in 4-dim sub-spaces is overhead-bound.
            ivf.pq.cp.max_points_per_centroid = 64
            ivf.pq.cp.niter = 15
            # ... and its many tiny parallel regions run faster on one thread than on
            # two that wait for each other (3.5 s vs 13.8 s for the PQ test on a busy
            # 2-core machine). The setting is per calling thread.
            with omp_threads(threads or 1):
                index.train(x)
        else:
            index.train(x)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls(index, kind, threads)

    def _pool(self, policy: Optional[int]):
        n = self.threads if self.threads is not None else policy
        return omp_threads(n) if n else contextlib.nullcontext()

    # -- mutation --------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Entries in the index, tombstones included."""
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        x, ids = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(ids, np.int64)
        bulk_graph = self.kind == "hnsw" and x.shape[0] >= HNSW_BULK_ADD
        with self._pool(None if bulk_graph else 1):
            self.index.add_with_ids(x, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many entries went."""
        ids = np.ascontiguousarray(np.unique(ids), np.int64)
        if ids.size == 0 or self.ntotal == 0:
            return 0
        if self.kind != "hnsw":
            return int(self.index.remove_ids(faiss.IDSelectorArray(ids.size, faiss.swig_ptr(ids))))
        view = _id_map_view(self.index)
        pos = np.flatnonzero(np.isin(view, ids))
        view[pos] = -(pos.astype(np.int64) + 2)  # unique negatives: never a real id
        self.tombstones += pos.size
        if self.tombstones > HNSW_PURGE_FRACTION * self.ntotal:
            self._purge_hnsw()
        return int(pos.size)

    def upsert(self, ids: np.ndarray, x: np.ndarray, existing: np.ndarray) -> None:
        """Add, first removing `existing` (the subset of `ids` already present)."""
        if existing.size:
            self.remove(existing)
        self.add(ids, x)

    def _purge_hnsw(self) -> None:
        live_ids, vecs = self.live_vectors()
        old = faiss.downcast_index(self.index.index)
        fresh = VectorIndex.empty(
            "hnsw", self.d, hnsw_m=_hnsw_m(old), ef_construction=old.hnsw.efConstruction, threads=self.threads
        )
        fresh.add(live_ids, vecs)
        log.info("rebuilt HNSW graph without %d tombstones (%d live vectors)", self.tombstones, live_ids.size)
        self.index, self.tombstones = fresh.index, 0

    # -- reading ---------------------------------------------------------------------
    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live entry; exact for flat/hnsw, decoded for IVF."""
        n = self.ntotal
        if n == 0:
            return np.empty(0, np.int64), np.empty((0, self.d), np.float32)
        if self.kind in ("flat", "hnsw"):
            ids = _id_map_view(self.index).copy()
            inner = faiss.downcast_index(self.index.index)
            store = inner if self.kind == "flat" else faiss.downcast_index(inner.storage)
            vecs = store.reconstruct_n(0, n)
            live = ids >= 0
            return ids[live], vecs[live]
        ivf = faiss.extract_index_ivf(self.index)
        invlists = ivf.invlists
        ids_parts = []
        for lst in range(ivf.nlist):
            sz = invlists.list_size(lst)
            if sz:
                ids_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), sz).copy())
        ids = np.concatenate(ids_parts) if ids_parts else np.empty(0, np.int64)
        vecs = (
            np.vstack([self.index.reconstruct_batch(ids[i : i + 65536]) for i in range(0, ids.size, 65536)])
            if ids.size
            else np.empty((0, self.d), np.float32)
        )
        return ids, vecs

    def reconstruct(self, uid: int) -> np.ndarray:
        return self.index.reconstruct(int(uid))

    def search(
        self, q: np.ndarray, k: int, *, nprobe: Optional[int] = None, ef: Optional[int] = None, gpu_index=None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(q, np.float32)
        if gpu_index is not None:
            if nprobe is not None and self.kind in TRAINED_KINDS:
                faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", int(nprobe))
            return gpu_index.search(q, k)
        params = None
        if self.kind in TRAINED_KINDS:
            params = faiss.SearchParametersIVF(
                nprobe=int(nprobe or default_nprobe(faiss.extract_index_ivf(self.index).nlist))
            )
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=int(max(ef or 64, k)))
            if self.tombstones:
                self._sel = faiss.IDSelectorRange(0, _ID_MAX)  # kept alive during the search
                params.sel = self._sel
        with self._pool(1):
            return self.index.search(q, k, params=params)

    # -- GPU -------------------------------------------------------------------------
    def to_gpu(self, resources, device: int = 0):
        """A GPU clone for searching (flat and IVF kinds), or None where faiss cannot
        clone this kind (HNSW)."""
        if self.kind == "hnsw":
            return None
        opts = faiss.GpuClonerOptions()
        # IVF-PQ's lookup tables in fp16: faiss-gpu needs that for codes of 56+ bits
        # (ours are 8*d/4); for the other kinds it would make the stored vectors fp16.
        opts.useFloat16 = self.kind == "ivfpq"
        # Flat and SQ8 ids sit in an IndexIDMap2 / the IVF lists: faiss-gpu clones the
        # former with its CPU cloner around a GPU flat index (GpuCloner.cpp), so
        # search results carry our ids either way.
        return faiss.index_cpu_to_gpu(resources, device, self.index, opts)


def default_nprobe(nlist: int) -> int:
    # ~3% of the lists, at least 8: recall@10 ~0.9+ for IVF,SQ8 on clustered data
    # (benchmarks/faiss_speed.py prints the trade-off).
    return int(min(nlist, max(8, nlist // 32)))


def _hnsw_m(h) -> int:
    # IndexHNSW stores 2*M neighbours on level 0 and M above; level 1's count is M.
    return int(h.hnsw.nb_neighbors(1))


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
