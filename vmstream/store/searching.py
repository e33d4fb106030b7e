"""Searching a video store: by vector, by a stored segment, by a stream's moment, by a
query video. `StoreSearch` is the reading half of `VideoStore` (it needs the store's
`index`, `ids`, `dim` and `path`); `SearchHit` is what a search returns."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

log = logging.getLogger(__name__)


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


def unit_rows(x, dim: Optional[int], what: str, unit: bool = True) -> np.ndarray:
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


class StoreSearch:
    """Search methods of `VideoStore` (see there)."""

    @property
    def metric(self) -> str:
        """ "cosine": vectors are stored L2-normalised; "ip": as given (a video-text model's
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
            hits.append(
                SearchHit(
                    uid=int(row["uid"]),
                    score=float(s),
                    stream_id=row["stream_id"],
                    segment_index=int(row["segment_index"]),
                    t_start=float(row["t_start"]),
                    t_end=float(row["t_end"]),
                    uri=row["uri"] or "",
                    labels=tuple(row["labels"] or ()),
                    label_scores=tuple(row["scores"] or ()),
                )
            )
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

    def search(
        self,
        vectors,
        k: int = 10,
        *,
        nprobe: Optional[int] = None,
        ef: Optional[int] = None,
        exclude: Iterable[int] = (),
    ):
        """Nearest stored segments by cosine similarity.

        `vectors` [D] returns list[SearchHit]; [n, D] returns one list per row. `nprobe`
        (IVF kinds) and `ef` (HNSW) trade speed for recall; `exclude` drops uids."""
        single = np.ndim(vectors) == 1
        q = unit_rows(vectors, self.dim, f"search in {self.path}")
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

    def search_at(
        self, stream_id: str, t: float, k: int = 10, *, exclude_self: bool = True, **params
    ) -> list[SearchHit]:
        """Segments like the one of `stream_id` at `t` seconds (the covering segment,
        else the nearest in time)."""
        return self.search_id(self.segment_at(stream_id, float(t)), k, exclude_self=exclude_self, **params)

    def segment_at(self, stream_id: str, t: float) -> int:
        """uid of the stream's segment covering time `t` (seconds), else the nearest."""
        if not math.isfinite(t):
            raise ValueError(f"time must be a finite number of seconds, got {t!r}")
        rows = self.stream_rows(stream_id)
        if rows.num_rows == 0:
            known = self.streams()
            shown = ", ".join(repr(s) for s in known[:10]) + (" ..." if len(known) > 10 else "")
            raise KeyError(f"stream {stream_id!r} has no segments in this store (streams: {shown or 'none'})")
        t0 = rows.column("t_start").to_numpy()
        t1 = rows.column("t_end").to_numpy()
        # 0 inside [t0, t1], else the distance to the nearer end.
        dist = np.maximum(0.0, np.maximum(t0 - t, t - t1))
        return int(rows.column("uid")[int(np.argmin(dist))].as_py())

    def search_video(
        self, embeddings, k: int = 10, *, mode: str = "mean", exclude_stream: Optional[str] = None, **params
    ) -> list[SearchHit]:
        """Search by a query video given as its segments' embeddings [n, D] (embed the
        video with the model, then call this).

        mode "mean": one query, the mean direction of the segments (what the video is
        about overall); "max": each segment searched, a stored segment scored by its
        best match (finds a video that shares any part with the query)."""
        q = unit_rows(embeddings, self.dim, f"query video for {self.path}")
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
