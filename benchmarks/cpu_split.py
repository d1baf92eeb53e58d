"""Where a system's CPU goes per turn: CPU seconds of each server process kind under load.

`python -m benchmarks.cpu_split raychat-direct --users 200` starts the system,
runs `--users` users doing `--turns` plain turns with `--think-s` between them,
and prints the CPU used per process kind (actors by class, Serve, HAProxy, Ray's
own; `benchmarks.resources.process_kind`). The suite's `chat` points carry the
same split (`cpu_by_kind`).
With `--profile DIR` every server process is sampled by py-spy during the load
(`DIR/KIND-PID.txt`, collapsed stacks) and the heaviest functions of each kind
are printed (self time and inclusive time, as a share of that kind's samples).
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
from pathlib import Path

import psutil
import websockets

from benchmarks.resources import process_kind
from benchmarks.systems import SYSTEMS, RunningSystem, SimSettings, start_system

FINAL = {"run.completed", "run.failed", "run.cancelled"}


def cpu_by_kind(system: RunningSystem) -> collections.Counter[str]:
    """User+system CPU seconds so far of every server process, summed by kind."""
    seconds: collections.Counter[str] = collections.Counter()
    for pid in system.server_pids():
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
        except psutil.Error:
            continue
        seconds[process_kind(process)] += times.user + times.system
    return seconds


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


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--think-s", type=float, default=1.0)
    parser.add_argument("--coalesce-ms", type=float, default=SimSettings().coalesce_ms)
    parser.add_argument("--profile", type=Path, help="sample every server process with py-spy")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    args = parser.parse_args()
    system = start_system(
        args.system, SimSettings(coalesce_ms=args.coalesce_ms), Path(tempfile.mkdtemp())
    )
    try:
        profilers = start_profilers(system, args.profile, args.native) if args.profile else []
        stats_before = system.stats() or {}
        before, started = cpu_by_kind(system), time.monotonic()

        async def load() -> None:
            await asyncio.gather(
                *(_user(system, i, args.turns, args.think_s) for i in range(args.users))
            )

        asyncio.run(load())
        wall, after = time.monotonic() - started, cpu_by_kind(system)
        stop_profilers(profilers)
        stats_after = system.stats() or {}
    finally:
        system.stop()
    turns = args.users * args.turns
    print(f"{args.system}: {args.users} users, {turns} turns in {wall:.1f} s")
    used = {kind: after[kind] - before.get(kind, 0.0) for kind in after}
    for kind, seconds in sorted(used.items(), key=lambda item: -item[1]):
        print(f"  {kind:18s} {seconds:7.2f} s  {1000 * seconds / turns:6.1f} ms/turn")
    total = sum(used.values())
    print(f"  {'total':18s} {total:7.2f} s  {1000 * total / turns:6.1f} ms/turn")
    hub_before = stats_before.get("agent_manager", {})
    for key, value in stats_after.get("agent_manager", {}).items():
        if key in ("polls", "events_sent") and isinstance(value, int | float):
            print(f"  agent_manager.{key}: {(value - hub_before.get(key, 0)) / turns:.2f} per turn")
    if args.profile:
        summarize_profiles(args.profile)


if __name__ == "__main__":
    main()
