"""A checkpoint's zip archive checked against its own CRC-32s when it is loaded.

`torch.save` writes a zip archive with a CRC-32 for every member, but `torch.load` reads
the tensors' bytes without checking them: a flipped bit loads silently and changes the
model's outputs. `check_archive` compares every member's bytes with its recorded CRC.
zlib's CRC runs at about the speed of the load itself, so the members are checked on a
few threads (zlib releases the GIL) over a memory map; benchmarks/checkpoint_crc.py
measures the cost against the load and against the sha256 digest every load computes.
Files in the legacy (pre-1.6, non-zip) format, as some official checkpoints are, carry no
checksum to check.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

__all__ = ["DamagedArchive", "check_archive"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_SLICE = 1 << 24


class DamagedArchive(ValueError):
    """A zip checkpoint whose member fails its CRC check, or whose directory is broken."""


def _damaged(path: str, member: Optional[str], what: str) -> DamagedArchive:
    where = f"its member {member} " if member else "its zip archive "
    return DamagedArchive(f"checkpoint {path} is damaged: {where}{what}; restore or download it again")


def _member_crc(view, start: int, size: int) -> int:
    crc = 0
    for s in range(start, start + size, _SLICE):
        crc = zlib.crc32(view[s : min(s + _SLICE, start + size)], crc)
    return crc


def check_archive(path: Union[str, os.PathLike], workers: Optional[int] = None) -> bool:
    """Raise DamagedArchive naming the file and member when a member's bytes do not match
    the CRC-32 the archive recorded for it. True if the file is a zip archive (checked),
    False if it is not one (nothing to check)."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _damaged(path, None, f"cannot be read ({e})") from None
    size = os.path.getsize(path)
    with open(path, "rb") as f, contextlib.ExitStack() as stack:
        if size == 0:
            return True
        mm = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        view = stack.enter_context(memoryview(mm))
        jobs = []
        for info in infos:
            head = info.header_offset
            if head + _LOCAL_HEADER.size > size:
                raise _damaged(path, info.filename, "lies past the end of the file (truncated)")
            sig, n_name, n_extra = _LOCAL_HEADER.unpack_from(view, head)
            start = head + _LOCAL_HEADER.size + n_name + n_extra
            if sig != b"PK\x03\x04" or start + info.compress_size > size:
                raise _damaged(path, info.filename, "has a broken header (or the file is truncated)")
            if info.compress_type != zipfile.ZIP_STORED:
                jobs.append((info, None))  # torch stores; anything else goes through zipfile
                continue
            jobs.append((info, (start, info.file_size)))

        def crc_ok(job) -> bool:
            info, span = job
            if span is None:
                try:
                    with zipfile.ZipFile(path) as z, z.open(info) as m:
                        while m.read(_SLICE):
                            pass
                    return True
                except zipfile.BadZipFile:
                    return False
            return _member_crc(view, *span) == info.CRC

        n = workers or min(8, os.cpu_count() or 1)
        big_first = sorted(jobs, key=lambda j: -j[0].file_size)
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = dict(zip((j[0].filename for j in big_first), pool.map(crc_ok, big_first)))
    for info in infos:
        if not results[info.filename]:
            raise _damaged(
                path, info.filename, "fails the archive's CRC-32 check (the file changed after it was written)"
            )
    return True
