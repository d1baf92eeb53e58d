"""The scenarios: chat, stagger, burst, ramp, cold/warm and idle sockets; each returns its figures.

Plus `run_startup`, run once right after a system is ready (before any other
chat): the TTFT of the first chat, then of `warm_chats` more sent one after
another, each by a fresh user (so only the server's warmth differs).

Every scenario waits (bounded) for the server to go quiet, measures server and
client CPU and memory around its work, and is bounded by `point_timeout_s`:
turns still unfinished then count as `point_timeout` errors.
"""

from __future__ import annotations

import asyncio
import math
import random
import resource
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psutil

from benchmarks.client import SimUser, TurnRecord
from benchmarks.metrics import in_flight, persistence_lag, point_figures, summarize
from benchmarks.resources import MB, ResourceMeter, Usage, wait_quiet
from benchmarks.workload import (
    Context,
    TurnSink,
    close_all,
    connect_all,
    is_tool_turn,
    make_users,
    turn_text,
)

SCENARIOS = ("chat", "stagger", "burst", "ramp", "coldwarm", "idle")
ALIASES = {"cold": "coldwarm", "warm": "coldwarm", "cold/warm": "coldwarm"}
ERROR_BACKOFF_S = 0.1  # burst: a user whose turn failed waits this long before the next
CONNECT_BACKOFF_S = 1.0  # burst: and this long when it could not even connect


async def _stats(ctx: Context) -> dict[str, Any] | None:
    """The system's stats document; None when it has none or it cannot be read."""
    try:
        return await asyncio.to_thread(ctx.system.stats)
    except Exception as exc:  # another team's code and a live server: report, don't die
        if ctx.progress is not None:
            ctx.progress(f"{ctx.system.name}: stats failed: {exc!r}")
        return None


async def _settle(ctx: Context) -> dict[str, float | int | None]:
    """Wait (bounded by settle_max_s) until the server has nothing in flight and its CPU is quiet.

    Runs abandoned by an earlier point (a timeout, a disconnect) keep running on
    the server; a point that starts before they end would measure them too. So
    when work is still in flight at the deadline the system is restarted (when
    the caller gave `ctx.restart`), and the point records what happened. Call it
    before creating users: a restarted system has new tokens and a new port.
    """
    start = time.monotonic()
    deadline = start + ctx.config.settle_max_s
    busy_at_start = busy = in_flight(await _stats(ctx))
    while busy and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # polling the server's own count, bounded by the deadline
        busy = in_flight(await _stats(ctx))
    await wait_quiet(ctx.system.server_pids, max_s=max(0.0, deadline - time.monotonic()))
    restarted = bool(busy) and ctx.restart is not None
    if restarted and ctx.restart is not None:
        if ctx.progress is not None:
            ctx.progress(f"{ctx.system.name}: still {busy} runs in flight; restarting it")
        ctx.system = await asyncio.to_thread(ctx.restart)
        ctx.restarts += 1
        busy = in_flight(await _stats(ctx))
    return {
        "waited_s": round(time.monotonic() - start, 2),
        "in_flight_before": busy_at_start,
        "restarted": restarted,
        "in_flight_at_start": busy,
    }


async def _measured(
    ctx: Context,
    sink: TurnSink,
    work: Callable[[], Awaitable[None]],
    settle: dict[str, float | int | None],
) -> Usage:
    """Run `work` bounded by point_timeout_s inside a resource meter (after `_settle`)."""
    meter = ResourceMeter(ctx.system.server_pids)
    async with meter:
        try:
            async with asyncio.timeout(ctx.config.point_timeout_s):
                await work()
        except TimeoutError:
            sink.add_error("point_timeout", sink.unfinished())
            meter.usage.notes.append(f"stopped after point_timeout_s={ctx.config.point_timeout_s}")
    sink.flush()
    meter.usage.settle = settle
    if settle["in_flight_at_start"]:
        meter.usage.notes.append(
            f"the server still had {settle['in_flight_at_start']} runs/sockets in flight at start"
        )
    return meter.usage


