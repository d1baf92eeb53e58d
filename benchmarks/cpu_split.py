"""Where a system's CPU goes per turn: CPU seconds of each server process kind under load.

`python -m benchmarks.cpu_split raychat-direct --users 200` starts the system,
runs `--users` users doing `--turns` plain turns with `--think-s` between them,
and prints the CPU used per process kind (actors by class, Serve, HAProxy, Ray's
own; `benchmarks.resources.process_kind`). The suite's `chat` points carry the
same split (`cpu_by_kind`).
With `--profile DIR` every server process is sampled by py-spy during the load
(`DIR/KIND-PID.txt`, collapsed stacks) and the heaviest functions of each kind
are printed (self time and inclusive time, as a share of that kind's samples).

The load starts once `start_system` returns, which behind HAProxy is once
HAProxy routes to the ingress replica (see `benchmarks.systems`).

PostgreSQL: `--database-url postgresql+asyncpg://USER@HOST:PORT/DB` runs the
system's servers on that database (`RAYCHAT_DATABASE_URL`); with
`--fresh-database` on a new database `cpu_split_XXXXXXXX` created on that
server first (recommended: one per run). The CPU of the PostgreSQL server's
processes (found by the port's listening process, or `--postgres-pid`) is
added as the kind `postgres`: the whole server, so give the run a server of its
own. From `pg_stat_database` it prints commits, rollbacks and rows inserted and
updated per turn for that database (read once the counters have settled,
`benchmarks.postgres.settle`). `--writers N` sets
`RAYCHAT_PERSISTENCE_WRITERS` (more than one needs PostgreSQL). Every run
prints the actor counts it ran with and the writers' own group commits per
turn (`persistence.batches` of the statistics document).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
import websockets

from benchmarks import postgres
from benchmarks.resources import process_kind
from benchmarks.systems import RAY_INGRESS, SYSTEMS, RunningSystem, SimSettings, start_system

FINAL = {"run.completed", "run.failed", "run.cancelled"}
WRITERS_ENV = "RAYCHAT_PERSISTENCE_WRITERS"
STATS_PER_TURN = ("batches", "written")  # of the statistics document's `persistence`


def cpu_by_kind(
    system: RunningSystem, extra: Mapping[str, Callable[[], float]] | None = None
) -> collections.Counter[str]:
    """User+system CPU seconds so far of every server process, summed by kind.

    `extra`: more kinds, each with a function giving its CPU seconds so far
    (e.g. `postgres`: the database server, which is not among the system's).
    """
    seconds: collections.Counter[str] = collections.Counter()
    for pid in system.server_pids():
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds[process_kind(process)] += times.user + times.system
    for kind, read in (extra or {}).items():
        seconds[kind] += read()
    return seconds


def cpu_used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds per kind between two `cpu_by_kind` readings (kinds first seen after count
    from 0; kinds whose processes all ended, from `before` only, are dropped)."""
    return {kind: after[kind] - before.get(kind, 0.0) for kind in after}


def per_turn_lines(used: Mapping[str, float], turns: int) -> list[str]:
    """The printed table: each kind's CPU seconds and ms per turn, heaviest first, and the total."""
    lines = []
    for kind, seconds in sorted(used.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {kind:18s} {seconds:7.2f} s  {1000 * seconds / turns:6.1f} ms/turn")
    total = sum(used.values())
    lines.append(f"  {'total':18s} {total:7.2f} s  {1000 * total / turns:6.1f} ms/turn")
    return lines


def server_env(writers: int | None) -> dict[str, str]:
    """The variables `--writers` adds to the servers' environment."""
    return {} if writers is None else {WRITERS_ENV: str(writers)}


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, or None."""
    pg = args.database_url is not None and postgres.is_postgres(args.database_url)
    if args.writers is not None and args.writers > 1 and not pg:
        return f"--writers {args.writers} needs PostgreSQL (--database-url postgresql...)"
    if (args.fresh_database or args.postgres_pid is not None) and not pg:
        return "--fresh-database and --postgres-pid need --database-url postgresql..."
    if args.writers is not None and args.system not in RAY_INGRESS:
        return "--writers applies to the Ray systems only"
    return None


def stats_per_turn(
    before: Mapping[str, Any], after: Mapping[str, Any], turns: int
) -> dict[str, float]:
    """Counters of the statistics document per turn: the agent actors' polls and events sent,
    the persistence writers' group commits (`batches`) and rows (`written`)."""
    found: dict[str, float] = {}
    sections = (("agent_manager", ("polls", "events_sent")), ("persistence", STATS_PER_TURN))
    for section, keys in sections:
        old, new = before.get(section, {}), after.get(section, {})
        for key in keys:
            value = new.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[f"{section}.{key}"] = (value - old.get(key, 0)) / turns
    return found


def actor_counts(stats: Mapping[str, Any]) -> str:
    """The ingress and actor counts a run used, from its statistics document."""
    ingress = stats.get("ingress")
    if not isinstance(ingress, Mapping):
        return ""
    keys = ("proxy", "shards", "agent_actors", "persistence_writers")
    return ", ".join(f"{key} {ingress[key]}" for key in keys if ingress.get(key) is not None)


def start_profilers(
    system: RunningSystem, out: Path, native: bool = False
) -> list[subprocess.Popen[bytes]]:
    """One `py-spy record` per Python server process of a known kind, writing collapsed stacks."""
    out.mkdir(parents=True, exist_ok=True)
    profilers = []
    for pid in system.server_pids():
        try:
            kind = process_kind(psutil.Process(pid))
        except psutil.Error:
            continue
        if kind in ("raylet", "gcs_server", "haproxy", "gone", "other"):  # not Python
            continue
        command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
        command += ["--output", str(out / f"{kind}-{pid}.txt")]
        command += ["--native"] if native else ["--nonblocking"]  # native needs pauses
        profilers.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return profilers


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    """Ask every py-spy to write its file and wait for it."""
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        profiler.wait(timeout=60)


def summarize_profiles(out: Path, top: int = 25) -> None:
    """Print, per process kind, the functions with the most self and inclusive samples."""
    by_kind: dict[str, list[Path]] = collections.defaultdict(list)
    for path in sorted(out.glob("*.txt")):
        by_kind[path.stem.rsplit("-", 1)[0]].append(path)
    for kind, paths in by_kind.items():
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for path in paths:
            for line in path.read_text().splitlines():
                stack, _, count_text = line.rpartition(" ")
                if not stack:
                    continue
                count = int(count_text)
                frames = stack.split(";")
                total += count
                own[frames[-1]] += count
                for frame in set(frames):
                    inclusive[frame] += count
        if not total:
            continue
        print(f"\n== {kind}: {total} samples (active) ==")
        print("  self:")
        for frame, count in own.most_common(top):
            print(f"    {100 * count / total:5.1f}%  {frame}")
        print("  inclusive:")
        for frame, count in inclusive.most_common(top * 2):
            print(f"    {100 * count / total:5.1f}%  {frame}")


async def _user(system: RunningSystem, index: int, turns: int, think_s: float) -> None:
    url = system.base_url.replace("http", "ws", 1) + "/api/websocket/ws?token="
    async with websockets.connect(url + system.token(f"cpu-{index}")) as ws:
        for turn in range(turns):
            await ws.send(json.dumps({"type": "chat", "text": f"hello {index} {turn}"}))
            while json.loads(await ws.recv())["type"] not in FINAL:
                pass
            await asyncio.sleep(think_s)  # the user's think time


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--think-s", type=float, default=1.0)
    parser.add_argument("--coalesce-ms", type=float, default=SimSettings().coalesce_ms)
    parser.add_argument("--profile", type=Path, help="sample every server process with py-spy")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--database-url", help="the servers' RAYCHAT_DATABASE_URL (default: a fresh SQLite file)"
    )
    parser.add_argument(
        "--fresh-database",
        action="store_true",
        help="create a new database on --database-url's PostgreSQL server and run on it",
    )
    parser.add_argument(
        "--postgres-pid", type=int, help="the postmaster's pid (default: found by the URL's port)"
    )
    parser.add_argument("--writers", type=int, help=f"sets {WRITERS_ENV} (persistence writers)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem)
    database_url = args.database_url
    server: postgres.Server | None = None
    extra: dict[str, Callable[[], float]] = {}
    if database_url is not None and postgres.is_postgres(database_url):
        server = postgres.Server.from_url(database_url)
        pid = args.postgres_pid or postgres.server_pid(server.port)
        extra["postgres"] = postgres.ServerCPU(pid).seconds
        if args.fresh_database:
            server = postgres.create_database(server, postgres.fresh_database_name())
            database_url = server.url
        print(f"PostgreSQL: database {server.database} on port {server.port} (postmaster {pid})")
    system = start_system(
        args.system,
        SimSettings(coalesce_ms=args.coalesce_ms),
        Path(tempfile.mkdtemp()),
        database_url=database_url,
        env=server_env(args.writers),
    )
    print(f"{args.system} started: {system.info.get('startup')}")
    try:
        counters_before = _settled_counters(server, "before the load")
        profilers = start_profilers(system, args.profile, args.native) if args.profile else []
        stats_before = system.stats() or {}
        before, started = cpu_by_kind(system, extra), time.monotonic()

        async def load() -> None:
            await asyncio.gather(
                *(_user(system, i, args.turns, args.think_s) for i in range(args.users))
            )

        asyncio.run(load())
        wall, after = time.monotonic() - started, cpu_by_kind(system, extra)
        stop_profilers(profilers)
        stats_after = system.stats() or {}
        counters_after = _settled_counters(server, "after the load")
    finally:
        system.stop()
    turns = args.users * args.turns
    print(f"{args.system}: {args.users} users, {turns} turns in {wall:.1f} s")
    counts = actor_counts(stats_after)
    if counts:
        print(f"  ({counts})")
    used = cpu_used(before, after)
    for line in per_turn_lines(used, turns):
        print(line)
    per_turn = stats_per_turn(stats_before, stats_after, turns)
    for key, value in per_turn.items():
        print(f"  {key}: {value:.2f} per turn")
    pg_counts = None
    if counters_before is not None and counters_after is not None:
        pg_counts = postgres.delta(counters_before, counters_after)
        for key, value in pg_counts.items():
            print(f"  postgres {key}: {value / turns:.2f} per turn ({value} in all)")
    if args.json:
        figures = {
            "system": args.system,
            "users": args.users,
            "turns": turns,
            "think_s": args.think_s,
            "wall_s": round(wall, 3),
            "database": server.database if server is not None else args.database_url or "sqlite",
            "counts": counts,
            "cpu_s": {kind: round(seconds, 4) for kind, seconds in used.items()},
            "stats_per_turn": per_turn,
            "postgres": pg_counts,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    if args.profile:
        summarize_profiles(args.profile)


def _settled_counters(server: postgres.Server | None, when: str) -> dict[str, int] | None:
    """The database's counters once PostgreSQL has published them (None: not PostgreSQL)."""
    if server is None:
        return None
    counters, settled = postgres.settle(lambda: postgres.read_counters(server))
    if not settled:
        print(f"warning: pg_stat_database still moving {when}; commit counts are approximate")
    return counters


if __name__ == "__main__":
    main()
