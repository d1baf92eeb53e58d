"""`python -m benchmarks.cli` / `raychat bench`: run the suite against each system in turn.

Exit status: 0 when every system started and the results are complete, 1 when a
system failed to start or a figure is missing, 2 on bad usage. Missed
performance targets are reported, never turned into a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.metrics import Floor
from benchmarks.report import (
    SCHEMA,
    plot_latency,
    render_markdown,
    validate_results,
    write_json,
)
from benchmarks.scenarios import ALIASES, RUNNERS, SCENARIOS, run_startup
from benchmarks.targets import check_targets
from benchmarks.workload import DEFAULT_RAMP, BenchConfig, Context

SYSTEMS = ("serial", "single-process", "minimal", "raychat", "raychat-proxy", "raychat-direct")
FULL = BenchConfig()
SMOKE = BenchConfig(
    users=20,
    chat_users=(10, 20),
    stagger_users=20,
    stagger_window_s=2.0,
    turns=2,
    think_s=0.2,
    duration_s=3.0,
    ramp=(10, 20),
    coldwarm_users=20,
    idle_sockets=20,
    idle_hold_s=0.5,
    turn_timeout_s=10.0,
    point_timeout_s=30.0,
    settle_max_s=15.0,
)


def _names(text: str, allowed: tuple[str, ...], aliases: dict[str, str] | None = None) -> list[str]:
    names: list[str] = []
    for raw in text.split(","):
        name = (aliases or {}).get(raw.strip(), raw.strip())
        if name not in allowed:
            raise argparse.ArgumentTypeError(f"{raw!r} is not one of {', '.join(allowed)}")
        if name not in names:
            names.append(name)
    return names


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("give positive integers, e.g. 50,100,200")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line; options left unset take the full or the --smoke profile."""
    p = argparse.ArgumentParser(
        prog="raychat bench",
        description="raychat benchmark suite: simulated WebSocket users (all in this one asyncio "
        f"process, loopback only) against {', '.join(SYSTEMS)}.",
    )
    p.add_argument(
        "--systems",
        type=lambda t: _names(t, SYSTEMS),
        default=list(SYSTEMS),
        help=f"comma list (default: {','.join(SYSTEMS)})",
    )
    p.add_argument(
        "--scenarios",
        type=lambda t: _names(t, SCENARIOS, ALIASES),
        default=list(SCENARIOS),
        help=f"comma list (default: {','.join(SCENARIOS)})",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="about 20 users, a few seconds per scenario, ramp 10,20 (what CI runs)",
    )
    p.add_argument("--users", type=int, help=f"burst users (default {FULL.users})")
    p.add_argument(
        "--chat-users",
        type=_ints,
        help="user counts of the chat points, one point each "
        f"(default {','.join(map(str, FULL.chat_users))})",
    )
    p.add_argument(
        "--stagger-users", type=int, help=f"stagger scenario users (default {FULL.stagger_users})"
    )
    p.add_argument(
        "--stagger-window-s",
        type=float,
        help="stagger: user start times spread evenly over this window "
        f"(default {FULL.stagger_window_s})",
    )
    p.add_argument(
        "--warm-chats",
        type=int,
        help="startup: chats sent one after another after the first, for the warm TTFT "
        f"(default {FULL.warm_chats})",
    )
    p.add_argument("--turns", type=int, help=f"turns per chat user (default {FULL.turns})")
    p.add_argument(
        "--think-s", type=float, help=f"think time between turns (default {FULL.think_s})"
    )
    p.add_argument("--duration-s", type=float, help=f"burst duration (default {FULL.duration_s})")
    p.add_argument(
        "--ramp", type=_ints, help=f"ramp user counts (default {','.join(map(str, DEFAULT_RAMP))})"
    )
    p.add_argument("--idle-sockets", type=int, help=f"idle sockets (default {FULL.idle_sockets})")
    p.add_argument(
        "--coldwarm-users", type=int, help=f"cold/warm users (default {FULL.coldwarm_users})"
    )
    p.add_argument(
        "--turn-timeout-s", type=float, help=f"per-turn timeout (default {FULL.turn_timeout_s})"
    )
    p.add_argument(
        "--point-timeout-s",
        type=float,
        help=f"longest any one point may run (default {FULL.point_timeout_s})",
    )
    p.add_argument(
        "--settle-max-s",
        type=float,
        help="longest wait before a point for the server to finish earlier runs "
        f"(default {FULL.settle_max_s})",
    )
    p.add_argument("--ttft-ms", type=float, default=200.0, help="simulated time to first token")
    p.add_argument("--tokens-per-s", type=float, default=50.0, help="simulated tokens per second")
    p.add_argument("--reply-tokens", type=int, default=40, help="simulated reply length")
    p.add_argument("--coalesce-ms", type=float, default=30.0, help="RAYCHAT_COALESCE_MS")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    p.add_argument(
        "--workdir", type=Path, help="where systems keep their data (default: a temp dir)"
    )
    return p


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The profile (full or smoke) with every option given on the command line applied."""
    base = SMOKE if args.smoke else FULL
    given = {
        field: getattr(args, field)
        for field in (
            "users",
            "chat_users",
            "stagger_users",
            "stagger_window_s",
            "warm_chats",
            "turns",
            "think_s",
            "duration_s",
            "ramp",
            "idle_sockets",
            "coldwarm_users",
            "turn_timeout_s",
            "point_timeout_s",
            "settle_max_s",
        )
        if getattr(args, field) is not None
    }
    return dataclasses.replace(base, **given)


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit so thousands of sockets fit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def new_document(
    args: argparse.Namespace, cfg: BenchConfig, sim: Any, floor: Floor
) -> dict[str, Any]:
    """The results document before any system ran."""
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["raychat", "bench", *sys.argv[1:]],
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
        "client": {
            "description": "every simulated user in one asyncio process (this one), each a real "
            "WebSocket client speaking PROTOCOL.md over loopback",
            "processes": 1,
            "pid": os.getpid(),
            "library": f"websockets {version('websockets')}",
            "compression": False,
            "cpu_s_total": None,
        },
        "sim": {**dataclasses.asdict(sim), "floor_ms": floor.e2e_ms},
        "settings": {
            **dataclasses.asdict(cfg),
            "systems": list(args.systems),
            "scenarios": list(args.scenarios),
            "smoke": bool(args.smoke),
        },
        "systems": {},
        "targets": [],
        "problems": [],
    }


async def run_scenarios(ctx: Context, scenarios: list[str], bar: tqdm[Any]) -> dict[str, Any]:
    """Every scenario against one running system; a failing scenario records its error."""
    results: dict[str, Any] = {}
    for scenario in scenarios:
        bar.set_description(f"{ctx.system.name} {scenario}")
        try:
            results[scenario] = await RUNNERS[scenario](ctx)
        except Exception as exc:  # keep measuring the others; validate_results reports it
            results[scenario] = {"error": repr(exc), "traceback": traceback.format_exc()}
            tqdm.write(f"{ctx.system.name}/{scenario} failed: {exc!r}", file=sys.stderr)
        bar.update(1)
    return results


def run_system(
    systems: Any,
    name: str,
    sim: Any,
    workdir: Path,
    cfg: BenchConfig,
    floor: Floor,
    scenarios: list[str],
    bar: tqdm[Any],
) -> dict[str, Any]:
    """Start one system, run the scenarios, stop it; its entry of the results document."""
    entry: dict[str, Any] = {"status": "ok", "error": None, "scenarios": {}}
    bar.set_description(f"starting {name}")
    started = time.monotonic()
    try:
        system = systems.start_system(name, sim, workdir / name)
    except Exception as exc:  # reported and turned into a non-zero exit, not raised
        entry.update(status="start_failed", error=repr(exc), traceback=traceback.format_exc())
        bar.update(len(scenarios))
        return entry
    entry["start_s"] = round(time.monotonic() - started, 2)

    live = [system]  # the running instance (a restart replaces it)

    def restart() -> Any:
        live[0].stop()
        live[0] = systems.start_system(name, sim, workdir / name)
        return live[0]

    ctx = Context(system, cfg, floor, progress=bar.set_postfix_str, restart=restart)
    try:
        bar.set_description(f"{name} first chats")
        startup = dict(system.info.get("startup") or {})
        try:  # at once: the first chat is the one a user sends right after "ready"
            startup.update(asyncio.run(run_startup(ctx)))
        except Exception as exc:  # validate_results reports the missing figures
            startup["error"] = repr(exc)
            tqdm.write(f"{name}/startup failed: {exc!r}", file=sys.stderr)
        if system.info.get("ha_proxy"):  # a reload since ready: the first chats met the old one
            startup["haproxy_pids_at_ready"] = system.info.get("haproxy_pids")
            startup["haproxy_pids_after_first_chats"] = systems.haproxy_pids(system)
        entry["startup"] = startup
        cpu0 = time.process_time()
        entry["scenarios"] = asyncio.run(run_scenarios(ctx, scenarios, bar))
        entry["client_cpu_s"] = round(time.process_time() - cpu0, 2)
        entry["restarts"] = ctx.restarts
        try:
            entry["stats_end"] = live[0].stats()
        except Exception as exc:  # the document is a bonus here; the points carry the figures
            entry["stats_end"] = {"error": repr(exc)}
    finally:
        try:
            live[0].stop()
        except Exception as exc:  # the next system must still run
            entry["stop_error"] = repr(exc)
        entry["info"] = _public_info(live[0].info)  # the last instance's, after stop
    return entry


def _public_info(info: dict[str, Any]) -> dict[str, Any]:
    """What a started system reported about itself (ports, ingress, app settings), for the JSON."""
    return {key: value for key, value in info.items() if key != "startup"}


def main(argv: list[str] | None = None) -> int:
    """Run the suite; write results.json, results.md and latency.png into --out."""
    args = build_parser().parse_args(argv)
    cfg = config_from(args)
    try:
        systems = importlib.import_module("benchmarks.systems")
    except ImportError as exc:
        print(f"raychat bench: benchmarks.systems is not available: {exc}", file=sys.stderr)
        return 1
    raise_open_files_limit()
    sim = systems.SimSettings(
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        reply_tokens=args.reply_tokens,
        coalesce_ms=args.coalesce_ms,
    )
    floor = Floor.of(args.ttft_ms, args.reply_tokens, args.tokens_per_s)
    doc = new_document(args, cfg, sim, floor)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="raychat-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        with tqdm(
            total=len(args.systems) * len(args.scenarios),
            unit="scenario",
            file=sys.stderr,
            mininterval=1.0,
        ) as bar:
            for name in args.systems:
                doc["systems"][name] = run_system(
                    systems, name, sim, workdir, cfg, floor, list(args.scenarios), bar
                )
    doc["client"]["cpu_s_total"] = round(time.process_time(), 2)
    doc["targets"] = check_targets(doc)
    doc["problems"] = validate_results(doc)
    doc["problems"] += [
        f"left behind after its system stopped: {p}" for p in systems.leftover_processes()
    ]
    write_json(doc, args.out / "results.json")
    markdown = render_markdown(doc)
    (args.out / "results.md").write_text(markdown)
    plot_latency(doc, args.out / "latency.png")
    print(markdown)
    counts = Counter(check["status"] for check in doc["targets"])
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"Targets check: {tally or 'none (no raychat system was measured)'}")
    print(
        f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, "
        f"{args.out / 'latency.png'}"
    )
    if doc["problems"]:
        print("\nINCOMPLETE:\n" + "\n".join(f"- {p}" for p in doc["problems"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
