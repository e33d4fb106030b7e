"""The id map beside the vectors: uid -> (stream, segment, times, uri, labels, scores).

One row per live uid, in the column types of `SEGMENT_SCHEMA`, saved as `ids.parquet`
so anyone can read what a store holds without faiss. In memory it is an Arrow table
(settled, sorted by uid for O(log n) lookups) plus recent additions kept aside until
they are many enough to be worth merging: adding stays amortised O(batch).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vmstream.records import SCHEMA_VERSION, SEGMENT_SCHEMA

ID_MAP_FIELDS = ("uid", "stream_id", "segment_index", "t_start", "t_end", "uri", "labels", "scores")
ID_MAP_SCHEMA = pa.schema(
    [SEGMENT_SCHEMA.field(n) for n in ID_MAP_FIELDS],
    metadata={b"vmstream.record": b"VideoStoreIdMap", b"vmstream.schema_version": str(SCHEMA_VERSION).encode()},
)


def meta_table(uids: np.ndarray, columns: Optional[dict] = None) -> pa.Table:
    """An id-map table for `uids`; missing columns get neutral values."""
    n = len(uids)
    columns = dict(columns or {})
    defaults = {
        "stream_id": [""] * n,
        "segment_index": np.full(n, -1, np.int64),
        "t_start": np.full(n, np.nan),
        "t_end": np.full(n, np.nan),
        "uri": [""] * n,
        "labels": [[] for _ in range(n)],
        "scores": [[] for _ in range(n)],
    }
    unknown = set(columns) - set(defaults)
    if unknown:
        raise ValueError(f"unknown id-map columns {sorted(unknown)} (known: {list(ID_MAP_FIELDS[1:])})")
    arrays = [pa.array(np.asarray(uids, np.int64), pa.int64())]
    for name in ID_MAP_FIELDS[1:]:
        values = columns.get(name, defaults[name])
        if len(values) != n:
            raise ValueError(f"id-map column {name!r} has {len(values)} values for {n} ids")
        arrays.append(pa.array(values, type=ID_MAP_SCHEMA.field(name).type))
    return pa.Table.from_arrays(arrays, schema=ID_MAP_SCHEMA)


class IdMap:
    def __init__(self, table: Optional[pa.Table] = None):
        self._table = ID_MAP_SCHEMA.empty_table()
        self._sorted = np.empty(0, np.int64)
        self._pending: list[pa.Table] = []
        self._pending_uids: set[int] = set()
        self._pending_rows = 0
        self._count = 0  # live uids, kept without settling (len() is on the add path)
        if table is not None:
            self._pending.append(table.cast(ID_MAP_SCHEMA))
            self._pending_rows = table.num_rows
            self._settle()
            self._count = self._table.num_rows

    # -- updates ---------------------------------------------------------------------
    def contains(self, uids: np.ndarray) -> np.ndarray:
        uids = np.asarray(uids, np.int64)
        found = np.zeros(uids.shape, bool)
        if self._sorted.size:
            pos = np.searchsorted(self._sorted, uids).clip(0, self._sorted.size - 1)
            found |= self._sorted[pos] == uids
        if self._pending_uids:
            pend = self._pending_uids
            found |= np.fromiter((int(u) in pend for u in uids), bool, count=uids.size)
        return found

    def add(self, table: pa.Table) -> None:
        """Add or replace rows (by uid; the later row wins)."""
        uids = np.unique(table.column("uid").to_numpy())
        self._count += int((~self.contains(uids)).sum())
        self._pending.append(table)
        self._pending_uids.update(uids.tolist())
        self._pending_rows += table.num_rows
        # Merge once the aside part is a quarter of the whole: amortised O(batch).
        if self._pending_rows > max(65536, self._table.num_rows // 4):
            self._settle()

    def remove(self, uids: Sequence[int]) -> None:
        self._settle()
        drop = np.isin(self._sorted, np.asarray(uids, np.int64))
        if drop.any():
            self._table = self._table.filter(pa.array(~drop))
            self._sorted = self._sorted[~drop]
        self._count = self._table.num_rows

    def _settle(self) -> None:
        if not self._pending:
            return
        t = pa.concat_tables([self._table, *self._pending]).combine_chunks()
        uids = t.column("uid").to_numpy()
        # Last occurrence of each uid wins; np.unique on the reversed array gives it.
        rev_first = np.unique(uids[::-1], return_index=True)[1]
        keep = np.sort(uids.size - 1 - rev_first)
        t = t.take(pa.array(keep))
        order = np.argsort(t.column("uid").to_numpy(), kind="stable")
        self._table = t.take(pa.array(order))
        self._sorted = self._table.column("uid").to_numpy()
        self._pending, self._pending_uids, self._pending_rows = [], set(), 0

    # -- reading ---------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    @property
    def table(self) -> pa.Table:
        self._settle()
        return self._table

    def rows(self, uids: Sequence[int]) -> list[Optional[dict]]:
        """Rows for `uids` (None where unknown), in the given order."""
        self._settle()
        uids = np.asarray(uids, np.int64)
        if not self._sorted.size:
            return [None] * len(uids)
        pos = np.searchsorted(self._sorted, uids).clip(0, self._sorted.size - 1)
        ok = self._sorted[pos] == uids
        got = self._table.take(pa.array(pos[ok])).to_pylist() if ok.any() else []
        it = iter(got)
        return [next(it) if hit else None for hit in ok]

    def streams(self) -> list[str]:
        self._settle()
        return sorted(pc.unique(self._table.column("stream_id")).to_pylist())

    def stream_rows(self, stream_id: str) -> pa.Table:
        self._settle()
        t = self._table.filter(pc.equal(self._table.column("stream_id"), stream_id))
        return t.sort_by([("t_start", "ascending"), ("segment_index", "ascending")])

    # -- persistence -----------------------------------------------------------------
    def write(self, path: "os.PathLike[str] | str") -> None:
        pq.write_table(self.table, path, compression="zstd")

    @classmethod
    def read(cls, path: "os.PathLike[str] | str") -> "IdMap":
        return cls(pq.read_table(path, schema=ID_MAP_SCHEMA))
