"""Stream versions: a rerun over changed content replaces the old results in every sink,
a snapshot resumes only its own version, and a stream id is not taken over silently."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.fixtures.media import make_video
from vmstream.pipeline.assembly import build_runner
from vmstream.pipeline.config import load_config
from vmstream.pipeline.snapshot_keeper import SnapshotKeeper
from vmstream.pipeline.snapshots import LocalStateStore
from vmstream.pipeline.versions import StreamIds, StreamIdTaken, content_version
from vmstream.records import SegmentResult
from vmstream.stages.sources import resolve_sources, source_from_uri
from vmstream.store import VideoStore
from vmstream.store.results import read_table


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("version-clips")
    # At 4 fps and T=4 frames per segment: one segment per second.
    return {n: make_video(str(d / f"{n}s.mp4"), fps=10, seconds=n, gop=20, size=(64, 48)) for n in (3, 6, 10, 30)}


def _cfg(out, ckpt, **sets):
    base = {
        "model": {"checkpoint": ckpt, "name": None, "top_k": 3, "max_batch": 4},
        "decode": {"fps": 4.0, "img_size": 32},
        "output": {"dir": str(out), "console": False},
        "runner": {"progress": False, "snapshot_every": 1, "queue_size": 1},
    }
    return load_config(overrides=base, sets=[f"{k}={v}" for k, v in sets.items()])


def _replace(path: str, by: str) -> None:
    """Put `by`'s bytes at `path` the way a user would (a new file under the old name)."""
    tmp = path + ".new"
    shutil.copyfile(by, tmp)
    os.replace(tmp, path)


def test_rerun_over_changed_content_replaces_every_sink(tmp_path, tiny_ckpt, clips):
    """Issue 11's reproduction: a 6 s file, then a 3 s file under the same name."""
    video = str(tmp_path / "x.mp4")
    shutil.copyfile(clips[6], video)
    out = tmp_path / "out"
    cfg = _cfg(out, tiny_ckpt)
    build_runner(cfg).run(resolve_sources([video]))
    old_version = content_version(source_from_uri(video))
    assert len(pd.read_parquet(out / "segments")) == 6

    _replace(video, clips[3])
    new_version = content_version(source_from_uri(video))
    assert new_version != old_version
    report = build_runner(cfg).run(resolve_sources([video]))
    assert report.streams_failed == 0

    # Plain pandas over the directories sees the new version only.
    seg = pd.read_parquet(out / "segments").sort_values("segment_index")
    assert list(seg.segment_index) == [0, 1, 2] and (seg.t_end <= 3.0).all()
    assert set(seg.stream_version) == {new_version} and set(seg.stream_id) == {video}
    summ = pd.read_parquet(out / "summaries")
    assert len(summ) == 1 and summ.segment_count.iloc[0] == 3 and summ.stream_version.iloc[0] == new_version
    assert summ.t_end.iloc[0] <= 3.0
    events = pd.read_parquet(out / "events")
    assert set(events.stream_version) == {new_version} and (events.kind == "end").sum() == 1
    assert len(read_table(out, "segments")) == 3
    store = VideoStore(out / "index", readonly=True)
    assert len(store) == 3 and sorted(store.ids.stream_rows(video).column("segment_index").to_pylist()) == [0, 1, 2]


def _stopped_run(cfg, video, after: int = 3):
    seen = []

    def progress(item):
        if isinstance(item, SegmentResult):
            seen.append(item.segment_index)
            if len(seen) == after:
                runner.stop()

    runner = build_runner(cfg, progress=progress)
    report = runner.run(resolve_sources([video]))
    assert report.stopped


def test_resume_applies_to_the_same_version_only(tmp_path, tiny_ckpt, clips, caplog):
    video = str(tmp_path / "x.mp4")
    shutil.copyfile(clips[30], video)
    cfg = _cfg(tmp_path / "out", tiny_ckpt)
    state = LocalStateStore(tmp_path / "out" / "state")

    # Unchanged file: the second run resumes from the snapshot.
    _stopped_run(cfg, video)
    snap = state.load(video)
    assert snap is not None and snap["extra"]["stream_version"] == content_version(source_from_uri(video))
    with caplog.at_level(logging.INFO, logger="vmstream"):
        build_runner(cfg).run(resolve_sources([video]))
    assert "resuming at segment" in caplog.text and "starting over" not in caplog.text
    seg = pd.read_parquet(tmp_path / "out" / "segments")
    assert sorted(seg.segment_index) == list(range(30))

    # Changed file: the snapshot of the old content is discarded, the stream starts over.
    caplog.clear()
    _stopped_run(cfg, video)
    assert state.load(video) is not None
    _replace(video, clips[10])
    with caplog.at_level(logging.INFO, logger="vmstream"):
        build_runner(cfg).run(resolve_sources([video]))
    assert "content changed since its snapshot" in caplog.text and "resuming at segment" not in caplog.text
    seg = pd.read_parquet(tmp_path / "out" / "segments")
    assert sorted(seg.segment_index) == list(range(10))
    assert set(seg.stream_version) == {content_version(source_from_uri(video))}
    # The same as an uninterrupted run of the new file.
    ref_cfg = _cfg(tmp_path / "ref", tiny_ckpt)
    build_runner(ref_cfg).run(resolve_sources([clips[10]]))
    ref = pd.read_parquet(tmp_path / "ref" / "segments").sort_values("segment_index")
    seg = seg.sort_values("segment_index")
    np.testing.assert_allclose(
        np.stack(seg.embedding.to_numpy()), np.stack(ref.embedding.to_numpy()), rtol=1e-5, atol=1e-6
    )
    assert state.load(video) is None


