"""The store's files on disk, written crash-safely and read back verified.

    STORE/CURRENT                    the commit record: line 1 the generation's name, line 2
                                     a sealed JSON record {generation, log: [the change-log
                                     files in order, each with sha256, size, rows]}, and
                                     optionally `consumer`: what a Kafka indexer had consumed
                                     when it committed (its offsets, committed together with
                                     the changes they produced; see pipeline/indexer.py)
    STORE/gen-000042/index.faiss     the faiss index (absent while the store is empty)
    STORE/gen-000042/ids.parquet     the id map
    STORE/gen-000042/meta.json       kind, dimension, model, counts
    STORE/gen-000042/manifest.json   sealed: sha256 and size of each file above; written last
    STORE/wal-000042-000007.arrow    a change-log file of generation 42 (Arrow IPC)

"Sealed" JSON carries the sha256 of its own content, so a damaged record is told from
a valid one. Every file a record names is checked against it on open: a damaged,
truncated or missing file (a deleted log file included: CURRENT lists them all) is a
`StoreCorruptError` naming the file, never a store opened with part of its data.

Writes go aside and are renamed into place (`atomic`): a generation directory as a
whole, a log file, then CURRENT, which is the one commit point. A crash leaves CURRENT
naming complete files; what it does not name (a generation or log file written just
before the crash) is a leftover that the next writer removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vmstream.errors import UserError

from .atomic import atomic_path, fsync_dir, fsync_file, remove_quietly, write_bytes_atomic
from .idmap import ID_MAP_SCHEMA

PathLike = Union[str, os.PathLike]

STORE_FORMAT = 2
GEN_RE = re.compile(r"^gen-(\d{6,})$")
WAL_RE = re.compile(r"^wal-(\d{6,})-(\d{6,})\.arrow$")
GEN_FILES = ("index.faiss", "ids.parquet", "meta.json")
MANIFEST = "manifest.json"
CURRENT = "CURRENT"


def gen_name(generation: int) -> str:
    return f"gen-{generation:06d}"


def wal_name(generation: int, seq: int) -> str:
    return f"wal-{generation:06d}-{seq:06d}.arrow"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a store (`file` relative to the store)."""

    file: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what}"


class StoreCorruptError(UserError, ValueError):
    """A store's files are damaged or missing. A `UserError` (one line, no traceback):
    the message names the file, what is wrong with it, and the command that repairs it."""

    def __init__(self, store: PathLike, problems: list[Problem]):
        self.store = Path(store)
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(
            f"video store {self.store}: {problems[0]}{more}; `vmstream store repair {self.store}` "
            "rebuilds it from the run's Parquet results (the damaged files are kept aside)"
        )


# -- sealed JSON ------------------------------------------------------------------------
def _digest_of(record: dict) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()


def seal(record: dict) -> bytes:
    return json.dumps(dict(record, checksum=_digest_of(record)), indent=1, sort_keys=True).encode()