def _point(
    ctx: Context,
    scenario: str,
    sink: TurnSink,
    users: Sequence[SimUser],
    usage: Usage,
    stats: dict[str, Any] | None,
    *,
    records: Sequence[TurnRecord] | None = None,
    window_s: float | None = None,
    in_window: Sequence[TurnRecord] | None = None,
    errors: Counter[str] | None = None,
) -> dict[str, Any]:
    """Every figure of one point (`records` and `errors` default to the whole sink)."""
    rows = sink.records if records is None else records
    if window_s is None:
        first, last = sink.window()
        window_s = last - first
    figures = point_figures(
        rows,
        sink.errors if errors is None else errors,
        users=len(users),
        window_s=window_s,
        floor=ctx.floor,
        in_window=in_window,
    )
    if records is None:  # turns cut off by point_timeout_s were planned too
        figures["turns"]["planned"] = max(figures["turns"]["planned"], sink.planned)
        figures["turns"]["failed"] = figures["turns"]["planned"] - figures["turns"]["completed"]
    connect_ms = [u.connect_ms for u in users if u.connect_ms is not None]
    return {
        "system": ctx.system.name,
        "scenario": scenario,
        **figures,
        "connect_ms": summarize(connect_ms),
        **usage.figures(figures["turns"]["completed"]),
        "cpu_by_kind": usage.cpu_by_kind(figures["turns"]["completed"]),
        "persistence_lag_ms": persistence_lag(stats),
        "settle": usage.settle,
        "notes": usage.notes,
    }


async def _converse(
    user: SimUser,
    sink: TurnSink,
    *,
    first: int,
    turns: int,
    stride: int,
    think_s: float,
    tool_fraction: float,
    rng: random.Random,
    jitter_start: bool = True,
) -> None:
    """One user's turns with a think time (uniform 0.5-1.5 x) between them."""
    if think_s > 0 and jitter_start:
        await asyncio.sleep(rng.uniform(0, think_s))  # staggered arrival
    for turn in range(turns):
        index = first + turn * stride
        tool = is_tool_turn(index, tool_fraction)
        sink.add(await user.turn(turn_text(index, tool), kind="tool" if tool else "plain"))
        if turn + 1 < turns and think_s > 0:
            await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))


async def _converse_all(
    ctx: Context,
    users: Sequence[SimUser],
    sink: TurnSink,
    label: str,
    turns: int,
    tool_fraction: float,
) -> None:
    """Every user's turns, concurrently; user i's turn t is global turn i + t * len(users)."""
    cfg = ctx.config
    await asyncio.gather(
        *(
            _converse(
                user,
                sink,
                first=i,
                turns=turns,
                stride=len(users),
                think_s=cfg.think_s,
                tool_fraction=tool_fraction,
                rng=random.Random(f"{cfg.seed}-{label}-{i}"),
            )
            for i, user in enumerate(users)
        )
    )


async def _conversations(
    ctx: Context, label: str, count: int, turns: int, tool_fraction: float
) -> tuple[list[SimUser], TurnSink, Usage, dict[str, Any] | None]:
    """`count` users connect, then each does `turns` turns with think time."""
    settle = await _settle(ctx)
    users = make_users(ctx, label, count)
    sink = TurnSink(f"{ctx.system.name} {label} {count}u", ctx.progress, planned=count * turns)

    async def work() -> None:
        await connect_all(users, sink)  # a user that failed retries at each turn
        await _converse_all(ctx, users, sink, label, turns, tool_fraction)

    try:
        usage = await _measured(ctx, sink, work, settle)
        stats = await _stats(ctx)
    finally:
        await close_all(users)
    return users, sink, usage, stats


async def run_chat(ctx: Context) -> dict[str, Any]:
    """One point per count of `chat_users`: that many users, `turns` turns each with think time.

    Every user connects first, then all converse; 10% of turns are tool turns.
    """
    cfg = ctx.config
    points = []
    for count in cfg.chat_users:
        users, sink, usage, stats = await _conversations(
            ctx, f"chat{count}", count, cfg.turns, cfg.tool_fraction
        )
        points.append(_point(ctx, "chat", sink, users, usage, stats))
    return {"points": points}


