"""The store checks its own files: damage found on open and named, never written over;
verify and repair from the command line; compaction on close and past a bound."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.sinks import make_result
from vmstream.cli import main
from vmstream.stages.sinks.faiss_store import FaissSink
from vmstream.stages.sinks.parquet import ParquetSink
from vmstream.store import StoreCorruptError, VideoStore

D = 16


def flip(path: Path, offset: int = 200, n: int = 200) -> None:
    """Invert n bytes from `offset` (from the middle of a file shorter than that)."""
    data = bytearray(path.read_bytes())
    start = offset if offset < len(data) else len(data) // 2
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def gen_dir(path: Path) -> Path:
    return path / (path / "CURRENT").read_text().split()[0]


@pytest.fixture
def logged_store(tmp_path) -> Path:
    """A store as a running (or killed) writer leaves it: a generation and three log
    files (copied while the writer holds it open)."""
    src = tmp_path / "live"
    store = VideoStore(src)
    store.add_results([make_result("cam0", i, dim=D) for i in range(40)])
    store.commit()  # the first commit: a generation
    for j in range(3):
        store.add_results([make_result(f"cam{j + 1}", i, dim=D) for i in range(10)])
        store.commit()  # a log file each
    copy = tmp_path / "store"
    shutil.copytree(src, copy)
    store.close()
    assert sorted(p.name for p in copy.glob("wal-*")) == [f"wal-000001-00000{i}.arrow" for i in range(3)]
    return copy


def _target(store: Path, which: str) -> Path:
    return store / "wal-000001-000001.arrow" if which == "wal" else gen_dir(store) / which


@pytest.mark.parametrize("which", ["index.faiss", "ids.parquet", "meta.json", "manifest.json", "wal"])
def test_a_damaged_file_is_named_and_no_writer_appends_to_it(logged_store, which):
    target = _target(logged_store, which)
    flip(target)
    before = snapshot(logged_store)
    name = target.name
    for opener in (
        lambda: VideoStore(logged_store, readonly=True),
        lambda: VideoStore(logged_store),
        lambda: FaissSink(logged_store),
    ):
        with pytest.raises(StoreCorruptError, match=rf"{name}: damaged.*vmstream store repair"):
            opener()
    assert snapshot(logged_store) == before  # nothing written, nothing cleaned up


@pytest.mark.parametrize("seq", [1, 2])
def test_a_deleted_log_file_is_an_error_not_a_smaller_store(logged_store, seq):
    (logged_store / f"wal-000001-00000{seq}.arrow").unlink()
    for readonly in (True, False):
        with pytest.raises(
            StoreCorruptError, match=rf"wal-000001-00000{seq}.arrow: missing \(CURRENT records 3 log files"
        ):
            VideoStore(logged_store, readonly=readonly)


def test_truncated_files_and_a_missing_current_are_errors(logged_store, tmp_path):
    for name in ("index.faiss", "ids.parquet"):
        copy = tmp_path / name
        shutil.copytree(logged_store, copy)
        p = gen_dir(copy) / name
        p.write_bytes(p.read_bytes()[:100])
        with pytest.raises(StoreCorruptError, match=rf"{name}: is 100 bytes"):
            VideoStore(copy, readonly=True)
    older = tmp_path / "older"
    shutil.copytree(logged_store, older)
    (older / "CURRENT").write_text("gen-000001\n")  # how vmstream wrote it before checksums
    with pytest.raises(StoreCorruptError, match=r"CURRENT: written by an older vmstream .*store repair"):
        VideoStore(older)
    (logged_store / "CURRENT").unlink()
    with pytest.raises(StoreCorruptError, match=r"CURRENT: missing, but the store holds gen-000001"):
        VideoStore(logged_store)


def test_an_interrupted_first_save_is_adopted(tmp_path):
    """Killed between renaming the first generation into place and writing CURRENT:
    the generation is complete, and the next writer takes it up (nothing lost)."""
    path = tmp_path / "first"
    with VideoStore(path) as store:
        store.add_results([make_result("cam0", i, dim=D) for i in range(5)])
    (path / "CURRENT").unlink()
    assert len(VideoStore(path, readonly=True)) == 5
    with VideoStore(path) as store:
        assert len(store) == 5
    assert (path / "CURRENT").exists()


def test_clean_close_leaves_one_generation_and_no_log(tmp_path):
    path = tmp_path / "sink"
    sink = FaissSink(path, batch_size=4)
    for i in range(30):
        sink.write(make_result("cam0", i, dim=D))
        if i % 5 == 4:
            sink.flush()  # a commit: the first a generation, then log files
    assert len(list(path.glob("wal-*"))) == 5
    sink.close()
    assert [p.name for p in path.iterdir() if p.name.startswith(("gen-", "wal-"))] == ["gen-000002"]
    record = json.loads((path / "CURRENT").read_text().split("\n", 1)[1])
    assert record["generation"] == "gen-000002" and record["log"] == []
    assert len(VideoStore(path, readonly=True)) == 30


@pytest.mark.parametrize("bound", [{"wal_max_files": 3}, {"wal_max_rows": 7}, {"wal_max_bytes": 2000}])
def test_the_log_is_compacted_past_its_bound(tmp_path, bound):
    path = tmp_path / "bound"
    store = VideoStore(path, **bound)
    store.add_results([make_result("cam0", 0, dim=D)])
    store.commit()
    reader = VideoStore(path, readonly=True)  # holds generation 1 in memory
    gens = []
    for i in range(1, 13):
        store.add_results([make_result("cam0", 2 * i, dim=D), make_result("cam0", 2 * i + 1, dim=D)])
        store.commit()
        gens.append(int(gen_dir(path).name[4:]))
        assert len(list(path.glob("wal-*"))) == store.log_files
        assert len(list(path.glob("gen-*"))) == 1  # the old one went once CURRENT moved on
    assert gens[-1] > 1 and store.log_files < 4  # compacted, more than once for these bounds
    assert len(VideoStore(path, readonly=True)) == 25
    assert len(reader) == 1 and reader.search(np.ones(D), k=3)[0].stream_id == "cam0"  # an old reader still works
    store.close()


def _run_like(out: Path, n: int = 60) -> list:
    """What a run writes: every result to Parquet and to the store, flushed in steps."""
    results = [make_result(f"cam{s}", i, dim=D) for s in range(3) for i in range(n // 3)]
    parquet, faiss_sink = ParquetSink(out), FaissSink(out / "index", batch_size=8)
    for i, r in enumerate(results):
        parquet.write(r)
        faiss_sink.write(r)
        if i % 9 == 8:
            parquet.flush()
            faiss_sink.flush()
    parquet.close()
    faiss_sink.close()
    return results


def _hits(path: Path, queries: np.ndarray) -> list:
    store = VideoStore(path, readonly=True)
    return [
        [(h.uid, round(h.score, 5), h.stream_id, h.segment_index, h.t_start, h.labels) for h in hs]
        for hs in store.search(queries, k=8)
    ]


def test_repair_rebuilds_what_an_undamaged_store_holds(tmp_path, capsys):
    out, good = tmp_path / "out", tmp_path / "good"
    _run_like(out)
    shutil.copytree(out, good)
    damaged = gen_dir(out / "index") / "index.faiss"
    flip(damaged)
    damaged_bytes = damaged.read_bytes()

    assert main(["store", "verify", str(good)]) == 0
    assert "sound" in capsys.readouterr().out
    assert main(["store", "verify", str(out)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(damaged)) and "damaged: checksum mismatch" in lines[0]
    assert main(["search", "--index", str(out), "--id", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "index.faiss" in err and "vmstream store repair" in err

    assert main(["store", "repair", str(out)]) == 0
    said = capsys.readouterr().out
    assert "rebuilt" in said and "60 vectors" in said
    aside = list((out / "index").glob("damaged-*"))
    assert len(aside) == 1 and (aside[0] / damaged.parent.name / "index.faiss").read_bytes() == damaged_bytes
    assert (aside[0] / "CURRENT").read_text().split()[0] == damaged.parent.name
    assert main(["store", "verify", str(out / "index")]) == 0
    queries = np.random.default_rng(1).standard_normal((6, D)).astype(np.float32)
    assert _hits(out / "index", queries) == _hits(good / "index", queries)
    assert main(["store", "repair", str(out)]) == 0 and "nothing to repair" in capsys.readouterr().out


def test_a_repair_cut_short_leaves_an_error_not_an_empty_store(tmp_path):
    """Killed after moving the old files aside, before the new generation: CURRENT
    still names the old generation, so the store is an error (repair again), never an
    empty store a run would start filling."""
    from vmstream.store import files

    out = tmp_path / "out"
    _run_like(out, n=12)
    files.move_aside(out / "index", "damaged-x")
    with pytest.raises(StoreCorruptError, match=r"gen-\d+: missing \(CURRENT names it\)"):
        FaissSink(out / "index")
    assert main(["store", "repair", str(out)]) == 0
    assert len(VideoStore(out / "index", readonly=True)) == 12


def test_repair_and_verify_refuse_what_they_cannot_do(tmp_path, capsys):
    path = tmp_path / "lonely"
    with VideoStore(path) as store:  # a store with no Parquet results beside it
        store.add_results([make_result("cam0", i, dim=D) for i in range(3)])
    flip(gen_dir(path) / "ids.parquet")
    assert main(["store", "repair", str(path)]) == 2
    assert "no Parquet results" in capsys.readouterr().err
    assert (gen_dir(path) / "ids.parquet").exists()  # nothing moved
    assert main(["store", "verify", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["store", "verify", str(empty)]) == 1


def test_a_run_into_a_damaged_store_fails_and_repair_brings_search_back(tmp_path, tiny_ckpt, h264_mp4, capsys):
    """The issue's journey: run, damage the index, run again (it must fail, naming the
    file and the repair, and not append), repair, search."""
    out = tmp_path / "out"
    run = [
        "run",
        h264_mp4,
        "--checkpoint",
        tiny_ckpt,
        "--out",
        str(out),
        "--fps",
        "4",
        "--set",
        "decode.img_size=32",
        "--no-progress",
    ]
    assert main(run) == 0
    index = out / "index"
    assert [p.name for p in index.iterdir() if p.name.startswith(("gen-", "wal-"))] == [gen_dir(index).name]
    uid = int(VideoStore(index, readonly=True).ids.table.column("uid")[0].as_py())
    flip(gen_dir(index) / "index.faiss")
    before = snapshot(index)
    capsys.readouterr()

    assert main(run) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "index.faiss" in err[0] and "vmstream store repair" in err[0], err
    assert snapshot(index) == before

    assert main(["store", "repair", str(out)]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--id", str(uid), "-k", "2", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 2 and all(h["uid"] != uid for h in hits)
