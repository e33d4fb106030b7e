"""`vmstream info`: versions, devices, and which optional backends are usable (and why not)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="versions, devices, and which backends are usable (and why not)",
        description="Print versions, devices, and which optional backends (fused kernels, "
        "DALI, faiss-gpu) are usable here, and why not.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(handler=main)


def main(args) -> int:
    from vmstream.pipeline.info import print_info

    return print_info()