async def run_stagger(ctx: Context) -> dict[str, Any]:
    """`stagger_users` users whose start times spread evenly over `stagger_window_s`.

    User i connects at i x window / users after the point starts, then does
    `turns` turns with think time (no further start jitter): arrivals as a
    steady stream rather than a herd. 10% of turns are tool turns.
    """
    cfg = ctx.config
    count = cfg.stagger_users
    settle = await _settle(ctx)
    users = make_users(ctx, "stagger", count)
    sink = TurnSink(f"{ctx.system.name} stagger {count}u", ctx.progress, planned=count * cfg.turns)
    spacing_s = cfg.stagger_window_s / count if count else 0.0

    async def arrive(index: int, user: SimUser) -> None:
        await asyncio.sleep(index * spacing_s)  # this user's start time
        kind = await user.connect()
        if kind is not None:
            sink.add_error(kind)  # its turns retry the connect
        await _converse(
            user,
            sink,
            first=index,
            turns=cfg.turns,
            stride=count,
            think_s=cfg.think_s,
            tool_fraction=cfg.tool_fraction,
            rng=random.Random(f"{cfg.seed}-stagger-{index}"),
            jitter_start=False,
        )

    async def work() -> None:
        await asyncio.gather(*(arrive(i, user) for i, user in enumerate(users)))

    try:
        usage = await _measured(ctx, sink, work, settle)
        stats = await _stats(ctx)
    finally:
        await close_all(users)
    point = _point(ctx, "stagger", sink, users, usage, stats)
    point["start_window_s"] = cfg.stagger_window_s
    return {"points": [point], "start_window_s": cfg.stagger_window_s}