def unseal(data: bytes, keys: tuple[str, ...]) -> dict:
    """The record in `data`; ValueError saying what is wrong when it is not intact."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"damaged: not a valid record ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("checksum"), str):
        raise ValueError("damaged: not a valid record (no checksum)")
    claimed = record.pop("checksum")
    if _digest_of(record) != claimed:
        raise ValueError("damaged: its checksum does not match its content")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"record lacks {', '.join(missing)}")
    return record


def file_entry(path: Path) -> dict:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"sha256": h.hexdigest(), "size": size}


def bytes_entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def check_entry(found: dict, entry: dict, recorded_in: str) -> Optional[str]:
    """What is wrong with a file (its `file_entry`) against its record, or None."""
    if found["size"] != entry.get("size"):
        return f"is {found['size']} bytes, {recorded_in} records {entry.get('size')} (truncated, extended or replaced)"
    if found["sha256"] != entry.get("sha256"):
        return f"damaged: checksum mismatch ({recorded_in} records sha256 {str(entry.get('sha256'))[:12]}…)"
    return None


# -- the state on disk --------------------------------------------------------------------
@dataclass
class StoredState:
    """What CURRENT commits, read and verified: the generation's files, parsed, and the
    change-log tables to replay on it, in order."""

    generation: int
    meta: dict
    index: Optional[faiss.Index]
    ids: pa.Table
    logs: list[pa.Table]
    log_entries: list[dict]
    adopted: bool = False  # CURRENT was missing: an interrupted first save
    consumer: Optional[dict] = None  # the indexer's consumed offsets, committed with the data


@dataclass
class _Reading:
    path: Path
    problems: list[Problem] = field(default_factory=list)

    def bad(self, file: str, what: str) -> None:
        self.problems.append(Problem(file, what))

    def _file(self, rel: str, how):
        try:
            return how(self.path / rel)
        except FileNotFoundError:
            self.bad(rel, "missing")
        except OSError as e:
            self.bad(rel, f"cannot be read ({e.strerror or e})")
        return None

    def hash(self, rel: str) -> Optional[dict]:
        return self._file(rel, file_entry)

    def read(self, rel: str) -> Optional[bytes]:
        return self._file(rel, Path.read_bytes)


def list_entries(path: Path) -> tuple[list[str], list[str]]:
    """(generation directories, log files) in `path`, sorted by name."""
    gens, wals = [], []
    for p in path.iterdir():
        if GEN_RE.match(p.name) and p.is_dir():
            gens.append(p.name)
        elif WAL_RE.match(p.name):
            wals.append(p.name)
    return sorted(gens), sorted(wals)


def _commit_record(r: _Reading) -> Optional[dict]:
    """CURRENT's record; for a missing CURRENT, the record an interrupted first save
    implies (the first generation alone, no log), else a problem."""
    cur = r.path / CURRENT
    if not cur.exists():
        gens, wals = list_entries(r.path)
        if not gens and not wals:
            return None
        if gens == [gen_name(1)] and not wals:
            return {"generation": gens[0], "log": [], "adopted": True}
        r.bad(
            CURRENT,
            f"missing, but the store holds {', '.join(gens + wals[:3])}"
            f"{' ...' if len(wals) > 3 else ''} (CURRENT says which of them count)",
        )
        return None
    data = r.read(CURRENT)
    if data is None:
        return None
    if GEN_RE.match(data.decode("latin-1").strip()):
        r.bad(CURRENT, "written by an older vmstream (store format 1, without checksums)")
        return None
    head, _, body = data.partition(b"\n")
    try:
        record = unseal(body, ("format", "generation", "log"))
    except ValueError as e:
        r.bad(CURRENT, str(e))
        return None
    if record["format"] != STORE_FORMAT:
        r.bad(CURRENT, f"store format {record['format']}, this vmstream reads {STORE_FORMAT}")
        return None
    if not GEN_RE.match(str(record["generation"])) or head.decode("latin-1").strip() != record["generation"]:
        r.bad(CURRENT, f"names {head[:40]!r} on its first line, {record['generation']!r} in its record")
        return None
    return record


def _generation_files(r: _Reading, gen: str) -> dict[str, Optional[bytes]]:
    """The generation's files, each checked against its manifest (only intact ones;
    the index as None: read it from its path)."""
    if not (r.path / gen).is_dir():
        r.bad(gen, "missing (CURRENT names it)")
        return {}
    rel = f"{gen}/{MANIFEST}"
    data = r.read(rel)
    if data is None:
        return {}
    try:
        manifest = unseal(data, ("files",))
    except ValueError as e:
        r.bad(rel, str(e))
        return {}
    out = {}
    for name in GEN_FILES:
        entry = manifest["files"].get(name)
        if entry is None:
            if name != "index.faiss":  # the index exists once anything was added
                r.bad(rel, f"does not list {name}")
            continue
        if name == "index.faiss":  # the largest file: hashed as it streams, parsed from disk
            found, data = r.hash(f"{gen}/{name}"), None
        else:
            data = r.read(f"{gen}/{name}")
            found = None if data is None else bytes_entry(data)
        if found is None:
            continue
        wrong = check_entry(found, entry, rel)
        if wrong:
            r.bad(f"{gen}/{name}", wrong)
        else:
            out[name] = data
    return out


def _log_files(r: _Reading, generation: int, entries: list) -> list[bytes]:
    out = []
    for seq, entry in enumerate(entries):
        name = wal_name(generation, seq)
        if not isinstance(entry, dict) or entry.get("name") != name:
            r.bad(
                CURRENT,
                f"log record {seq} names {entry.get('name') if isinstance(entry, dict) else entry!r}, expected {name}",
            )
            continue
        if not (r.path / name).exists():
            r.bad(name, f"missing (CURRENT records {len(entries)} log files; this is number {seq})")
            continue
        data = r.read(name)
        if data is None:
            continue
        wrong = check_entry(bytes_entry(data), entry, CURRENT)
        if wrong:
            r.bad(name, wrong)
        else:
            out.append(data)
    return out


def _parse(r: _Reading, gen: str, files: dict[str, bytes], logs: list[bytes], record: dict) -> Optional[StoredState]:
    try:
        meta = json.loads(files["meta.json"])
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise ValueError(f"not store format {STORE_FORMAT}")
    except (ValueError, UnicodeDecodeError) as e:
        r.bad(f"{gen}/meta.json", f"not a store's metadata ({e})")
        return None
    try:
        ids = pq.read_table(pa.BufferReader(files["ids.parquet"]), schema=ID_MAP_SCHEMA)
    except Exception as e:  # noqa: BLE001 - any parse failure of a verified file is damage too
        r.bad(f"{gen}/ids.parquet", f"cannot be read as the id map ({type(e).__name__}: {e})")
        return None
    index = None
    if "index.faiss" in files:
        try:
            index = faiss.read_index(str(r.path / gen / "index.faiss"))
        except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError for any bad byte
            r.bad(f"{gen}/index.faiss", f"cannot be read as a faiss index ({str(e).splitlines()[0][:200]})")
            return None
    tables = []
    for entry, data in zip(record["log"], logs):
        try:
            tables.append(pa.ipc.open_file(pa.BufferReader(data)).read_all())
        except Exception as e:  # noqa: BLE001
            r.bad(entry["name"], f"cannot be read as a change log ({type(e).__name__}: {e})")
            return None
    consumer = record.get("consumer")
    if consumer is not None and not isinstance(consumer, dict):
        r.bad(CURRENT, "its consumer record is not an object")
        return None
    return StoredState(
        int(GEN_RE.match(gen).group(1)),
        meta,
        index,
        ids,
        tables,
        list(record["log"]),
        adopted=bool(record.get("adopted")),
        consumer=consumer,
    )


def read_state(path: Path) -> tuple[Optional[StoredState], list[Problem]]:
    """The committed state of the store at `path`, verified, with every problem found
    (the state is None where there are problems, or no store at all)."""
    r = _Reading(path)
    record = _commit_record(r) if path.is_dir() else None
    if record is None:
        return None, r.problems
    gen = record["generation"]
    generation = int(GEN_RE.match(gen).group(1))
    files = _generation_files(r, gen)
    if not isinstance(record["log"], list):
        r.bad(CURRENT, "its log record is not a list")
        return None, r.problems
    logs = _log_files(r, generation, record["log"])
    if r.problems:
        return None, r.problems
    state = _parse(r, gen, files, logs, record)
    return state, r.problems


# -- the change log's rows -------------------------------------------------------------
def log_table(op: str, uids: np.ndarray, x: Optional[np.ndarray], table: pa.Table, d: int) -> pa.Table:
    """Log rows for one change: the id-map columns, the op ("add" or "remove") and
    the unit vector (null for a removal)."""
    vec = (
        pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), d)
        if x is not None
        else pa.nulls(len(uids), pa.list_(pa.float32(), d))
    )
    return (
        table.select(list(ID_MAP_SCHEMA.names))
        .cast(ID_MAP_SCHEMA)
        .append_column("op", pa.array([op] * len(uids), pa.string()))
        .append_column("vector", vec)
    )


def log_runs(t: pa.Table):
    """(op, rows) for each run of consecutive rows of one op, in file order: a run is
    applied together."""
    ops = t.column("op").to_pylist()
    start = 0
    while start < t.num_rows:
        end = start
        while end < t.num_rows and ops[end] == ops[start]:
            end += 1
        yield ops[start], t.slice(start, end - start)
        start = end


# -- writing ----------------------------------------------------------------------------
def write_current(path: Path, generation: int, log_entries: list[dict], consumer: Optional[dict] = None) -> None:
    name = gen_name(generation)
    record = {"format": STORE_FORMAT, "generation": name, "log": log_entries}
    if consumer is not None:  # only a store an indexer writes has one
        record["consumer"] = consumer
    write_bytes_atomic(path / CURRENT, name.encode() + b"\n" + seal(record) + b"\n")


def write_generation(
    path: Path, generation: int, meta: dict, index: Optional[faiss.Index], ids, consumer: Optional[dict] = None
) -> None:
    """A complete generation directory (its manifest last), renamed into place; then
    CURRENT names it with an empty log. The caller removes what came before."""
    with atomic_path(path / gen_name(generation)) as tmp:
        tmp.mkdir()
        if index is not None:
            # Through Python's file: a failed write (a full disk) raises its OSError here,
            # instead of faiss printing its own "close error" line to stderr.
            with open(tmp / "index.faiss", "wb") as f:
                writer = faiss.PyCallbackIOWriter(f.write)
                faiss.write_index(index, writer)
                del writer
        ids.write(tmp / "ids.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        files = {name: file_entry(tmp / name) for name in GEN_FILES if (tmp / name).exists()}
        (tmp / MANIFEST).write_bytes(seal({"format": STORE_FORMAT, "files": files}))
    write_current(path, generation, [], consumer)


def write_log_file(path: Path, generation: int, seq: int, table: pa.Table) -> dict:
    """One change-log file, renamed into place; its record for CURRENT."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    name = wal_name(generation, seq)
    write_bytes_atomic(path / name, data)
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "rows": table.num_rows}


