"""What the Parquet results' integrity record costs: a flush (one part) written the old
way (Parquet file aside, fsync, rename) against the way `PartTable` writes it now (page
checksums, the part's sha256 and the sealed `_parts.json` written before the rename),
and the share of a table's open spent checking every part against the record, in the
same run on the same file system.

    .venv/bin/python benchmarks/parquet_record_cost.py [--parts 200] [--rows 8] [--dim 576] [--dir /tmp]

Prints name=value lines; flush_new_vs_old is new/old.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from tests.fixtures.sinks import make_result  # noqa: E402
from vmstream.records import SEGMENT_SCHEMA  # noqa: E402
from vmstream.store.atomic import atomic_path  # noqa: E402
from vmstream.store.parts_manifest import PartManifest  # noqa: E402
from vmstream.store.results import PartTable  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", type=int, default=200)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    rows = [
        [make_result("cam0", p * args.rows + i, dim=args.dim).to_row() for i in range(args.rows)]
        for p in range(args.parts)
    ]
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        old_dir, new_dir = Path(d) / "old", Path(d) / "new"
        old_dir.mkdir()
        t0 = time.perf_counter()
        for p, batch in enumerate(rows):
            table = pa.Table.from_pylist(batch, schema=SEGMENT_SCHEMA)
            with atomic_path(old_dir / f"part-{p:09d}-000000.parquet") as tmp:
                pq.write_table(table, tmp, row_group_size=args.rows, compression="zstd")
        old = (time.perf_counter() - t0) / args.parts

        t = PartTable(
            new_dir, SEGMENT_SCHEMA, ("uid",), row_group_rows=args.rows, max_delay_s=None, max_small_parts=10**9
        )
        t0 = time.perf_counter()
        for batch in rows:
            for r in batch:
                t.append(r)  # a flush every `rows` rows: one part each
        new = (time.perf_counter() - t0) / args.parts
        t._closed = True  # leave the parts as they are (no compaction) for the open below
        t._lock.release()

        t0 = time.perf_counter()
        PartTable(
            new_dir, SEGMENT_SCHEMA, ("uid",), row_group_rows=10**6, target_file_rows=1, max_small_parts=10**9
        )._lock.release()  # checks every part; nothing to compact
        open_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        problems = PartManifest.read(new_dir).check()  # the part of the open the record adds
        open_check = time.perf_counter() - t0
        assert not problems, problems
        size = sum(f.stat().st_size for f in new_dir.glob("part-*")) / args.parts
    print(f"parts={args.parts}")
    print(f"part_bytes={size:.0f}")
    print(f"flush_ms_old={old * 1e3:.3f}")
    print(f"flush_ms_new={new * 1e3:.3f}")
    print(f"flush_new_vs_old={new / old:.2f}")
    print(f"open_ms_total={open_total * 1e3:.1f}")
    print(f"open_ms_record_check={open_check * 1e3:.1f}")
    print(f"open_record_check_share={open_check / open_total:.2f}")


if __name__ == "__main__":
    main()
