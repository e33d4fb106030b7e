"""Stream snapshots: byte format and the local state store; damaged, foreign and
special snapshot files through `vmstream run`."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures.media import make_video
from vmstream.pipeline.snapshots import SET_ASIDE, LocalStateStore, snapshot_file_name
from vmstream.snapshot_codec import SnapshotError, decode_snapshot, encode_snapshot
from vmstream.stages.sources import source_from_uri
from vmstream.store.results import read_table


def _snap(sid="cam/1 ü?x"):
    return {
        "stream_id": sid,
        "next_index": 7,
        "t_end": 12.5,
        "state": b"\x00\x01state",
        "book": b"book",
        "extra": {"uri": "rtsp://x"},
    }


def test_round_trip():
    s = _snap()
    assert decode_snapshot(encode_snapshot(s)) == s


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda b: b"XX" + b[2:], "bad magic"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"x", "padded"),
        (lambda b: b[:6] + bytes([9]) + b[7:], "format v9"),
    ],
)
def test_corrupt_snapshots_are_refused(mutate, needle):
    with pytest.raises(SnapshotError, match=needle):
        decode_snapshot(mutate(encode_snapshot(_snap())))


def test_local_store(tmp_path):
    store = LocalStateStore(tmp_path / "state")
    assert store.load("a") is None
    s = _snap("dir/a.mp4")
    store.save(s)
    assert store.load("dir/a.mp4") == s
    s2 = dict(s, next_index=9)
    store.save(s2)
    assert store.load("dir/a.mp4")["next_index"] == 9
    assert list(store.stream_ids()) == ["dir/a.mp4"]
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".tmp")]
    store.delete("dir/a.mp4")
    assert store.load("dir/a.mp4") is None


# -- damaged, foreign and special snapshot files, through `vmstream run` ----------------
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("snap-clips")
    # At 4 fps and 4 frames per segment: one segment per second.
    return {n: make_video(str(d / f"{n}s.mp4"), fps=10, seconds=n, gop=20, size=(64, 48)) for n in (6, 8, 20)}


def _run(video, out, ckpt, *more):
    """`vmstream run` as a person runs it, in its own process: (exit code, stderr)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmstream.cli",
            "run",
            video,
            "--checkpoint",
            ckpt,
            "--out",
            str(out),
            "--no-progress",
            "--fps",
            "4",
            "--set",
            "decode.img_size=32",
            "--set",
            "runner.snapshot_every=1",
            *more,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=_ROOT),
    )
    return proc.returncode, proc.stderr


def _embeddings(out):
    t = read_table(out, "segments").sort_by("segment_index")
    return t.column("segment_index").to_pylist(), np.stack(t.column("embedding").to_numpy(zero_copy_only=False))


