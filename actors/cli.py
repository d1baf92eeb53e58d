"""The `raychat` command: `raychat token USER_ID [--admin]`, `raychat drain`, `raychat bench`,
`raychat chat`."""

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
    drain = commands.add_parser(
        "drain",
        help="before a full stop: end runs in flight, storing their partial replies, "
        "then close every socket with 1001",
    )
    drain.add_argument("--address", default="auto", help="the Ray cluster (default: auto)")
    commands.add_parser(
        "bench", add_help=False, help="run the benchmark suite (raychat bench --help for options)"
    )
    commands.add_parser(
        "chat", add_help=False, help="chat in the terminal (raychat chat --help for options)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        # Imported by name: the suite's own dependencies (tqdm, psutil, matplotlib; the
        # `bench` extra) stay out of the service's import graph and of its type check.
        bench = importlib.import_module("benchmarks.cli")
        return int(bench.main(rest))
    if args.command == "chat":
        # Imported here: the other commands need neither rich nor websockets.
        from actors.chat_terminal_app import main as chat

        return chat(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "drain":
        return _drain(args.address)
    if args.command == "token":
        try:
            print(codec_for(Settings()).issue(args.user_id, admin=args.admin))
        except ValueError as exc:
            print(f"raychat: {exc}", file=sys.stderr)
            return 2
    return 0


def _drain(address: str) -> int:
    import json

    import ray

    from actors.factory import drain_actors

    settings = Settings()
    ray.init(address=address, namespace=settings.namespace, log_to_driver=False)
    try:
        print(json.dumps(drain_actors(settings)))
    except ValueError as exc:  # an actor that does not exist
        print(f"raychat: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
