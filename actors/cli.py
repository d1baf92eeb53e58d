"""The `raychat` command: `raychat token USER_ID [--admin]`."""

from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    if args.command == "token":
        try:
            print(codec_for(Settings()).issue(args.user_id, admin=args.admin))
        except ValueError as exc:
            print(f"raychat: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
