"""The `raychat` command: `raychat token USER_ID [--admin]`, `raychat bench [OPTIONS]`."""

from __future__ import annotations

import argparse
import importlib
import sys

from actors.auth import codec_for
from config import Settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `raychat` console script."""
    parser = argparse.ArgumentParser(prog="raychat", description="raychat command line")
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a token for the configured secret")
    token.add_argument("user_id")
    token.add_argument("--admin", action="store_true", help="the token may use admin endpoints")
    commands.add_parser(
        "bench", add_help=False, help="run the benchmark suite (raychat bench --help for options)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        # Imported by name: the suite's own dependencies (tqdm, psutil, matplotlib; the
        # `bench` extra) stay out of the service's import graph and of its type check.
        bench = importlib.import_module("benchmarks.cli")
        return int(bench.main(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "token":
        try:
            print(codec_for(Settings()).issue(args.user_id, admin=args.admin))
        except ValueError as exc:
            print(f"raychat: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
