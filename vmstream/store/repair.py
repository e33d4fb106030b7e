"""Checking a store and its run's Parquet results, and rebuilding the store from them.

The Parquet sink keeps every segment result with its embedding (OUT/segments), so a
damaged index never has to be deleted by hand: `rebuild_from_results` moves the store's
files aside (nothing is deleted) and builds a new generation from those rows, with the
damaged store's kind and options where its metadata passes its checksum (otherwise from
what the caller derives: the run's config, the defaults; the report says which).

The results are checked too (`verify_results`: each part against its table's
`_parts.json`), and never rebuilt from while damaged: `repair_results` first moves every
damaged or unrecorded part into OUT/damaged-<UTC time>/<table>/ and drops missing ones
from the record, naming each.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from vmstream.records import SegmentResult

from . import files
from .atomic import DirLock, fsync_dir, remove_stale_tmp
from .files import Problem, StoreCorruptError
from .parts_manifest import MANIFEST, PartManifest
from .results import TABLES, read_table
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


def verify_results(out_dir: PathLike) -> list[Problem]:
    """Every problem of the run's result tables under `out_dir` (files named relative to
    it). Tables of an older vmstream, without a part record, have nothing to check against."""
    from .parts_manifest import check_table

    out_dir = Path(out_dir)
    problems = []
    for table in TABLES:
        if (out_dir / table).is_dir():
            problems += check_table(out_dir / table)
    return problems


def repair_results(out_dir: PathLike) -> list[str]:
    """Move every damaged or unrecorded part of the result tables aside, drop missing
    ones from their records (under each table's writer lock); one line per part dealt with."""
    out_dir = Path(out_dir)
    said: list[str] = []
    folder = out_dir / f"damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    for table in TABLES:
        directory = out_dir / table
        if not directory.is_dir():
            continue
        lock = DirLock(directory, what="Parquet table").acquire()
        try:
            said += _repair_table(directory, folder / table)
        finally:
            lock.release()
    return said


def _repair_table(directory: Path, aside: Path) -> list[str]:
    remove_stale_tmp(directory)
    said = []

    def move(name: str, what: str) -> None:
        aside.mkdir(parents=True, exist_ok=True)
        os.replace(directory / name, aside / name)
        said.append(f"{directory / name}: {what}; moved to {aside}/")

    try:
        m = PartManifest.read(directory)
    except ValueError as e:
        # The record itself is damaged: which parts are ours cannot be told by it. Keep
        # the parts Parquet's own page checksums and footer still vouch for, re-recorded.
        move(MANIFEST, str(e))
        m = PartManifest(directory)
        good = {}
        for p in sorted(directory.iterdir()):
            if p.name in (".lock",) or p.name.startswith("."):
                continue
            try:
                good[p.name] = _read_whole(p)
            except Exception as err:  # noqa: BLE001 - any failure to read it back is damage
                move(p.name, f"cannot be read back as Parquet ({str(err).splitlines()[0][:160]})")
        m.adopt(good)
        m.write()
        said.append(f"{directory / MANIFEST}: rewritten from the {len(good)} parts that read back whole")
        return said
    if not m.exists:
        return said
    m.settle()
    for problem in m.check():
        name = problem.file
        if os.path.lexists(directory / name):
            move(name, problem.what)
        else:
            said.append(f"{directory / name}: {problem.what}; dropped from {MANIFEST}")
        m.parts.pop(name, None)
        m.pending.pop(name, None)
    m.write()
    if said:
        fsync_dir(directory)
    return said


def _read_whole(p: Path) -> int:
    import pyarrow.parquet as pq

    if not p.is_file() or p.is_symlink() or not p.name.endswith(".parquet"):
        raise ValueError("not a Parquet part")
    return pq.read_table(p, page_checksum_verification=True).num_rows


@dataclass(frozen=True)
class RebuildReport:
    vectors: int
    skipped: int  # rows without a usable embedding (none, NaN, another model)
    aside: Optional[Path]
    moved: list[str]
    notes: tuple[str, ...] = ()  # where the rebuilt store's options came from, when not its own metadata


def rebuild_from_results(
    store_dir: PathLike,
    segments_dir: PathLike,
    *,
    kind: Optional[str] = None,
    fallback: Optional[dict] = None,
    **store_options,
) -> RebuildReport:
    """A new store at `store_dir` from the segment results in `segments_dir`, the old
    files moved into `store_dir/damaged-<UTC time>/`. The damaged store's kind and
    options are kept where its metadata passes its checksum; otherwise `fallback`'s
    (the run's config: kind, metric) or the defaults, and the report's notes say so.
    `kind` overrides."""
    store_dir, segments_dir = Path(store_dir), Path(segments_dir)
    if not segments_dir.is_dir():
        raise FileNotFoundError(
            f"no Parquet results at {segments_dir} (the store is rebuilt from them; "
            "was the run made with output.parquet off?)"
        )
    table = read_table(segments_dir)  # before anything moves: unreadable results change nothing
    table = table.filter(table.column("embedding").is_valid())
    if table.num_rows == 0:
        raise ValueError(f"{segments_dir} holds no segment result with an embedding: nothing to rebuild from")
    old, source = files.salvage_meta(store_dir)
    notes: list[str] = []
    if old is None:
        old = {k: v for k, v in (fallback or {}).items() if v is not None}
        if store_dir.is_dir() and any(files.list_entries(store_dir)[0]):
            derived = ", ".join(f"{k} {old[k]}" for k in sorted(old)) or "nothing"
            notes.append(
                f"its metadata is not trusted ({source}): the rebuilt store takes {derived} from the "
                f"run's config, the defaults for the rest, and its dimension from the results"
            )
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
    return RebuildReport(n, skipped, aside if moved else None, moved, tuple(notes))


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


__all__ = ["RebuildReport", "StoreReport", "rebuild_from_results", "repair_results", "verify_results", "verify_store"]
