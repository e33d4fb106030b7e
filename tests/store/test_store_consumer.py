"""The consumer record an indexer commits with its changes (CURRENT's `consumer` field)."""

from __future__ import annotations

import numpy as np

from vmstream.store import VideoStore, files


def _vecs(n, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_the_consumer_record_commits_with_the_changes_and_survives_compaction(tmp_path):
    path = tmp_path / "index"
    with VideoStore(path) as s:
        s.add(np.arange(4), _vecs(4))
        s.commit(consumer={"offsets": {"t:0": 4}})
        s.add(np.arange(4, 6), _vecs(2, seed=1))
        s.commit(consumer={"offsets": {"t:0": 6}})  # a log file: the offsets in the same CURRENT
        assert s.log_files == 1
        with VideoStore(path, readonly=True) as r:
            assert r.consumer == {"offsets": {"t:0": 6}} and len(r) == 6
        assert s.commit(consumer={"offsets": {"t:0": 9}})  # offsets moved, nothing added (events only)
        assert files.read_state(path)[0].consumer == {"offsets": {"t:0": 9}}
    # close() compacts into a new generation: the record goes with it.
    state, problems = files.read_state(path)
    assert not problems and state.log_entries == [] and state.consumer == {"offsets": {"t:0": 9}}
    with VideoStore(path) as s:
        assert s.consumer == {"offsets": {"t:0": 9}} and len(s) == 6


def test_uncommitted_changes_and_offsets_are_lost_together(tmp_path):
    path = tmp_path / "index"
    s = VideoStore(path)
    s.add(np.arange(3), _vecs(3))
    s.commit(consumer={"offsets": {"t:0": 3}})
    s.add(np.arange(3, 5), _vecs(2, seed=2))  # never committed: a crash here
    with VideoStore(path, readonly=True) as r:
        assert len(r) == 3 and r.consumer == {"offsets": {"t:0": 3}}


def test_a_store_run_wrote_has_no_consumer_record(tmp_path):
    with VideoStore(tmp_path / "index") as s:
        s.add(np.arange(2), _vecs(2))
    assert files.read_state(tmp_path / "index")[0].consumer is None
    assert b"consumer" not in (tmp_path / "index" / "CURRENT").read_bytes()
