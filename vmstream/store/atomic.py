"""Crash-safe file updates for the sinks: write aside, fsync, rename, fsync the directory.

A rename within one directory is atomic on POSIX file systems, so a reader (or a process
started after a crash) sees either the old file or the complete new one, never half of
one. The fsyncs make that true across a power loss too: the file's data before the
rename, the directory entry after it.

Temporary names start with "." so that dataset readers (pyarrow, pandas, duckdb globs on
``*.parquet``) never pick up a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import Iterator, Union

from vmstream.errors import UserError

PathLike = Union[str, os.PathLike]

TMP_PREFIX = ".tmp-"


def fsync_dir(path: PathLike) -> None:
    """Make a directory's entries (renames, creations, unlinks) durable."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems (e.g. certain network mounts) refuse
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_file(path: PathLike) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path_for(final: PathLike) -> Path:
    """A hidden, unique sibling of `final` to write into before the rename."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{final.name}")


@contextlib.contextmanager
def atomic_path(final: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it onto `final`.

    On an exception the temporary file is removed and `final` is untouched. Works for a
    file or a directory written at the yielded path.
    """
    final = Path(final)
    tmp = tmp_path_for(final)
    try:
        yield tmp
        if tmp.is_dir():
            for child in tmp.iterdir():
                fsync_file(child)
            fsync_dir(tmp)
        else:
            fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_bytes_atomic(final: PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def remove_quietly(path: PathLike) -> None:
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def remove_stale_tmp(directory: PathLike) -> int:
    """Delete temporaries a crashed writer left in `directory`. Call only while holding
    the directory's writer lock (another live writer's temporaries are not stale)."""
    n = 0
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    for p in directory.iterdir():
        if p.name.startswith(TMP_PREFIX):
            remove_quietly(p)
            n += 1
    return n


class DirLocked(UserError, RuntimeError):
    """The directory is held by another writer: one line for the user, nothing damaged."""


class DirLock:
    """An exclusive writer lock on a directory (``flock`` on a hidden lock file).

    One writer per output directory: two processes appending and compacting the same
    files would lose rows. The kernel drops the lock when the holder dies, so a crashed
    run never leaves the directory locked.
    """

    def __init__(self, directory: PathLike, what: str = "store"):
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise DirLocked(
                f"{self.what} {self.directory} is locked by another run{by}: one writer per directory; "
                "use another --out, or wait for it to finish"
            ) from None
        try:  # who holds it, for the message a second writer gets
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