async def run_startup(ctx: Context) -> dict[str, Any]:
    """The first chat right after ready, then `warm_chats` more one after another (TTFT each).

    Every chat is a fresh user's first (plain) turn on a socket of its own, so
    the only difference between the first and the others is what the server
    had warmed up. The connect is not part of the TTFT.
    """
    cfg = ctx.config
    users = make_users(ctx, "startup", 1 + cfg.warm_chats)
    records: list[TurnRecord] = []
    try:
        for index, user in enumerate(users):
            records.append(await user.turn(turn_text(index, tool=False)))
    finally:
        await close_all(users)
    first, warm = records[0], records[1:]
    warm_ttft = [r.ttft_ms for r in warm if r.ttft_ms is not None]
    first_ms = _round(first.ttft_ms)
    median = _round(statistics.median(warm_ttft)) if warm_ttft else None
    ratio = None
    if median is not None and median > 0 and first_ms is not None:
        ratio = round(first_ms / median, 3)
    return {
        "first_chat_ttft_ms": first_ms,
        "first_chat_e2e_ms": _round(first.e2e_ms),
        "first_chat_connect_ms": _round(users[0].connect_ms),
        "first_chat_error": first.error,
        "warm_chats": len(warm),
        "warm_chat_ttft_ms": median,
        "warm_chat_ttft_ms_each": [_round(r.ttft_ms) for r in warm],
        "warm_chat_errors": sum(1 for r in warm if r.error is not None),
        "first_x_warm_ttft": ratio,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


async def run_burst(ctx: Context) -> dict[str, Any]:
    """`users` users send back to back for `duration_s`: saturation throughput.

    Throughput counts the turns completed inside the window; turns in flight at
    its end finish (bounded by the turn timeout) and count for latency only.
    """
    cfg = ctx.config
    settle = await _settle(ctx)
    users = make_users(ctx, "burst", cfg.users)
    sink = TurnSink(f"{ctx.system.name} burst {cfg.users}u", ctx.progress)
    window: list[float] = []

    async def loop(user: SimUser, index: int, deadline: float) -> None:
        turn = 0
        while time.perf_counter() < deadline:
            global_index = index + turn * cfg.users
            tool = is_tool_turn(global_index, cfg.tool_fraction)
            record = await user.turn(
                turn_text(global_index, tool), kind="tool" if tool else "plain"
            )
            sink.add(record)
            turn += 1
            if record.error is not None:
                connect_failed = record.error.startswith("connect:")
                await asyncio.sleep(CONNECT_BACKOFF_S if connect_failed else ERROR_BACKOFF_S)

    async def work() -> None:
        await connect_all(users, sink)  # a user that failed retries at each turn
        start = time.perf_counter()
        window[:] = [start, start + cfg.duration_s]
        await asyncio.gather(*(loop(u, i, window[1]) for i, u in enumerate(users)))

    try:
        usage = await _measured(ctx, sink, work, settle)
        stats = await _stats(ctx)
    finally:
        await close_all(users)
    end = window[1] if window else 0.0
    inside = [r for r in sink.records if r.done_at is not None and r.done_at <= end]
    point = _point(
        ctx, "burst", sink, users, usage, stats, window_s=cfg.duration_s, in_window=inside
    )
    return {"points": [point], "duration_s": cfg.duration_s}


def slo_allowed_bad(planned: int) -> int:
    """How many turns may miss the TTFT limit while the p99 (nearest rank) still meets it."""
    return planned - math.ceil(0.99 * planned) if planned > 0 else 0


async def _watch_slo(users: Sequence[SimUser], sink: TurnSink) -> int:
    """Return once more turns missed the sink's TTFT limit (or failed) than the p99 allows."""
    assert sink.ttft_limit_ms is not None
    limit_s = sink.ttft_limit_ms / 1000
    allowed = slo_allowed_bad(sink.planned)
    while True:
        await asyncio.sleep(0.2)
        now = time.perf_counter()
        late = sum(
            1 for u in users if u.waiting_since is not None and now - u.waiting_since > limit_s
        )
        if sink.missed + late > allowed:
            return sink.missed + late


async def _ramp_step(ctx: Context, count: int, limit_ms: float) -> dict[str, Any]:
    """One ramp step: `count` users, `ramp_turns` plain turns each; stops once the SLO broke."""
    cfg = ctx.config
    settle = await _settle(ctx)
    users = make_users(ctx, f"ramp{count}", count)
    sink = TurnSink(
        f"{ctx.system.name} ramp {count}u",
        ctx.progress,
        planned=count * cfg.ramp_turns,
        ttft_limit_ms=limit_ms,
    )
    aborted: list[int] = []

    async def work() -> None:
        await connect_all(users, sink)  # a user that failed retries at each turn
        runs = asyncio.create_task(
            _converse_all(ctx, users, sink, f"ramp{count}", cfg.ramp_turns, 0.0)
        )
        watch = asyncio.create_task(_watch_slo(users, sink))
        try:
            await asyncio.wait((runs, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when point_timeout_s cancels us: no task outlives the step
            for task in (runs, watch):
                task.cancel()
            await asyncio.gather(runs, watch, return_exceptions=True)
        if not watch.cancelled() and watch.exception() is None:
            aborted.append(watch.result())

    try:
        usage = await _measured(ctx, sink, work, settle)
        stats = await _stats(ctx)
    finally:
        await close_all(users)
    point = _point(ctx, "ramp", sink, users, usage, stats)
    missed = sink.missed
    if aborted:  # the watch also counted turns still waiting past the limit
        missed = max(missed, aborted[0])
    else:  # turns cut off by point_timeout_s
        missed += sink.unfinished()
    allowed = slo_allowed_bad(sink.planned)
    if aborted:
        point["notes"].append(
            f"stopped early: {missed} turns missed {limit_ms:.0f} ms (allowed {allowed}); "
            f"{sink.unfinished()} planned turns were cut off, not counted as errors"
        )
    point["slo"] = {
        "ttft_limit_ms": limit_ms,
        "missed_turns": missed,
        "allowed_missed": allowed,
        "stopped_early": bool(aborted),
        "held": not aborted and bool(sink.records) and missed <= allowed,
    }
    return point


def _fd_room() -> int:
    """How many more sockets this process may open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft - 200


async def run_ramp(ctx: Context) -> dict[str, Any]:
    """Grow the user count until p99 TTFT exceeds simulated TTFT + slo_margin_ms.

    A turn that fails counts as missing the limit. When even the first step
    fails, halve the count down to 1 to find the largest that holds.
    """
    cfg = ctx.config
    limit_ms = ctx.floor.ttft_ms + cfg.slo_margin_ms
    points: list[dict[str, Any]] = []
    held = 0
    stopped = "end of the ramp list"
    for count in cfg.ramp:
        if count > min(cfg.max_users, _fd_room()):
            stopped = f"{count} users is above the user or open-file limit"
            break
        point = await _ramp_step(ctx, count, limit_ms)
        points.append(point)
        if not point["slo"]["held"]:
            stopped = f"p99 TTFT limit missed at {count} users"
            break
        held = count
    if held == 0 and points:
        count = cfg.ramp[0] // 2
        while count >= 1 and held == 0:
            point = await _ramp_step(ctx, count, limit_ms)
            points.append(point)
            if point["slo"]["held"]:
                held = count
            count //= 2
    return {
        "points": points,
        "users_at_slo": held,
        "ttft_limit_ms": limit_ms,
        "stopped": stopped,
    }


async def run_coldwarm(ctx: Context) -> dict[str, Any]:
    """Fresh users: their first turn (nothing cached) against their later ones.

    Plain turns only: a tool turn changes the user's context and drops it from
    the cache, which would make the next turn cold again.
    """
    cfg = ctx.config
    turns = max(2, cfg.turns)
    users, sink, usage, stats = await _conversations(
        ctx, "coldwarm", cfg.coldwarm_users, turns, 0.0
    )
    turn_errors = Counter(r.error for r in sink.records if r.error is not None)
    connect_errors = sink.errors - turn_errors  # before any turn: they belong to the cold phase
    points = []
    for phase, cold in (("cold", True), ("warm", False)):
        rows = [r for r in sink.records if r.cold is cold]
        errors = Counter(r.error for r in rows if r.error is not None)
        point = _point(
            ctx,
            phase,
            sink,
            users,
            usage,
            stats,
            records=rows,
            errors=errors + connect_errors if cold else errors,
        )
        point["notes"] = [*point["notes"], "CPU and memory are of cold and warm together"]
        points.append(point)
    return {"points": points}


async def run_idle(ctx: Context) -> dict[str, Any]:
    """Open `idle_sockets` sockets, check each answers `ping`, hold them; memory per socket.

    Memory per socket = (server RSS with the sockets held - RSS before) / sockets held.
    """
    cfg = ctx.config
    settle = await _settle(ctx)
    count = min(cfg.idle_sockets, cfg.max_users, _fd_room())
    users = make_users(ctx, "idle", count)
    sink = TurnSink(f"{ctx.system.name} idle {count} sockets", ctx.progress)
    me = psutil.Process()
    rss: dict[str, int] = {}
    held: list[int] = []
    meter = ResourceMeter(ctx.system.server_pids)

    async def ping_all(connected: Sequence[SimUser], label: str) -> int:
        kinds = await asyncio.gather(*(u.ping() for u in connected))
        for kind in kinds:
            if kind is not None:
                sink.add_error(f"{label}:{kind}")
        return sum(1 for kind in kinds if kind is None)

    async def work() -> None:
        rss["server_before"], rss["client_before"] = await meter.rss_now(), me.memory_info().rss
        connected = await connect_all(users, sink)
        await ping_all(connected, "ping")
        await asyncio.sleep(cfg.idle_hold_s)  # the workload: hold the sockets idle
        rss["server_held"], rss["client_held"] = await meter.rss_now(), me.memory_info().rss
        held.append(await ping_all(connected, "after_hold"))

    try:
        async with meter:
            try:
                async with asyncio.timeout(cfg.point_timeout_s):
                    await work()
            except TimeoutError:
                sink.add_error("point_timeout")
        stats = await _stats(ctx)
    finally:
        await close_all(users)
    kept = held[0] if held else 0
    server_grew = rss.get("server_held", 0) - rss.get("server_before", 0)
    client_grew = rss.get("client_held", 0) - rss.get("client_before", 0)
    point: dict[str, Any] = {
        "system": ctx.system.name,
        "scenario": "idle",
        "users": count,
        "sockets": {
            "requested": cfg.idle_sockets,
            "opened": sum(1 for u in users if u.connect_ms is not None),
            "held": kept,
        },
        "hold_s": cfg.idle_hold_s,
        "server_rss_before_mb": round(rss.get("server_before", 0) / MB, 1),
        "server_rss_held_mb": round(rss.get("server_held", 0) / MB, 1),
        "server_kb_per_socket": round(server_grew / kept / 1024, 2) if kept else None,
        "client_kb_per_socket": round(client_grew / kept / 1024, 2) if kept else None,
        "connect_ms": summarize([u.connect_ms for u in users if u.connect_ms is not None]),
        "errors": {"total": sum(sink.errors.values()), "kinds": dict(sorted(sink.errors.items()))},
        **meter.usage.figures(0),
        "persistence_lag_ms": persistence_lag(stats),
        "settle": settle,
        "notes": meter.usage.notes,
    }
    if count < cfg.idle_sockets:
        point["notes"].append(f"only {count} sockets: the user or open-file limit")
    return {"points": [point]}


RUNNERS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "chat": run_chat,
    "stagger": run_stagger,
    "burst": run_burst,
    "ramp": run_ramp,
    "coldwarm": run_coldwarm,
    "idle": run_idle,
}
