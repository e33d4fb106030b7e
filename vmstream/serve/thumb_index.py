"""Where each segment's captured thumbnail is: uid -> (part file, row group, row) over
the `thumbs` result table, rebuilt when the table's parts change, with a small LRU of
decoded row groups so a thumbnail is a dict lookup after the first of its group.

The table is read row group by row group, not through `read_table` (a large store's
JPEGs would not fit in memory), so each part is checked here the way `read_table`
checks it: its bytes against the table's record (`store.results.check_part`, once per
version of the file) and its pages against their checksums on every read. A damaged
part is left out with one warning naming it; its segments' thumbnails are then decoded
from the source, as for a store that captured none."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vmstream.store.parts_manifest import ResultsCorruptError
from vmstream.store.results import check_part, part_paths, read_row_group

log = logging.getLogger(__name__)


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
        self._checked: dict[str, tuple] = {}  # part name -> the stamp it was checked at
        self._warned: set[tuple] = set()

    def _listing(self) -> tuple:
        out = []
        try:
            paths = part_paths(self.directory)
        except OSError:
            return ()
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((path.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def __len__(self) -> int:
        return int(self._uids.size)

    def refresh(self) -> None:
        stamp = self._listing()
        if stamp == self._stamp:
            return
        files, uids, where = [], [], []
        for name, *part_stamp in stamp:  # name order is write order: a later part's row wins
            path = self.directory / name
            if not self._intact(path, tuple(part_stamp)):
                continue
            try:
                pf = pq.ParquetFile(path, page_checksum_verification=True)
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
            self._checked = {n: st for n, st in self._checked.items() if any(n == x[0] for x in stamp)}

    def _intact(self, path: Path, stamp: tuple) -> bool:
        """Whether the part matches the table's record; checked once per version of the
        file, twice before a mismatch is believed (a writer may be replacing it)."""
        if self._checked.get(path.name) == stamp:
            return True
        for attempt in range(2):
            try:
                problem = check_part(path)
            except OSError:
                return False  # compacted away while listing: the next refresh sees the merged part
            if problem is None:
                self._checked[path.name] = stamp
                return True
            if attempt == 0:
                time.sleep(0.05)
        if (path.name, stamp) not in self._warned:
            self._warned.add((path.name, stamp))
            log.warning(
                "thumbnails: %s: %s; its thumbnails are left out (decoded from the source instead)",
                path,
                problem.what,
            )
        return False

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
                    t = read_row_group(path, rg, columns=["uid", "jpeg"])
                    group = (t.column("uid").to_numpy(), t.column("jpeg").to_pylist())
                except ResultsCorruptError as e:
                    log.warning("thumbnails: %s", e)
                    with self._lock:  # index again: the part's bytes are checked and it is left out
                        self._checked.pop(path.name, None)
                        self._stamp = ()
                    group = None
                except (OSError, IndexError, pa.ArrowException):
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
