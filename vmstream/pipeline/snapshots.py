"""Stream snapshots: what a stream needs to resume on another worker after a crash.

A snapshot is the stream's model state (StreamState bytes), its summary accumulators,
the index of the next segment and the end time of the last processed segment (the
decode position: resume decoding just after it). It is taken only after every result
up to that segment is durable in the sinks, so resuming from it loses nothing and
repeats at most the segments since the snapshot (which sinks upsert by uid).

The byte format is `vmstream.snapshot_codec`'s.

On disk (`LocalStateStore`), one file per stream:

    STATE/<readable prefix>-<32 hex digits>.snap    the hex digits: a hash of the stream id
    STATE/set-aside/<name>.<UTC time>               snapshots that could not be used

The name is bounded (under 120 bytes) whatever the stream id: a long or non-ASCII path
quotes to more than a file name may hold (255 bytes). Files of an older vmstream, named
by the quoted stream id alone, are still read; the next save of that stream writes the
new name and removes the old one.

A snapshot is used only when it is a regular file holding an intact snapshot (its
checksum) of this very stream (the id it records). Anything else under its name (empty,
damaged, another stream's snapshot, a directory, a FIFO or other special file, which is
never opened) is moved into set-aside/ with one warning naming it, and the stream starts
over: nothing is deleted, and no stream is blocked by a bad file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, Optional, Protocol

from vmstream.snapshot_codec import SnapshotError, decode_snapshot, encode_snapshot

__all__ = ["StateStore", "LocalStateStore", "SET_ASIDE", "snapshot_file_name"]

log = logging.getLogger(__name__)

SET_ASIDE = "set-aside"
_PREFIX_CHARS = 64
_NAME_MAX = 255
# A snapshot is a few MB of model state at most; a bigger file is not one of ours.
_MAX_BYTES = 1 << 30


class StateStore(Protocol):
    """Where snapshots live: a local directory (embedded mode) or a compacted Kafka topic."""

    def load(self, stream_id: str) -> Optional[dict]: ...

    def save(self, snap: dict) -> None: ...

    def delete(self, stream_id: str) -> None: ...


def snapshot_file_name(stream_id: str) -> str:
    """The stream's snapshot file name: the quoted tail of its id (for a person reading
    the directory) and a hash of the whole id (what makes it unique)."""
    digest = hashlib.blake2b(stream_id.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    readable = urllib.parse.quote(stream_id.rstrip("/").rsplit("/", 1)[-1] or "stream", safe="")
    if len(readable) > _PREFIX_CHARS:
        readable = readable[:_PREFIX_CHARS]
        cut = readable.rfind("%", len(readable) - 2)
        if cut >= 0:  # no half escape at the end
            readable = readable[:cut]
    return f"{readable}-{digest}.snap"


def _legacy_name(stream_id: str) -> Optional[str]:
    name = urllib.parse.quote(stream_id, safe="") + ".snap"
    return name if len(name.encode()) <= _NAME_MAX else None


class LocalStateStore:
    """One file per stream in a directory, written atomically (temp, fsync, rename)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, stream_id: str) -> Path:
        return self.root / snapshot_file_name(stream_id)

    def _legacy_path(self, stream_id: str) -> Optional[Path]:
        name = _legacy_name(stream_id)
        return None if name is None or name == snapshot_file_name(stream_id) else self.root / name

    def load(self, stream_id: str) -> Optional[dict]:
        """The stream's snapshot, or None: none there, or one that cannot be used (set
        aside, see the module doc). OSError when the directory itself cannot be read."""
        for p in (self._path(stream_id), self._legacy_path(stream_id)):
            if p is None:
                continue
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                self._set_aside(p, stream_id, f"not a regular file ({_kind(st.st_mode)})")
                continue
            if st.st_size > _MAX_BYTES:
                self._set_aside(p, stream_id, f"{st.st_size} bytes, more than any snapshot")
                continue
            data = _read_regular(p)
            if data is None:  # swapped for something else since the lstat
                self._set_aside(p, stream_id, "not a regular file")
                continue
            try:
                snap = decode_snapshot(data, where=str(p))
            except SnapshotError as e:
                self._set_aside(p, stream_id, str(e).removeprefix(f"{p}: "))
                continue
            if snap["stream_id"] != stream_id:
                self._set_aside(p, stream_id, "the snapshot of another stream")
                continue
            return snap
        return None

    def set_aside(self, stream_id: str, reason: str) -> None:
        """Move the stream's snapshot into set-aside/ (one warning): a sound snapshot
        that does not fit (e.g. made by another model)."""
        for p in (self._path(stream_id), self._legacy_path(stream_id)):
            if p is not None and os.path.lexists(p):
                self._set_aside(p, stream_id, reason)

    def _set_aside(self, p: Path, stream_id: str, reason: str) -> None:
        dest_dir = self.root / SET_ASIDE
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / f"{p.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        n = 1
        while os.path.lexists(dest):
            n += 1
            dest = dest.with_name(f"{p.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{n}")
        os.replace(p, dest)
        _fsync_dir(dest_dir)
        _fsync_dir(self.root)
        log.warning("snapshot %s: %s; moved to %s, stream %s starts over", p, reason, dest, stream_id)

    def save(self, snap: dict) -> None:
        p = self._path(snap["stream_id"])
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".snap")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode_snapshot(snap))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        legacy = self._legacy_path(snap["stream_id"])
        if legacy is not None:  # migrated: the new name holds the newer snapshot
            _unlink_regular(legacy)
        _fsync_dir(self.root)

    def delete(self, stream_id: str) -> None:
        for p in (self._path(stream_id), self._legacy_path(stream_id)):
            if p is not None:
                _unlink_regular(p)

    def stream_ids(self) -> Iterator[str]:
        """The streams with a usable-looking snapshot here (read from each file's header)."""
        for p in sorted(self.root.glob("*.snap")):
            if p.name.startswith("."):
                continue
            data = _read_regular(p)
            try:
                yield decode_snapshot(data or b"", where=str(p))["stream_id"]
            except SnapshotError:
                continue


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a special file"


def _read_regular(p: Path) -> Optional[bytes]:
    """The bytes of `p` if it is a regular file; None otherwise. O_NONBLOCK and
    O_NOFOLLOW: a FIFO or link put there after the lstat neither blocks nor redirects."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symbolic link
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(_MAX_BYTES + 1)
    finally:
        os.close(fd)


def _unlink_regular(p: Path) -> None:
    # A finished stream's snapshot goes; a directory under its name is no snapshot (left
    # for load to set aside), and never a reason for the stream to fail.
    try:
        if stat.S_ISDIR(os.lstat(p).st_mode):
            return
        p.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