def remove_leftovers(path: Path, generation: int, log_entries: list[dict]) -> None:
    """Delete generations and log files CURRENT does not name: older ones a finished
    save replaced, or ones a crash left before CURRENT named them. Writer only."""
    keep = {gen_name(generation), *(e["name"] for e in log_entries)}
    gens, wals = list_entries(path)
    for name in gens + wals:
        if name not in keep:
            remove_quietly(path / name)


def move_aside(path: Path, folder: str) -> list[str]:
    """Move the store's generations and log files into `path/folder`, and a copy of
    CURRENT, deleting nothing; the names moved. CURRENT itself stays until the new
    generation replaces it: a crash before that leaves it naming files that are gone,
    a clear error, never an empty store taken for the real one. Writer only."""
    gens, wals = list_entries(path)
    names = ([CURRENT] if (path / CURRENT).exists() else []) + gens + wals
    if names:
        dest = path / folder
        dest.mkdir()
        for name in names:
            if name == CURRENT:
                shutil.copy2(path / name, dest / name)
                fsync_file(dest / name)
            else:
                os.replace(path / name, dest / name)
        fsync_dir(dest)
        fsync_dir(path)
    return names


def salvage_meta(path: Path) -> tuple[Optional[dict], str]:
    """The newest meta.json of any generation that its manifest vouches for (sealed
    manifest intact, meta.json's checksum matching), and where it came from; (None, why
    not) when there is none. A damaged store's kind and options for rebuilding it: a
    meta.json that fails its checksum is never trusted (a flipped byte in "metric" would
    make a store nothing can use)."""
    gens, _ = list_entries(path) if path.is_dir() else ([], [])
    why = "the store has no generation"
    for gen in reversed(gens):
        try:
            manifest = unseal((path / gen / MANIFEST).read_bytes(), ("files",))
            data = (path / gen / "meta.json").read_bytes()
        except (OSError, ValueError) as e:
            why = f"{gen}: {getattr(e, 'strerror', None) or e}"
            continue
        wrong = check_entry(bytes_entry(data), manifest["files"].get("meta.json") or {}, f"{gen}/{MANIFEST}")
        if wrong:
            why = f"{gen}/meta.json {wrong}"
            continue
        try:
            meta = json.loads(data)
        except ValueError as e:
            why = f"{gen}/meta.json: {e}"
            continue
        if isinstance(meta, dict):
            return meta, f"{gen}/meta.json"
    return None, why
