"""Stream snapshots: byte format and the local state store."""
import pytest

from vmstream.pipeline.snapshots import LocalStateStore
from vmstream.snapshot_codec import SnapshotError, decode_snapshot, encode_snapshot


def _snap(sid="cam/1 ü?x"):
    return {"stream_id": sid, "next_index": 7, "t_end": 12.5, "state": b"\x00\x01state", "book": b"book",
            "extra": {"uri": "rtsp://x"}}


def test_round_trip():
    s = _snap()
    assert decode_snapshot(encode_snapshot(s)) == s


@pytest.mark.parametrize("mutate, needle", [
    (lambda b: b"XX" + b[2:], "bad magic"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"x", "padded"),
    (lambda b: b[:6] + bytes([9]) + b[7:], "format v9"),
])
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
