"""The run's Parquet results are checked like the store's files: page checksums in every
part, each part recorded in its table's _parts.json; a flipped bit, a deleted part or a
foreign part is found by `store verify` (one line), stops the next `run` (one line, no
pyarrow traceback), and `store repair` moves it aside and never rebuilds from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.fixtures.sinks import make_result
from vmstream.cli import main
from vmstream.stages.sinks.faiss_store import FaissSink
from vmstream.stages.sinks.parquet import ParquetSink
from vmstream.store import VideoStore
from vmstream.store.parts_manifest import MANIFEST, ResultsCorruptError
from vmstream.store.results import read_table

D = 16


def _write(out: Path, n: int = 30, seed: int = 0, row_group_rows: int = 8, **options) -> None:
    parquet = ParquetSink(out, row_group_rows=row_group_rows, **options)
    faiss_sink = FaissSink(out / "index", batch_size=8)
    for i in range(n):
        r = make_result(f"cam{i % 3}", i // 3, dim=D, seed=seed)
        parquet.write(r)
        faiss_sink.write(r)
    parquet.close()
    faiss_sink.close()


def _parts(table: Path) -> list[Path]:
    return sorted(p for p in table.glob("part-*.parquet") if pq.ParquetFile(p).metadata.num_rows)


def _flip_bit(path: Path, at: float = 0.3) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def _verify(capsys, out) -> list[str]:
    code = main(["store", "verify", str(out)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert code == 1, lines
    return lines


def test_parts_carry_page_checksums_and_a_record(tmp_path, capsys):
    _write(tmp_path)
    part = _parts(tmp_path / "segments")[0]
    meta = pq.ParquetFile(part).metadata.row_group(0).column(0)
    record = json.loads((tmp_path / "segments" / MANIFEST).read_text())
    assert set(record["parts"]) == {p.name for p in (tmp_path / "segments").glob("part-*.parquet")}
    assert record["pending"] == {}
    assert meta.total_compressed_size > 0
    assert main(["store", "verify", str(tmp_path)]) == 0 and "sound" in capsys.readouterr().out


def test_a_flipped_bit_is_found_stops_the_writer_and_repair_sets_it_aside(tmp_path, capsys):
    out = tmp_path / "out"
    _write(out)
    part = _parts(out / "segments")[0]
    _flip_bit(part)

    lines = _verify(capsys, out)
    assert len(lines) == 1 and lines[0].startswith(str(part)) and "checksum mismatch" in lines[0]
    with pytest.raises(ResultsCorruptError, match="checksum mismatch") as e:
        ParquetSink(out)  # the next run's sink: refuses, names the part and the repair
    assert "vmstream store repair" in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(ResultsCorruptError):
        read_table(out, "segments")  # page checksums: no silent wrong embedding

    before = len(VideoStore(out / "index", readonly=True))
    assert main(["store", "repair", str(out)]) == 0
    said = capsys.readouterr().out
    assert "set aside" in said and part.name in said and "sound, kept" in said
    aside = list(out.glob("damaged-*/segments/" + part.name))
    assert len(aside) == 1 and not part.exists()
    assert len(VideoStore(out / "index", readonly=True)) == before  # the store kept what the part held
    assert main(["store", "verify", str(out)]) == 0
    ParquetSink(out).close()  # writable again


@pytest.mark.parametrize("how", ["deleted", "foreign", "renamed-foreign", "directory"])
def test_a_deleted_or_foreign_part_is_found(tmp_path, capsys, how):
    out = tmp_path / "out"
    _write(out)
    seg = out / "segments"
    if how == "deleted":
        victim = _parts(seg)[0]
        victim.unlink()
        needle = "missing"
    else:
        other = tmp_path / "other"
        _write(other, seed=7)
        src = _parts(other / "segments")[0]
        victim = seg / (src.name if how == "foreign" else "part-999999999-abcdef.parquet")
        if how == "directory":
            victim = seg / "extra=1"
            victim.mkdir()
            shutil.copyfile(src, victim / "x.parquet")
        else:
            shutil.copyfile(src, victim)
        needle = "does not record"
    lines = _verify(capsys, out)
    assert len(lines) == 1 and lines[0].startswith(str(victim)) and needle in lines[0], lines
    with pytest.raises(ResultsCorruptError, match=needle):
        ParquetSink(out)
    assert main(["store", "repair", str(out)]) == 0
    capsys.readouterr()
    assert main(["store", "verify", str(out)]) == 0


def test_a_damaged_part_stops_the_next_run_with_one_line(tmp_path, tiny_ckpt, h264_mp4, capsys):
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
    part = _parts(out / "segments")[0]
    _flip_bit(part, 0.5)
    capsys.readouterr()
    assert main(run) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(part) in err[0] and "vmstream store repair" in err[0], err


def test_repair_does_not_trust_a_damaged_meta_json(tmp_path, capsys):
    """Issue 25: a flipped byte in "metric" left a store nothing could use after repair."""
    out = tmp_path / "out"
    _write(out)
    gen = out / "index" / (out / "index" / "CURRENT").read_text().split()[0]
    meta = gen / "meta.json"
    meta.write_bytes(meta.read_bytes().replace(b'"cosine"', b'"cosinf"'))

    assert main(["store", "repair", str(out)]) == 0
    said = capsys.readouterr().out
    assert "not trusted" in said and "meta.json" in said
    store = VideoStore(out / "index", readonly=True)
    assert store.metric == "cosine" and len(store) == 30
    assert len(store.search(np.ones((1, D), dtype=np.float32), k=3)[0]) == 3
    assert main(["store", "verify", str(out)]) == 0


def test_a_table_of_an_older_vmstream_is_recorded_on_open(tmp_path, capsys):
    _write(tmp_path)
    for table in ("segments", "events", "summaries"):
        (tmp_path / table / MANIFEST).unlink()
    assert main(["store", "verify", str(tmp_path)]) == 0  # nothing to check against
    capsys.readouterr()
    ParquetSink(tmp_path).close()
    assert (tmp_path / "segments" / MANIFEST).exists()
    _flip_bit(_parts(tmp_path / "segments")[0])
    assert len(_verify(capsys, tmp_path)) == 1


def test_repair_of_a_damaged_store_and_a_damaged_part_rebuilds_from_the_sound_parts_only(tmp_path, capsys):
    out = tmp_path / "out"
    _write(out, target_file_rows=8)  # parts of 8 rows stay apart: 8, 8, 8, 6
    parts = _parts(out / "segments")
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [8, 8, 8, 6]
    big = parts[1]
    _flip_bit(big, 0.6)
    gen = out / "index" / (out / "index" / "CURRENT").read_text().split()[0]
    _flip_bit(gen / "index.faiss", 0.5)

    lines = _verify(capsys, out)
    assert len(lines) == 2 and any(str(big) in x for x in lines) and any("index.faiss" in x for x in lines)
    assert main(["store", "repair", str(out)]) == 0
    said = capsys.readouterr().out
    assert big.name in said and "rebuilt" in said and "22 vectors" in said, said
    assert main(["store", "verify", str(out)]) == 0
