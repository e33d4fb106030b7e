"""Which part files a result table holds, each with its checksum: the table's commit record.

    OUT/segments/_parts.json     sealed JSON: {format, parts: {name: {sha256, size, rows}},
                                 pending: {name: {op: "put" | "delete", sha256, size, rows}}}

A result table (`results.PartTable`) is written by the Parquet sink on its own schedule
(a part per row group, compactions that rewrite parts), not at the FAISS store's commits,
and a run may have Parquet without a store; so each table directory keeps its own record,
beside its parts. Names starting with "_" are skipped by pyarrow, pandas and duckdb
globs, so plain readers of the directory never see it.

Crash safety. The record names a change before it happens: a part about to be written
or replaced ("put") or removed ("delete") is listed under `pending` with what it will
hold, and the record is written (atomically) before the rename or unlink. So whatever a
kill -9 interrupts, every file in the directory is either in `parts` or in `pending`
with its old or its new content, and the next writer settles the pending entries by
what it finds. A part renamed into place moves from `pending` to `parts` at the next
write of the record (the writer knows its own renames; no rehash).

What the record catches (each a `Problem` naming the file): a part whose bytes changed
(a flipped bit, truncation), a part missing, a part no record names (another run's or
table's file dropped in), the record itself damaged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from vmstream.errors import UserError

from .atomic import write_bytes_atomic
from .files import Problem, file_entry, seal, unseal

PathLike = Union[str, os.PathLike]

MANIFEST = "_parts.json"
FORMAT = 1
# Files a table directory may hold besides its parts: the writer's lock, temporaries.
_OURS = (MANIFEST, ".lock")


class ResultsCorruptError(UserError, ValueError):
    """A result table's files are damaged, missing or not its own: one line naming the
    first, with the command that sets them aside."""

    def __init__(self, directory: PathLike, problems: list[Problem]):
        self.directory = Path(directory)
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        out = self.directory.parent
        super().__init__(
            f"Parquet results {self.directory / problems[0].file}: {problems[0].what}{more}; "
            f"`vmstream store repair {out}` moves such parts aside and rebuilds the store from the rest"
        )


def _entry(e: dict) -> dict:
    return {"sha256": e["sha256"], "size": int(e["size"]), "rows": int(e.get("rows", 0))}


class PartManifest:
    """The record of one table directory (see the module doc)."""

    def __init__(
        self, directory: PathLike, parts: Optional[dict] = None, pending: Optional[dict] = None, *, exists: bool = False
    ):
        self.directory = Path(directory)
        self.parts: dict[str, dict] = dict(parts or {})
        self.pending: dict[str, dict] = dict(pending or {})
        self.exists = exists  # False: a directory of an older vmstream, without a record
        self.stale = False  # changes done since the record was last written

    # -- reading -----------------------------------------------------------------------
    @classmethod
    def read(cls, directory: PathLike) -> "PartManifest":
        """The directory's record (an empty one if there is none); ValueError saying what
        is wrong when it is damaged."""
        directory = Path(directory)
        try:
            data = (directory / MANIFEST).read_bytes()
        except FileNotFoundError:
            return cls(directory)
        record = unseal(data, ("format", "parts", "pending"))
        if record["format"] != FORMAT:
            raise ValueError(f"part record format {record['format']}, this vmstream reads {FORMAT}")
        if not isinstance(record["parts"], dict) or not isinstance(record["pending"], dict):
            raise ValueError("damaged: not a part record")
        return cls(directory, record["parts"], record["pending"], exists=True)

    # -- writing (the table's one writer, under its lock) --------------------------------
    def write(self) -> None:
        write_bytes_atomic(
            self.directory / MANIFEST, seal({"format": FORMAT, "parts": self.parts, "pending": self.pending})
        )
        self.exists = True
        self.stale = False

    def intend_put(self, name: str, entry: dict) -> None:
        self.pending[name] = dict(_entry(entry), op="put")

    def forget(self, name: str) -> None:
        """A change intended but never made (its write failed before the record was)."""
        self.pending.pop(name, None)

    def intend_delete(self, name: str) -> None:
        old = self.parts.get(name)
        if old is not None:
            self.pending[name] = dict(old, op="delete")

    def done(self, name: str) -> None:
        """The pending change of `name` happened (the rename or unlink returned)."""
        e = self.pending.pop(name, None)
        if e is None:
            return
        self.stale = True
        if e["op"] == "put":
            self.parts[name] = _entry(e)
        else:
            self.parts.pop(name, None)

    def adopt(self, names_rows: dict[str, int]) -> None:
        """Record the parts of a directory written before records existed, as they are."""
        for name, rows in names_rows.items():
            self.parts[name] = dict(file_entry(self.directory / name), rows=int(rows))

    def settle(self) -> bool:
        """Resolve what a crash left pending, by what the files hold now. True if the
        record changed (write it)."""
        changed = bool(self.pending)
        for name, e in list(self.pending.items()):
            p = self.directory / name
            found = _found(p)
            old = self.parts.get(name)
            if e["op"] == "put":
                if found is not None and _same(found, e):
                    self.parts[name] = _entry(e)
                # else: not renamed (the old content, or nothing): the old record stands
            else:
                if found is None or _same(found, e) or (old is not None and _same(found, old)):
                    if found is not None:
                        p.unlink()
                    self.parts.pop(name, None)
            del self.pending[name]
        return changed

    # -- checking ------------------------------------------------------------------------
    def check(self, table: str = "") -> list[Problem]:
        """Every file of the directory against the record (pending changes accepted in
        either state: a writer may be at work). Problems name files as `table/name`."""
        prefix = f"{table}/" if table else ""
        problems = []
        on_disk = set()
        for p in sorted(self.directory.iterdir()) if self.directory.is_dir() else ():
            name = p.name
            if name in _OURS or name.startswith((".", "_")):
                continue  # hidden from every reader of the directory (temporaries, the lock)
            on_disk.add(name)
            if name not in self.parts and name not in self.pending:
                what = "a directory" if p.is_dir() else "a file"
                problems.append(
                    Problem(
                        prefix + name,
                        f"{what} that {MANIFEST} does not record (not a part "
                        "of these results; readers of the directory would read it)",
                    )
                )
                continue
            if not p.is_file() or p.is_symlink():
                problems.append(Problem(prefix + name, "not a regular file"))
                continue
            try:
                found = file_entry(p)
            except OSError as e:
                problems.append(Problem(prefix + name, f"cannot be read ({e.strerror or e})"))
                continue
            want = [e for e in (self.parts.get(name), self.pending.get(name)) if e is not None]
            if not any(_same(found, e) for e in want):
                e = want[0]
                if found["size"] != e["size"]:
                    what = f"is {found['size']} bytes, {MANIFEST} records {e['size']} (truncated, extended or replaced)"
                else:
                    what = f"damaged: checksum mismatch ({MANIFEST} records sha256 {e['sha256'][:12]}…)"
                problems.append(Problem(prefix + name, what))
        for name, e in self.parts.items():
            if name not in on_disk and self.pending.get(name, {}).get("op") != "delete":
                problems.append(Problem(prefix + name, f"missing ({MANIFEST} records it, {e.get('rows', '?')} rows)"))
        return problems


def _found(p: Path) -> Optional[dict]:
    try:
        return file_entry(p) if p.is_file() else None
    except FileNotFoundError:
        return None


def _same(found: dict, entry: dict) -> bool:
    return found["size"] == entry.get("size") and found["sha256"] == entry.get("sha256")


def check_table(directory: PathLike) -> list[Problem]:
    """The problems of one table directory (its record damaged, or its files against it)."""
    directory = Path(directory)
    try:
        manifest = PartManifest.read(directory)
    except ValueError as e:
        return [Problem(f"{directory.name}/{MANIFEST}", str(e))]
    if not manifest.exists:
        return []  # written by an older vmstream: nothing to check against
    return manifest.check(directory.name)


__all__ = ["MANIFEST", "PartManifest", "ResultsCorruptError", "check_table"]
