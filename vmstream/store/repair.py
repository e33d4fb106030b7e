"""Checking a store and rebuilding it from a run's Parquet results.

The Parquet sink keeps every segment result with its embedding (OUT/segments), so a
damaged index never has to be deleted by hand: `rebuild_from_results` moves the store's
files aside (nothing is deleted) and builds a new generation from those rows, with the
damaged store's kind and options where its metadata can still be read.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from vmstream.records import SegmentResult

from .results import read_table
from . import files
from .files import Problem, StoreCorruptError
from .video_store import VideoStore

PathLike = Union[str, os.PathLike]

BATCH = 4096
_OPTIONS = ("kind", "train_at", "nlist", "pq_m", "hnsw_m", "metric")


@dataclass(frozen=True)
class StoreReport:
    """What `verify_store` found: the problems (none: sound) and, when sound, a summary."""

    problems: list[Problem]
    summary: str = ""

    @property
    def sound(self) -> bool:
        return not self.problems


def verify_store(path: PathLike) -> StoreReport:
    """Every problem of the store at `path`: each file against its checksum, then the
    whole read back (the log replayed, vectors against id-map rows)."""
    path = Path(path)
    state, problems = files.read_state(path)
    if problems:
        return StoreReport(problems)
    if state is None:
        return StoreReport([Problem(".", "no video store here (no CURRENT and no generation)")])
    try:
        store = VideoStore(path, readonly=True, use_gpu=False)
    except StoreCorruptError as e:
        return StoreReport(e.problems)
    name = files.gen_name(int(store.meta["generation"]))
    return StoreReport([], f"{name}, {len(store)} vectors of dimension {store.dim}, {store.log_files} log files")


@dataclass(frozen=True)
class RebuildReport:
    vectors: int
    skipped: int        # rows without a usable embedding (none, NaN, another model)
    aside: Optional[Path]
    moved: list[str]


def rebuild_from_results(store_dir: PathLike, segments_dir: PathLike, *, kind: Optional[str] = None,
                         **store_options) -> RebuildReport:
    """A new store at `store_dir` from the segment results in `segments_dir`, the old
    files moved into `store_dir/damaged-<UTC time>/`. The damaged store's kind and
    options are kept where its metadata is readable; `kind` overrides."""
    store_dir, segments_dir = Path(store_dir), Path(segments_dir)
    if not segments_dir.is_dir():
        raise FileNotFoundError(f"no Parquet results at {segments_dir} (the store is rebuilt from them; "
                                "was the run made with output.parquet off?)")
    table = read_table(segments_dir)  # before anything moves: unreadable results change nothing
    table = table.filter(table.column("embedding").is_valid())
    if table.num_rows == 0:
        raise ValueError(f"{segments_dir} holds no segment result with an embedding: nothing to rebuild from")
    old = files.salvage_meta(store_dir) or {}
    options = {k: old[k] for k in _OPTIONS if old.get(k) is not None}
    if kind is not None:
        options["kind"] = kind
    options.update(store_options)
    folder = f"damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    store = VideoStore(store_dir, set_aside=folder, **options)
    try:
        skipped = 0
        for i in range(0, table.num_rows, BATCH):
            skipped += _add_rows(store, table.slice(i, BATCH).to_pylist())
        n = len(store)
    finally:
        store.close()
    aside = store_dir / folder
    moved = sorted(p.name for p in aside.iterdir()) if aside.is_dir() else []
    return RebuildReport(n, skipped, aside if moved else None, moved)


def _add_rows(store: VideoStore, rows: list[dict]) -> int:
    """Add the rows the store accepts; the number refused."""
    results = [SegmentResult.from_row(r) for r in rows]
    try:
        store.add_results(results)
        return 0
    except ValueError:
        pass
    refused = 0
    for r in results:  # find the refused ones (a NaN, a zero vector, another model)
        try:
            store.add_results([r])
        except ValueError:
            refused += 1
    return refused


__all__ = ["RebuildReport", "StoreReport", "rebuild_from_results", "verify_store"]
