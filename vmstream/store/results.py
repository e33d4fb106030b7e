"""The store's result tables: segments, events, summaries and thumbs, each a directory of part files.

Layout under the sink's directory (every file readable by pandas/pyarrow/duckdb alone):

    OUT/segments/part-000000012-1a2b3c.parquet   one row per segment, SEGMENT_SCHEMA
    OUT/events/part-*.parquet                    gaps, errors, ends, EVENT_SCHEMA
    OUT/summaries/part-*.parquet                 one row per finished stream, SUMMARY_SCHEMA
    OUT/thumbs/part-*.parquet                    one small JPEG per segment, THUMB_SCHEMA

    pandas.read_parquet("OUT/segments")   or   duckdb: SELECT * FROM 'OUT/segments/*.parquet'

Why a directory of parts: a Parquet file is unreadable until its footer is written, so
one growing file would lose everything in a crash. Here every row group is its own small
file, written aside and renamed into place when it closes (`flush`, every
`row_group_rows` rows, or `max_delay_s` after its first row so a slow live stream does
not hold rows for long). A crash (even SIGKILL) loses at most the open row group.

Upsert: a resumed run produces the segments since its last snapshot again, with the
same `uid`. Parts are immutable and numbered in write order; compaction keeps the
newest row of every key (segments: `uid`; summaries: `stream_id`; events: the whole
row) and merges small parts into one file. It runs on open (cleaning up after a crash)
and on close, so after close there are no duplicate keys; during a run, whenever
`max_small_parts` flushed parts have piled up, they alone are merged. Until close a
plain reader may see both the old and the new row of a re-produced segment;
`read_table` de-duplicates at read time.

Readers of a growing directory never fail: a plain `pandas.read_parquet(OUT/segments)`
lists the parts, then opens them, and a part deleted in between would be a
FileNotFoundError. So compaction removes no name a reader may have listed: the merged
rows replace the newest of the merged parts under its own name (an atomic rename: a
reader that opened the old file keeps reading it), and the other inputs are replaced
by empty parts (the schema, no rows), deleted only `stub_grace_s` seconds later, by a
later compaction or the next open. A reader that opens the parts in name order (pyarrow
and `read_table` do) never misses a row: the merged part sorts last among its inputs
and is replaced before any of them is emptied; it may see a merged row twice for that
moment, as it may see a re-produced segment twice until close.

Compaction is crash-safe: the merged file is renamed into place (under the highest part
number of its inputs, so its rows win: they are the newest of their keys) before the
other inputs are emptied; a crash between the two leaves duplicates of identical rows,
which the next open removes.

One writer per directory (an flock; the kernel releases it if the writer dies).

Integrity: every part is written with Parquet page checksums (checked on every read
here) and recorded with its sha256, size and rows in the directory's `_parts.json`
(`parts_manifest`), written before each rename or removal. The writer checks every part
against it on open: a damaged, missing or unrecorded part is a `ResultsCorruptError`
(one line naming it), never read into a compaction or a run. A directory of an older
vmstream (no record) has its parts recorded as they are on first open.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vmstream.records import EVENT_SCHEMA, SEGMENT_SCHEMA, SUMMARY_SCHEMA, THUMB_SCHEMA

from .atomic import DirLock, fsync_dir, fsync_file, remove_quietly, remove_stale_tmp, tmp_path_for
from .files import Problem, file_entry
from .parts_manifest import MANIFEST, PartManifest, ResultsCorruptError

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Table name -> (schema, key columns; None = the whole row).
TABLES: dict[str, tuple[pa.Schema, Optional[tuple[str, ...]]]] = {
    "segments": (SEGMENT_SCHEMA, ("uid",)),
    "events": (EVENT_SCHEMA, None),
    "summaries": (SUMMARY_SCHEMA, ("stream_id",)),
    "thumbs": (THUMB_SCHEMA, ("uid",)),
}

_PART_RE = re.compile(r"^part-(\d{9})-([0-9a-f]+)\.parquet$")


@dataclass(frozen=True)
class _Part:
    seq: int
    path: Path
    num_rows: int


def _list_parts(directory: Path, cache: Optional[dict] = None) -> list[_Part]:
    """The parts in write order. `cache` (the writer's: name -> (stat key, rows)) saves
    reading the footer of a part that has not changed since the last listing."""
    parts = []
    for p in part_paths(directory):
        if cache is None:
            rows = _num_rows(p)
        else:
            st = p.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            hit = cache.get(p.name)
            if hit is None or hit[0] != stamp:
                hit = cache[p.name] = (stamp, _num_rows(p))
            rows = hit[1]
        parts.append(_Part(int(_PART_RE.match(p.name).group(1)), p, rows))
    if cache is not None and len(cache) > 2 * len(parts) + 16:
        names = {part.path.name for part in parts}
        for name in [n for n in cache if n not in names]:
            del cache[name]
    return sorted(parts, key=lambda part: (part.seq, part.path.name))


def _num_rows(p: Path) -> int:
    try:
        return pq.ParquetFile(p).metadata.num_rows
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged footer: pyarrow raises several kinds
        raise ResultsCorruptError(p.parent, [Problem(p.name, _unreadable(e))]) from None


def _read_columns(p: Path, columns: Optional[list[str]]) -> pa.Table:
    try:
        return pq.read_table(p, columns=columns, page_checksum_verification=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged page: pyarrow raises several kinds
        raise ResultsCorruptError(p.parent, [Problem(p.name, _unreadable(e))]) from None


def _keys_of(table: pa.Table, key: Optional[tuple[str, ...]]) -> Sequence:
    """Hashable per-row keys, or an int64 array when the key is one integer column."""
    cols = key or tuple(table.column_names)
    if len(cols) == 1 and pa.types.is_integer(table.schema.field(cols[0]).type):
        return table.column(cols[0]).to_numpy()

    def norm(v):
        # NaN != NaN would make two identical event rows look different; lists are
        # unhashable.
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, list):
            return tuple(norm(x) for x in v)
        return v

    columns = [[norm(v) for v in table.column(c).to_pylist()] for c in cols]
    return list(zip(*columns))


def newest_mask(keys: Sequence) -> np.ndarray:
    """True for the last occurrence of every key (rows are in write order)."""
    n = len(keys)
    keep = np.zeros(n, dtype=bool)
    if isinstance(keys, np.ndarray):
        rev = keys[::-1]
        _, first_in_rev = np.unique(rev, return_index=True)
        keep[n - 1 - first_in_rev] = True
    else:
        last: dict = {}
        for i, k in enumerate(keys):
            last[k] = i
        keep[list(last.values())] = True
    return keep


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`: columns an older schema lacked (stream_version) as nulls."""
    if table.schema.equals(schema, check_metadata=False):
        return table.replace_schema_metadata(schema.metadata)
    cols = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


class PartTable:
    """One table kept as a directory of immutable Parquet parts (see module docstring)."""

    def __init__(
        self,
        directory: PathLike,
        schema: pa.Schema,
        key: Optional[tuple[str, ...]],
        *,
        row_group_rows: int = 512,
        max_delay_s: Optional[float] = 30.0,
        target_file_rows: int = 100_000,
        max_small_parts: int = 64,
        compression: str = "zstd",
        stub_grace_s: float = 60.0,
    ):
        if row_group_rows < 1:
            raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
        self.directory = Path(directory)
        self.schema = schema
        self.key = key
        self.row_group_rows = int(row_group_rows)
        self.max_delay_s = max_delay_s
        self.target_file_rows = int(target_file_rows)
        self.max_small_parts = int(max_small_parts)
        self.compression = compression
        # How long an emptied (compacted-away) part stays for readers that listed it.
        self.stub_grace_s = float(stub_grace_s)
        self._token = uuid.uuid4().hex[:6]
        self._buffer: list[pa.RecordBatch] = []
        self._buffer_since: float = 0.0
        self._parts_cache: dict = {}
        self._lock = DirLock(self.directory, what="Parquet table").acquire()
        self._closed = False
        try:
            remove_stale_tmp(self.directory)
            self._manifest = self._open_manifest()
            parts = _list_parts(self.directory, self._parts_cache)
            self._next_seq = (parts[-1].seq + 1) if parts else 0
            self.compact()
        except BaseException:
            self._lock.release()
            raise

    def _open_manifest(self) -> PartManifest:
        """The directory's part record, with what a crash left pending settled, every
        part checked against it (ResultsCorruptError for the first problem)."""
        try:
            m = PartManifest.read(self.directory)
        except ValueError as e:
            raise ResultsCorruptError(self.directory, [Problem(MANIFEST, str(e))]) from None
        if not m.exists:
            found = {}
            for name in sorted(p.name for p in self.directory.iterdir() if _PART_RE.match(p.name)):
                try:
                    found[name] = pq.ParquetFile(self.directory / name).metadata.num_rows
                except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for bad bytes
                    raise ResultsCorruptError(self.directory, [Problem(name, _unreadable(e))]) from None
            m.adopt(found)
            if found:
                log.info(
                    "%s: recorded its %d parts (written by an older vmstream) in %s",
                    self.directory,
                    len(found),
                    MANIFEST,
                )
            m.write()
            return m
        if m.settle():
            m.write()
        problems = m.check()
        if problems:
            raise ResultsCorruptError(self.directory, problems)
        return m

    # -- writing -------------------------------------------------------------------
    def append(self, row: dict, what: str = "row") -> None:
        if self._closed:
            raise RuntimeError(f"{self.directory} is closed; cannot append {what}")
        try:
            batch = pa.RecordBatch.from_pylist([row], schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise ValueError(f"{what} does not fit the schema of {self.directory.name}: {e}") from e
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.append(batch)
        if len(self._buffer) >= self.row_group_rows or (
            self.max_delay_s is not None and time.monotonic() - self._buffer_since >= self.max_delay_s
        ):
            self.flush()

    @property
    def buffered_rows(self) -> int:
        return len(self._buffer)

    def flush(self) -> None:
        """Close the open row group: write it as a new part (durable on return)."""
        if not self._buffer:
            return
        table = pa.Table.from_batches(self._buffer, schema=self.schema).combine_chunks()
        self._write_part(table)
        self._buffer = []
        if self._fresh_part_count() >= self.max_small_parts:
            self.compact(full=False)

    def _new_part_path(self) -> Path:
        seq = self._next_seq
        self._next_seq += 1
        return self.directory / f"part-{seq:09d}-{self._token}.parquet"

    def _write_part(self, table: pa.Table) -> Path:
        final = self._new_part_path()
        tmp = tmp_path_for(final)
        try:
            pq.write_table(
                table, tmp, row_group_size=self.row_group_rows, compression=self.compression, write_page_checksum=True
            )
            self._put([(tmp, final, table.num_rows)])
        except BaseException:
            remove_quietly(tmp)
            raise
        return final

    def _put(self, items: list[tuple[Path, Path, int]]) -> None:
        """Rename written temporaries onto their parts: the record names them first (see
        parts_manifest), so a crash anywhere leaves every file accounted for."""
        for tmp, final, rows in items:
            fsync_file(tmp)
            self._manifest.intend_put(final.name, dict(file_entry(tmp), rows=rows))
        try:
            self._manifest.write()
        except BaseException:
            for _, final, _ in items:
                self._manifest.forget(final.name)
            raise
        for tmp, final, _ in items:
            os.replace(tmp, final)
            self._manifest.done(final.name)
        fsync_dir(self.directory)

    def _fresh_part_count(self) -> int:
        return sum(1 for p in _list_parts(self.directory, self._parts_cache) if 0 < p.num_rows <= self.row_group_rows)

    # -- compaction ------------------------------------------------------------------
    def drop_stream(self, stream_id: str) -> bool:
        """Remove every row of `stream_id` (a stream that starts over replaces its old
        rows), by a full compaction that leaves them out; buffered rows are written first."""
        self.flush()
        return self.compact(drop_stream=stream_id)

    def compact(self, full: bool = True, *, drop_stream: Optional[str] = None) -> bool:
        """De-duplicate keys (newest wins) and merge small parts. Returns True if it
        rewrote anything. Buffered rows are not included; `flush` first for that.

        `full=False` (during a run) merges only parts of at most one row group, the
        flushes since the last merge, so a long run neither piles up files nor rewrites
        its big parts again and again; stale rows in big parts wait for the full
        compaction at close (or open). Either way the merged rows are the newest of
        their keys, so the merged part's higher number keeps the order right."""
        parts = _list_parts(self.directory, self._parts_cache)
        if not parts:
            return False
        try:
            return self._compact(parts, full, drop_stream)
        finally:
            self._remove_old_stubs()

    def _compact(self, parts: list[_Part], full: bool, drop_stream: Optional[str]) -> bool:
        key_cols = list(self.key) if self.key else None
        read_cols = key_cols if key_cols is None or drop_stream is None else sorted({*key_cols, "stream_id"})
        # Emptied parts (kept for readers that may have listed them) are read as empty.
        key_tables = [
            _read_columns(p.path, read_cols)
            if p.num_rows
            else self.schema.empty_table().select(read_cols or self.schema.names)
            for p in parts
        ]
        keys_per_part = [_keys_of(t, self.key) for t in key_tables]
        if keys_per_part and isinstance(keys_per_part[0], np.ndarray):
            all_keys: Sequence = np.concatenate(keys_per_part)
        else:
            all_keys = [k for ks in keys_per_part for k in ks]
        keep = newest_mask(all_keys)
        if drop_stream is not None:
            # Every key's newest row only is kept, so dropping it drops the key's older copies too.
            sids = np.concatenate([np.asarray(t.column("stream_id").to_pylist(), dtype=object) for t in key_tables])
            ours = sids == drop_stream
            if not ours.any():
                return False
            keep &= ~ours
        masks, start = [], 0
        for p in parts:
            masks.append(keep[start : start + p.num_rows])
            start += p.num_rows

        # Emptied parts (num_rows 0) have nothing to merge; they wait for their grace.
        if full:
            dirty = [i for i, m in enumerate(masks) if not m.all()]
            small = [i for i, p in enumerate(parts) if 0 < p.num_rows < self.target_file_rows]
        else:
            small = [i for i, p in enumerate(parts) if 0 < p.num_rows <= self.row_group_rows]
            dirty = [i for i in small if not masks[i].all()]
        chosen = sorted(set(dirty) | (set(small) if (dirty or len(small) >= 2) else set()))
        if not chosen:
            return False
        if len(chosen) == 1 and not dirty:
            return False

        # The merged rows take the place of the newest input (see the module doc).
        out = parts[chosen[-1]].path
        kept_rows = 0
        tmps = [tmp_path_for(out)]
        try:
            with pq.ParquetWriter(
                tmps[0], self.schema, compression=self.compression, write_page_checksum=True
            ) as writer:
                for i in chosen:
                    pf = pq.ParquetFile(parts[i].path, page_checksum_verification=True)
                    offset = 0
                    for batch in pf.iter_batches(batch_size=max(self.row_group_rows, 4096)):
                        m = masks[i][offset : offset + batch.num_rows]
                        offset += batch.num_rows
                        if not m.all():
                            batch = batch.filter(pa.array(m))
                        if batch.num_rows:
                            writer.write_table(
                                _conform(pa.Table.from_batches([batch]), self.schema),
                                row_group_size=self.row_group_rows,
                            )
                            kept_rows += batch.num_rows
            items = [(tmps[0], out, kept_rows)]
            # The other inputs are emptied in place: readers that listed them read no rows.
            for i in chosen[:-1]:
                tmps.append(tmp_path_for(parts[i].path))
                pq.write_table(
                    self.schema.empty_table(), tmps[-1], compression=self.compression, write_page_checksum=True
                )
                items.append((tmps[-1], parts[i].path, 0))
            self._put(items)  # the merged part first: the stubs follow it (module doc)
        except BaseException:
            for t in tmps:
                remove_quietly(t)
            raise
        log.debug("compacted %d parts of %s into %s (%d rows kept)", len(chosen), self.directory, out.name, kept_rows)
        return True

    def _remove_old_stubs(self) -> None:
        """Delete emptied parts older than the grace period; one file always stays, so
        the table keeps its schema."""
        parts = _list_parts(self.directory, self._parts_cache)
        stubs = [p for p in parts if p.num_rows == 0]
        if len(stubs) == len(parts):
            stubs = stubs[:-1]
        now = time.time()
        old = []
        for p in stubs:
            try:
                if now - p.path.stat().st_mtime >= self.stub_grace_s:
                    old.append(p)
            except FileNotFoundError:
                pass
        if not old:
            return
        for p in old:
            self._manifest.intend_delete(p.path.name)
        self._manifest.write()
        for p in old:
            p.path.unlink(missing_ok=True)
            self._manifest.done(p.path.name)
        fsync_dir(self.directory)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
            self.compact()
            if not _list_parts(self.directory, self._parts_cache):
                # An empty run still leaves a readable table with the schema.
                self._write_part(self.schema.empty_table())
            if self._manifest.stale:
                self._manifest.write()
        finally:
            self._closed = True
            self._lock.release()


def read_table(directory: PathLike, table: Optional[str] = None) -> pa.Table:
    """Read a part directory, de-duplicated (newest row per key), in write order.

    `directory` is a table directory (OUT/segments) or, with `table`, the sink's OUT.
    Safe while a writer is running: it only reads complete, renamed parts.
    """
    directory = Path(directory)
    name = table or directory.name
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r} (expected one of {sorted(TABLES)})")
    if table:
        directory = directory / table
    schema, key = TABLES[name]
    for attempt in range(5):
        try:
            parts = _list_parts(directory)
            if not parts:
                return schema.empty_table()
            record = _record_of(directory)
            t = pa.concat_tables([_read_part(p.path, schema, record, last_try=attempt == 4) for p in parts])
            return t.filter(pa.array(newest_mask(_keys_of(t, key))))
        except (FileNotFoundError, _Moved):
            # A running writer compacted a part away (or rewrote it) between listing and
            # reading; its rows are in the merged part now. List again.
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class _Moved(Exception):
    """A part is not what the record says, maybe because a writer is changing both."""


def _record_of(directory: Path) -> Optional[PartManifest]:
    try:
        record = PartManifest.read(directory)
    except ValueError as e:
        raise ResultsCorruptError(directory, [Problem(MANIFEST, str(e))]) from None
    return record if record.exists else None


def _read_part(
    path: Path, schema: pa.Schema, record: Optional[PartManifest] = None, *, last_try: bool = True
) -> pa.Table:
    """One part, its bytes checked against the table's record (when it has one) and its
    pages against their checksums: the bytes checked are the bytes parsed."""
    data = path.read_bytes()
    what = _mismatch(path.name, data, record)
    if what is not None:
        if not last_try:
            raise _Moved(path.name)
        raise ResultsCorruptError(path.parent, [Problem(path.name, what)])
    try:
        return pq.read_table(pa.BufferReader(data), schema=schema, page_checksum_verification=True)
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ... for bad bytes
        raise ResultsCorruptError(path.parent, [Problem(path.name, _unreadable(e))]) from None


def _mismatch(name: str, data: bytes, record: Optional[PartManifest]) -> Optional[str]:
    """None when `data` is what the table's record holds for part `name` (or the table
    has no record), else what is wrong with it."""
    if record is None:
        return None
    found = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    want = [e for e in (record.parts.get(name), record.pending.get(name)) if e is not None]
    if any(found["sha256"] == e["sha256"] and found["size"] == e["size"] for e in want):
        return None
    return ("not recorded in " + MANIFEST) if not want else f"damaged: checksum mismatch ({MANIFEST})"


def part_paths(directory: PathLike) -> list[Path]:
    """A table directory's part files in write order (their footers not read)."""
    directory = Path(directory)
    found = []
    for p in directory.iterdir() if directory.is_dir() else ():
        m = _PART_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p.name, p))
    return [p for *_, p in sorted(found)]


