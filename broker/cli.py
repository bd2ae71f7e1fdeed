"""The ``zstream`` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zstream", description="zstream event-streaming server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("dev", help="run a local three-broker cluster with etcd (not built yet)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print(
        f"zstream {args.command}: the broker is not built yet; "
        "the storage engine and Raft core come first (see README).",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
