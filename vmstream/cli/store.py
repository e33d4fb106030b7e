"""`vmstream store verify|repair DIR`: check a FAISS store's files, rebuild it from the
run's Parquet results."""

from __future__ import annotations

import sys
from pathlib import Path

from vmstream.cli.common import add_verbose
from vmstream.errors import UserError

KINDS = ("auto", "flat", "ivfpq", "ivfsq8", "hnsw")


def add_parser(sub) -> None:
    store = sub.add_parser(
        "store",
        help="verify or repair a FAISS store",
        description="Check every file of a FAISS store against its checksums (verify), or rebuild the store "
        "from the run's Parquet results, moving its files aside (repair). DIR is a run's --out "
        "or its index/ dir.",
    )
    actions = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify",
        help="check the store; exit 0 if sound, 1 with one line per problem",
        description="Check every file of the store against its recorded checksum and "
        "read it back whole. Exit 0 if sound, 1 (one line per problem) if not.",
    )
    verify.add_argument("dir", metavar="DIR", help="a run's --out or its index/ dir")
    add_verbose(verify)
    verify.set_defaults(handler=verify_main)
    repair = actions.add_parser(
        "repair",
        help="rebuild the store from the run's Parquet results",
        description="Rebuild the index from OUT/segments (every segment's embedding is "
        "there) into a new generation; the store's old files move into its "
        "damaged-<time>/ folder (OUT/index/damaged-<time>/), nothing is "
        "deleted. A sound store is "
        "left as it is unless --force.",
    )
    repair.add_argument("dir", metavar="DIR", help="a run's --out or its index/ dir")
    repair.add_argument("--force", action="store_true", help="rebuild even a sound store")
    repair.add_argument("--kind", choices=KINDS, help="index kind of the rebuilt store (default: the old store's)")
    add_verbose(repair)
    repair.set_defaults(handler=repair_main)


def locate(given: str) -> tuple[Path, Path]:
    """(the store's directory, the run's output directory) for DIR as given."""
    p = Path(given)
    if not p.is_dir():
        raise UserError(f"{given}: no such directory (give a run's --out or its index/ dir)")
    if (p / "index").is_dir() or (p / "segments").is_dir():
        return p / "index", p
    return p, p.parent


def verify_main(args) -> int:
    from vmstream.store.repair import verify_results, verify_store

    store, out = locate(args.dir)
    if _backend(store) == "milvus":
        return _verify_milvus(store)
    report = verify_store(store)
    results = verify_results(out)
    if report.sound and not results:
        print(f"video store {store}: sound ({report.summary})")
        return 0
    for problem in report.problems:
        print(f"{(store / problem.file) if problem.file != '.' else store}: {problem.what}")
    for problem in results:
        print(f"{out / problem.file}: {problem.what}")
    print(
        f"`vmstream store repair {args.dir}` rebuilds the store from the run's Parquet results"
        f"{' (damaged result parts are moved aside first, never used)' if results else ''}",
        file=sys.stderr,
    )
    return 1


def repair_main(args) -> int:
    from vmstream.store.repair import rebuild_from_results, repair_results, verify_results, verify_store

    store, out = locate(args.dir)
    if _backend(store) == "milvus":
        raise UserError(
            f"video store {store} is kept in Milvus, which keeps its own replicas and logs; "
            "to rebuild it, delete its collection and run `vmstream index` from the results topics"
        )
    report = verify_store(store)
    results = verify_results(out)
    if report.sound and not results and not args.force:
        print(f"video store {store}: sound ({report.summary}); nothing to repair (--force rebuilds it anyway)")
        return 0
    for problem in report.problems:
        print(f"found: {store / problem.file}: {problem.what}", file=sys.stderr)
    try:
        for line in repair_results(out) if results else []:
            print(f"set aside: {line}")
        if report.sound and not args.force:
            # The store was built as the results were written, before their damage: it
            # keeps what the set-aside parts held.
            print(
                f"video store {store}: sound, kept; running the same `vmstream run` again writes the "
                "set-aside results anew"
            )
            return 0
        done = rebuild_from_results(
            store, out / "segments", kind=args.kind, fallback={"kind": _run_kind(out), "metric": _run_metric(out)}
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # no results; a writer holds the store
        raise UserError(str(e)) from None
    except OSError as e:  # a read-only or full file system: nothing was changed
        raise UserError(
            f"cannot repair the store {store}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
        ) from None
    for note in done.notes:
        print(f"note: video store {store}: {note}")
    skipped = f" ({done.skipped} rows without a usable embedding skipped)" if done.skipped else ""
    aside = f"; its old files are in {done.aside}" if done.aside else ""
    print(f"video store {store}: rebuilt from {out / 'segments'}: {done.vectors} vectors{skipped}{aside}")
    return 0


def _run_metric(out: Path):
    """The metric the run's model implies: inner product for a video-text model (as the
    run's store was made), else None (the default)."""
    from vmstream.pipeline.manifest import read_manifest

    try:
        name = (read_manifest(out) or {}).get("model")
        if not name:
            return None
        from vmstream.models.registry import get_checkpoint

        return "ip" if get_checkpoint(name).kind == "videotext" else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def _backend(store: Path) -> str:
    from vmstream.store import store_backend

    return store_backend(store)


def _verify_milvus(store: Path) -> int:
    from vmstream.store import open_store

    with open_store(store, readonly=True) as s:
        problems = s.verify()
        n = len(s)
    if not problems:
        print(f"video store {store}: sound (Milvus at {s.meta['uri']}, collection {s.collection}: {n} vectors)")
        return 0
    for p in problems:
        print(f"{store}: {p}")
    return 1


def _run_kind(out: Path):
    """The index kind the run asked for (its manifest's config), if any."""
    from vmstream.pipeline.manifest import read_manifest

    try:
        kind = ((read_manifest(out) or {}).get("config", {}).get("output", {}) or {}).get("faiss_kind")
    except (OSError, ValueError, AttributeError):
        return None
    return None if kind in (None, "auto") else kind
