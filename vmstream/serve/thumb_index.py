"""Where each segment's captured thumbnail is: uid -> (part file, row group, row) over
the `thumbs` result table, rebuilt when the table's parts change, with a small LRU of
decoded row groups so a thumbnail is a dict lookup after the first of its group."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class ThumbIndex:
    def __init__(self, directory: Path, cached_groups: int = 32):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._files: list[Path] = []
        self._uids = np.empty(0, np.int64)
        self._where = np.empty((0, 3), np.int64)  # file, row group, row (sorted by uid)
        self._cache: OrderedDict = OrderedDict()
        self._cached_groups = int(cached_groups)

    def _listing(self) -> tuple:
        out = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return ()
        for n in names:
            if n.startswith("part-") and n.endswith(".parquet"):
                try:
                    st = os.stat(self.directory / n)
                except OSError:
                    continue
                out.append((n, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sorted(out))

    def __len__(self) -> int:
        return int(self._uids.size)

    def refresh(self) -> None:
        stamp = self._listing()
        if stamp == self._stamp:
            return
        files, uids, where = [], [], []
        for name, *_ in stamp:  # name order is write order: a later part's row wins
            path = self.directory / name
            try:
                pf = pq.ParquetFile(path)
                fi = len(files)
                for rg in range(pf.num_row_groups):
                    u = pf.read_row_group(rg, columns=["uid"]).column("uid").to_numpy()
                    uids.append(u)
                    where.append(np.stack([np.full(u.size, fi), np.full(u.size, rg), np.arange(u.size)], 1))
                files.append(path)
            except (OSError, pa.ArrowException):
                continue  # a part compacted away while listing: the next refresh sees the merged one
        if uids:
            u = np.concatenate(uids)
            w = np.concatenate(where).astype(np.int64)
            last = u.size - 1 - np.unique(u[::-1], return_index=True)[1]  # newest row per uid
            order = last[np.argsort(u[last], kind="stable")]
            u, w = u[order], w[order]
        else:
            u, w = np.empty(0, np.int64), np.empty((0, 3), np.int64)
        with self._lock:
            self._stamp, self._files, self._uids, self._where = stamp, files, u, w
            self._cache.clear()

    def get(self, uid: int) -> bytes | None:
        """The JPEG of `uid`, or None when none was captured."""
        for _attempt in range(2):
            with self._lock:
                i = int(np.searchsorted(self._uids, uid))
                if i >= self._uids.size or self._uids[i] != uid:
                    return None
                fi, rg, row = (int(x) for x in self._where[i])
                path = self._files[fi]
                group = self._cache.get((path, rg))
                if group is not None:
                    self._cache.move_to_end((path, rg))
            if group is None:
                try:
                    t = pq.ParquetFile(path).read_row_group(rg, columns=["uid", "jpeg"])
                    group = (t.column("uid").to_numpy(), t.column("jpeg").to_pylist())
                except (OSError, pa.ArrowException):
                    group = None
                if group is not None:
                    with self._lock:
                        self._cache[(path, rg)] = group
                        while len(self._cache) > self._cached_groups:
                            self._cache.popitem(last=False)
            if group is not None and row < group[0].size and int(group[0][row]) == uid:
                return group[1][row]
            self.refresh()  # the part changed under us (compaction): index it again
        return None