def test_content_version_follows_the_content(tmp_path, clips):
    p = tmp_path / "v.mp4"
    shutil.copyfile(clips[3], p)
    src = source_from_uri(str(p))
    v = content_version(src)
    assert v == content_version(src) and len(v) == 32
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert content_version(src) != v  # touched
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_version(src) != v  # same size and mtime, other bytes at the end
    live = source_from_uri("rtsp://user:pw@10.0.0.7/stream")
    assert content_version(live) == content_version(source_from_uri("rtsp://10.0.0.7/stream"))
    assert content_version(live) != content_version(source_from_uri("rtsp://10.0.0.8/stream"))


def test_a_stream_id_is_not_taken_over_unless_allowed(tmp_path, tiny_ckpt, clips):
    cfg = _cfg(tmp_path / "out", tiny_ckpt)
    first = {"stream_id": "cam", "uri": clips[3]}
    other = {"stream_id": "cam", "uri": clips[6]}
    report = build_runner(cfg, allow_replace=False).run(resolve_sources([first]))
    assert report.streams_failed == 0
    report = build_runner(cfg, allow_replace=False).run(resolve_sources([other]))
    assert report.streams_failed == 1
    ((sid, _, error),) = report.failures
    assert sid == "cam" and "allow_replace" in error and clips[3] not in error
    seg = pd.read_parquet(tmp_path / "out" / "segments")
    assert len(seg) == 3 and set(seg.uri) == {clips[3]}  # untouched
    # The same input again is fine; the operator's run may replace.
    assert build_runner(cfg, allow_replace=False).run(resolve_sources([first])).streams_failed == 0
    assert build_runner(cfg).run(resolve_sources([other])).streams_failed == 0
    seg = pd.read_parquet(tmp_path / "out" / "segments")
    assert len(seg) == 6 and set(seg.uri) == {clips[6]}


def test_stream_ids_claims(tmp_path):
    ids = StreamIds(LocalStateStore(tmp_path / "state"))
    ids.claim("cam", "/a.mp4", allow_replace=False)
    ids.claim("cam", "/a.mp4", allow_replace=False)
    with pytest.raises(StreamIdTaken):
        ids.claim("cam", "/b.mp4", allow_replace=False)
    assert ids.uri_of("cam") == "/a.mp4"
    ids.claim("cam", "/b.mp4", allow_replace=True)
    assert ids.uri_of("cam") == "/b.mp4"


def test_snapshot_keeper_discards_a_snapshot_of_another_version(tmp_path, clips):
    from vmstream.records import Resume

    store = LocalStateStore(tmp_path / "state")
    src = source_from_uri(clips[3])
    snap = {
        "stream_id": src.stream_id,
        "next_index": 2,
        "t_end": 1.9,
        "state": b"",
        "book": b"",
        "extra": {"stream_version": "0" * 32},
    }
    store.save(snap)
    cp = SnapshotKeeper(store, inference=None)
    start, resume = cp.begin(src, Resume(src.stream_id, store.load(src.stream_id)))
    assert resume is None and not start.resumed and start.version == content_version(src)
    assert store.load(src.stream_id) is None
    snap["extra"]["stream_version"] = start.version
    store.save(snap)
    start, resume = cp.begin(src, Resume(src.stream_id, store.load(src.stream_id)))
    assert resume is not None and start.resumed


def test_a_state_store_failure_while_claiming_is_an_error_not_a_bad_input(tmp_path, clips):
    """A worker retries store trouble but dead-letters bad inputs: the claim's store
    failure must not look like an unreadable file (an OSError)."""
    store = LocalStateStore(tmp_path / "state")
    # The state directory is gone, a file in its place: reading it fails the way a broken store does.
    (tmp_path / "state").rmdir()
    (tmp_path / "state").write_text("not a directory")
    src = source_from_uri(clips[3], stream_id="cam")
    with pytest.raises(RuntimeError, match="id record"):
        SnapshotKeeper(store, inference=None, allow_replace=False).begin(src, None)


def test_a_rerun_of_a_finished_stream_says_it_replaces_earlier_results(tmp_path, tiny_ckpt, clips, caplog):
    out = tmp_path / "out"
    cfg = _cfg(out, tiny_ckpt)
    with caplog.at_level(logging.INFO, logger="vmstream"):
        build_runner(cfg).run(resolve_sources([clips[3]]))
        assert "replacing earlier results" not in caplog.text  # a first run replaces nothing
        build_runner(cfg).run(resolve_sources([clips[3]]))
    said = [r.getMessage() for r in caplog.records if "replacing earlier results" in r.getMessage()]
    assert said == [f"{clips[3]}: starts over from its first segment, replacing earlier results"]
    assert len(pd.read_parquet(out / "segments")) == 3
