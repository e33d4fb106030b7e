"""A full disk under --out (a small tmpfs): the run ends with one line saying what could
not be written, where, and that the same command resumes; exit code 3, no traceback; the
store verifies; after more space the same command gives every segment exactly once."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.fixtures.media import make_video
from vmstream.store import VideoStore
from vmstream.store.results import read_table

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEGMENTS = 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # At 4 fps and 4 frames per segment: one segment per second.
    return make_video(
        str(tmp_path_factory.mktemp("disk-full") / "v.mp4"), fps=10, seconds=SEGMENTS, gop=20, size=(64, 48)
    )


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mount point and a way to resize it; skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()

    def mount(size: str, remount: bool = False) -> None:
        opts = f"{'remount,' if remount else ''}size={size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True, capture_output=True)

    try:
        mount("4k")
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({getattr(e, 'stderr', b'').decode().strip() or e})")
    try:
        yield mnt, mount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "vmstream.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=_ROOT),
    )
    return proc.returncode, proc.stdout, proc.stderr


# Sizes at which the disk fills while different writers write: a snapshot, a Parquet
# part, the FAISS store (which one depends on the file system; the outcome must not).
@pytest.mark.parametrize("size", ["48k", "96k", "160k"])
def test_a_full_disk_ends_in_one_line_and_the_rerun_completes(small_disk, tiny_ckpt, clip, size):
    mnt, mount = small_disk
    mount(size, remount=True)
    out = mnt / "out"
    run = [
        "run",
        clip,
        "--checkpoint",
        tiny_ckpt,
        "--out",
        str(out),
        "--no-progress",
        "--fps",
        "4",
        "--set",
        "decode.img_size=32",
        "--set",
        "runner.snapshot_every=1",
        "--set",
        "output.console=false",
    ]
    code, _, err = _cli(*run)
    if code == 0:
        pytest.skip(f"{size} was enough space for this run on this file system")
    assert code == 3, err
    assert "Traceback" not in err and "error:" not in err.lower().replace("vmstream run:", ""), err
    full = [line for line in err.splitlines() if "could not write" in line]
    assert len(full) == 1, err
    line = full[0]
    assert line.startswith("vmstream run: No space left on device") and str(out) in line, line
    assert "run the same command again" in line
    # Notices (decoder, scan backend, batch size) are plain lines; anything that reports
    # a problem starts with its source or level, and only the one line may.
    problems = ("vmstream", "warning:", "error", "ERROR", "WARNING", "Traceback")
    assert [x for x in err.splitlines() if x.startswith(problems)] == [line], err

    code, said, _ = _cli("store", "verify", str(out))
    if (out / "index" / "CURRENT").exists():
        assert code == 0 and "sound" in said, said
    else:
        assert "damaged" not in said and "checksum" not in said, said

    mount("4m", remount=True)  # space freed
    code, _, err = _cli(*run)
    assert code == 0, err
    seg = read_table(out, "segments")
    counts = collections.Counter(seg.column("segment_index").to_pylist())
    assert counts == {i: 1 for i in range(SEGMENTS)}
    plain = pd.read_parquet(out / "segments")  # a plain reader of the directory too
    assert sorted(plain.segment_index) == list(range(SEGMENTS))
    store = VideoStore(out / "index", readonly=True)
    assert len(store) == SEGMENTS
    assert sorted(store.ids.stream_rows(clip).column("segment_index").to_pylist()) == list(range(SEGMENTS))
    assert _cli("store", "verify", str(out))[0] == 0