def check_part(path: PathLike) -> Optional[Problem]:
    """None when the part at `path` matches its table's record (`_parts.json`) and its
    footer reads, else the Problem naming it: for readers that read a table piecewise,
    row group by row group (`read_row_group`), instead of through `read_table`. A part
    that a running writer is replacing may fail once: check again before believing it."""
    path = Path(path)
    try:
        record = _record_of(path.parent)
    except ResultsCorruptError as e:
        return e.problems[0]
    data = path.read_bytes()
    what = _mismatch(path.name, data, record)
    if what is None:
        try:
            pq.ParquetFile(pa.BufferReader(data))
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for bad bytes
            what = _unreadable(e)
    return None if what is None else Problem(path.name, what)


def read_row_group(path: PathLike, index: int, columns: Optional[list[str]] = None) -> pa.Table:
    """One row group of a part, its pages checked against their checksums (the whole
    part's bytes are checked by `check_part`). ResultsCorruptError when a page is damaged."""
    path = Path(path)
    try:
        return pq.ParquetFile(path, page_checksum_verification=True).read_row_group(index, columns=columns)
    except (FileNotFoundError, IndexError):
        raise
    except Exception as e:  # noqa: BLE001
        raise ResultsCorruptError(path.parent, [Problem(path.name, _unreadable(e))]) from None


def _unreadable(e: BaseException) -> str:
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return f"damaged: cannot be read as Parquet ({first})"
