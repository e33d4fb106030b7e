"""A full disk under a run's output: one line saying what could not be written and where,
never a traceback.

Every writer of a run writes aside and renames (results parts, the store's log and
generations, snapshots: `vmstream.store.atomic`, `pipeline.snapshots`), and a snapshot is
saved only after every result before it is durable. So a write that fails for want of
space leaves what was there intact: the store verifies, and the same command, run again
once there is space, resumes each stream from its last snapshot (or starts it over,
replacing its rows) and gives every segment once.
"""

from __future__ import annotations

import errno
import os
from typing import Optional

from vmstream.errors import UserError

# Out of space, out of quota, or a file over the size limit the system allows.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(UserError):
    """The run's output could not be written for want of space (exit code 3)."""

    exit_code = 3

    def __init__(self, what: str, where: str, err: OSError):
        self.what, self.where, self.err = what, where, err
        # The system's words for the errno: pyarrow's OSError carries its own longer text.
        reason = os.strerror(err.errno) if err.errno else "No space left on device"
        super().__init__(
            f"{reason}: could not write {what} in {where}; "
            "what was written before is intact; free some space there and run the same command "
            "again: it resumes where this run stopped"
        )


def no_space(e: Optional[BaseException]) -> Optional[OSError]:
    """The out-of-space OSError behind `e` (itself, its cause or context), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e.err
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return e
        e = e.__cause__ or e.__context__
    return None


def disk_full(e: BaseException, what: str, default_where) -> Optional[DiskFullError]:
    """`e` as a DiskFullError naming `what` and its directory, if it is one; else None."""
    if isinstance(e, DiskFullError):
        return e
    err = no_space(e)
    if err is None:
        return None
    where = default_where
    if err.filename:
        where = os.path.dirname(os.fsdecode(err.filename)) or default_where
        while os.path.basename(str(where)).startswith(".tmp-"):  # a directory written aside
            where = os.path.dirname(str(where))
    return DiskFullError(what, str(where), err)


def sink_what(sink) -> tuple[str, object]:
    """(what a sink writes, where) for the message."""
    name = getattr(sink, "name", type(sink).__name__)
    if name == "parquet":
        return "Parquet results", getattr(sink, "out_dir", "?")
    if name == "faiss":
        store = getattr(sink, "store", None)
        return "the FAISS store", getattr(store, "path", "?")
    return f"the {name} sink's output", getattr(sink, "out_dir", None) or getattr(sink, "path", "?")
