"""Where a system's CPU goes per turn: CPU seconds of each server process kind under load.

`python -m benchmarks.cpu_split raychat-direct --users 200` starts the system,
runs `--users` users doing `--turns` plain turns with `--think-s` between them,
and prints the CPU used per process kind (actors by class, Serve, Ray's own).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import time
from pathlib import Path

import psutil
import websockets

from benchmarks.systems import SYSTEMS, RunningSystem, SimSettings, start_system

KINDS = (
    "AgentActor",
    "ShardActor",
    "PersistenceActor",
    "ServeReplica",
    "ProxyActor",
    "ServeController",
    "raylet",
    "gcs_server",
    "dashboard",
    "log_monitor",
    "uvicorn",
    "baselines",
)
FINAL = {"run.completed", "run.failed", "run.cancelled"}


def _kind(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    return next((kind for kind in KINDS if kind in command), "other")


def cpu_by_kind(system: RunningSystem) -> collections.Counter[str]:
    """User+system CPU seconds so far of every server process, summed by kind."""
    seconds: collections.Counter[str] = collections.Counter()
    for pid in system.server_pids():
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds[_kind(process)] += times.user + times.system
    return seconds


async def _user(system: RunningSystem, index: int, turns: int, think_s: float) -> None:
    url = system.base_url.replace("http", "ws", 1) + "/api/websocket/ws?token="
    async with websockets.connect(url + system.token(f"cpu-{index}")) as ws:
        for turn in range(turns):
            await ws.send(json.dumps({"type": "chat", "text": f"hello {index} {turn}"}))
            while json.loads(await ws.recv())["type"] not in FINAL:
                pass
            await asyncio.sleep(think_s)  # the user's think time


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--think-s", type=float, default=1.0)
    args = parser.parse_args()
    system = start_system(args.system, SimSettings(), Path(tempfile.mkdtemp()))
    try:
        before, started = cpu_by_kind(system), time.monotonic()

        async def load() -> None:
            await asyncio.gather(
                *(_user(system, i, args.turns, args.think_s) for i in range(args.users))
            )

        asyncio.run(load())
        wall, after = time.monotonic() - started, cpu_by_kind(system)
    finally:
        system.stop()
    turns = args.users * args.turns
    print(f"{args.system}: {args.users} users, {turns} turns in {wall:.1f} s")
    used = {kind: after[kind] - before.get(kind, 0.0) for kind in after}
    for kind, seconds in sorted(used.items(), key=lambda item: -item[1]):
        print(f"  {kind:18s} {seconds:7.2f} s  {1000 * seconds / turns:6.1f} ms/turn")
    total = sum(used.values())
    print(f"  {'total':18s} {total:7.2f} s  {1000 * total / turns:6.1f} ms/turn")


if __name__ == "__main__":
    main()