def _plant(kind, path, other_snapshot=None):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a snapshot\n")
    elif kind == "flipped":
        data = bytearray(encode_snapshot(dict(_snap(), stream_id="x")))
        data[20] ^= 0x04
        path.write_bytes(bytes(data))
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("kept")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("kind", ["empty", "text", "flipped", "directory", "fifo", "symlink"])
def test_a_bad_snapshot_is_set_aside_and_the_stream_starts_over(tmp_path, tiny_ckpt, clips, kind):
    video = str(tmp_path / "v.mp4")
    shutil.copyfile(clips[6], video)
    out = tmp_path / "out"
    state = out / "state"
    state.mkdir(parents=True)
    bad = state / snapshot_file_name(source_from_uri(video).stream_id)
    _plant(kind, bad)

    code, err = _run(video, out, tiny_ckpt)  # a FIFO would block here forever if it were opened
    assert code == 0, err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "snapshot" in line and str(bad) in line]
    assert len(warnings) == 1, err
    assert "starts over" in warnings[0] and SET_ASIDE in warnings[0]
    aside = list((state / SET_ASIDE).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(bad.name)  # moved, not deleted
    if kind == "directory":
        assert (aside[0] / "inside").read_text() == "kept"
    assert not os.path.lexists(bad)  # the finished stream leaves no snapshot
    index, _ = _embeddings(out)
    assert index == list(range(6))

    if kind == "directory":  # the next run of the same stream has nothing to complain about
        code, err = _run(video, out, tiny_ckpt)
        assert code == 0 and "set aside" not in err and "warning" not in err, err


def test_another_streams_snapshot_under_this_name_is_not_resumed(tmp_path, tiny_ckpt, clips):
    """Issue 25: a snapshot of stream B copied over stream A's was resumed, and 31 of 40
    embeddings were silently wrong. Now: set aside, A starts over, A's results as a
    clean run's."""
    a, b = str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")
    shutil.copyfile(clips[8], a)
    shutil.copyfile(clips[20], b)
    out = tmp_path / "out"
    # B's real snapshot: B stopped after 3 segments.
    from vmstream.pipeline.assembly import build_runner
    from vmstream.pipeline.config import load_config
    from vmstream.records import SegmentResult
    from vmstream.stages.sources import resolve_sources

    cfg = load_config(
        overrides={
            "model": {"checkpoint": tiny_ckpt, "name": None},
            "decode": {"fps": 4.0, "img_size": 32},
            "output": {"dir": str(out), "console": False},
            "runner": {"progress": False, "snapshot_every": 1, "queue_size": 1},
        }
    )
    seen = []

    def progress(item):
        if isinstance(item, SegmentResult):
            seen.append(item)
            if len(seen) == 3:
                runner.stop()

    runner = build_runner(cfg, progress=progress)
    assert runner.run(resolve_sources([b])).stopped
    state = out / "state"
    b_snap = state / snapshot_file_name(source_from_uri(b).stream_id)
    a_snap = state / snapshot_file_name(source_from_uri(a).stream_id)
    assert b_snap.exists()
    shutil.copyfile(b_snap, a_snap)

    code, err = _run(a, out, tiny_ckpt)
    assert code == 0, err
    line = [x for x in err.splitlines() if str(a_snap) in x]
    assert len(line) == 1 and "the snapshot of another stream" in line[0] and "starts over" in line[0], err
    assert "resuming" not in err
    got = read_table(out, "segments")
    got = got.filter(pa_equal(got, a)).sort_by("segment_index")

    assert _run(a, tmp_path / "clean", tiny_ckpt)[0] == 0
    ref_index, ref = _embeddings(tmp_path / "clean")
    assert got.column("segment_index").to_pylist() == ref_index == list(range(8))
    np.testing.assert_allclose(
        np.stack(got.column("embedding").to_numpy(zero_copy_only=False)), ref, rtol=1e-5, atol=1e-6
    )
    assert b_snap.exists()  # B's own snapshot is untouched


def pa_equal(table, stream_id):
    import pyarrow.compute as pc

    return pc.equal(table.column("stream_id"), stream_id)


@pytest.mark.parametrize("name", ["视频" * 24 + ".mp4", "/".join(["d" * 100] * 3) + "/x.mp4"])
def test_long_and_non_ascii_paths_have_a_bounded_snapshot_name(tmp_path, tiny_ckpt, clips, name):
    """A 49-character CJK name quotes to 400+ bytes: over the 255 a file name may hold."""
    video = str(tmp_path / "videos" / name)
    os.makedirs(os.path.dirname(video))
    shutil.copyfile(clips[6], video)
    out = tmp_path / "out"
    code, err = _run(video, out, tiny_ckpt)
    assert code == 0 and "Traceback" not in err, err
    assert _embeddings(out)[0] == list(range(6))
    store = LocalStateStore(tmp_path / "state")
    sid = source_from_uri(video).stream_id
    store.save(dict(_snap(), stream_id=sid))
    assert len(snapshot_file_name(sid).encode()) < 120
    assert store.load(sid)["stream_id"] == sid and list(store.stream_ids()) == [sid]


def test_a_snapshot_under_its_old_quoted_name_is_read_and_migrated(tmp_path):
    import urllib.parse

    store = LocalStateStore(tmp_path)
    s = _snap("dir/a.mp4")
    old = tmp_path / (urllib.parse.quote("dir/a.mp4", safe="") + ".snap")
    old.write_bytes(encode_snapshot(s))
    assert store.load("dir/a.mp4") == s
    store.save(dict(s, next_index=9))
    assert not old.exists() and (tmp_path / snapshot_file_name("dir/a.mp4")).exists()
    assert store.load("dir/a.mp4")["next_index"] == 9


def test_a_v1_snapshot_without_checksum_is_still_read():
    import json
    import struct

    s = _snap()
    h = json.dumps(
        {
            "stream_id": s["stream_id"],
            "next_index": 7,
            "t_end": 12.5,
            "state_len": len(s["state"]),
            "book_len": len(s["book"]),
            "extra": s["extra"],
        }
    ).encode()
    v1 = b"VMSNAP" + struct.pack("<BI", 1, len(h)) + h + s["state"] + s["book"]
    assert decode_snapshot(v1) == s


def test_a_snapshot_of_another_model_is_set_aside(tmp_path, clips):
    from types import SimpleNamespace

    from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
    from vmstream.pipeline.versions import content_version
    from vmstream.records import Resume

    src = source_from_uri(clips[6])
    store = LocalStateStore(tmp_path)
    inference = SimpleNamespace(meta=SimpleNamespace(name="videomamba_tiny", checkpoint_digest="abc"))
    cp = SnapshotKeeper(store, inference)
    snap = dict(_snap(src.stream_id), extra={"stream_version": content_version(src), "model": "videomamba_tiny@zzz"})
    store.save(snap)
    start, resume = cp.begin(src, Resume(src.stream_id, store.load(src.stream_id)))
    assert resume is None and not start.resumed
    assert store.load(src.stream_id) is None and len(list((tmp_path / SET_ASIDE).iterdir())) == 1
    snap["extra"]["model"] = "videomamba_tiny@abc"
    store.save(snap)
    start, resume = cp.begin(src, Resume(src.stream_id, store.load(src.stream_id)))
    assert resume is not None and start.resumed
