"""Pre-build the fused C++ CPU kernels into the cache, so CI and Docker images do not
pay the 10-20 s first build at the first scan:

    python -m vmstream.models.ops.build            # native kernels for this machine
    python -m vmstream.models.ops.build --numba    # also compile the numba fallback

Exit status 1 (with the reason) when the kernels cannot be built here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import cpu_ext


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vmstream.models.ops.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--variant",
        default="native",
        choices=sorted(cpu_ext.VARIANT_FLAGS),
        help="instruction-set variant (default: native)",
    )
    ap.add_argument("--numba", action="store_true", help="also compile the numba kernels")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # This command is about the build: it says where a cached one was loaded from (a run
    # keeps that line at debug level, its "scan backend" line names the kernels).
    logging.getLogger(cpu_ext.log.name).setLevel(logging.DEBUG)
    t0 = time.perf_counter()
    try:
        ops = cpu_ext.load(args.variant)
    except cpu_ext.ExtensionUnavailable as e:
        print(f"fused CPU kernels unavailable: {e}", file=sys.stderr)
        return 1
    name, _ = cpu_ext.build_key(args.variant)
    print(
        f"fused CPU kernels ready: {ops.isa()} ({time.perf_counter() - t0:.1f} s) "
        f"in {cpu_ext.cache_root() / 'ext' / name}"
    )
    if args.numba:
        t0 = time.perf_counter()
        from . import numba_scan  # noqa: F401, PLC0415 (compiles or loads from cache)

        print(f"numba kernels ready ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
