"""The outputs of a benchmark run: JSON, a completeness check, a Markdown table and a PNG."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.resources import KINDS
from benchmarks.targets import render_targets

SCHEMA = "raychat-bench/1"
LATENCIES = ("ttft_ms", "e2e_ms", "ttft_x_floor", "e2e_x_floor")
TURN_FIGURES = (
    "users",
    "turns.planned",
    "turns.sent",
    "turns.completed",
    "turns.failed",
    *(f"{name}.p{p}" for name in LATENCIES for p in (50, 90, 99)),
    "turns_per_s",
    "deltas_per_s",
    "errors.total",
    "errors.kinds",
    "server.cpu_s",
    "server.cpu_s_per_turn",
    "server.peak_rss_mb",
    "client.cpu_s",
    "client.peak_rss_mb",
    "persistence_lag_ms",
)
IDLE_FIGURES = (
    "users",
    "sockets.requested",
    "sockets.opened",
    "sockets.held",
    "server_rss_before_mb",
    "server_rss_held_mb",
    "server_kb_per_socket",
    "client_kb_per_socket",
    "errors.total",
    "errors.kinds",
    "server.cpu_s",
    "server.peak_rss_mb",
    "client.cpu_s",
    "persistence_lag_ms",
)
NULL_WITHOUT_TURNS = {
    *(f"{name}.p{p}" for name in LATENCIES for p in (50, 90, 99)),
    "server.cpu_s_per_turn",
}
NULL_WITHOUT_SOCKETS = {"server_kb_per_socket", "client_kb_per_socket"}
RAY_SYSTEMS = ("raychat", "raychat-proxy", "raychat-direct")
STATS_REQUIRED = RAY_SYSTEMS  # systems that serve the PROTOCOL stats document
STARTUP_FIGURES = ("ready_s", "first_chat_ttft_ms", "warm_chat_ttft_ms")  # serve_ready_s: Ray
MISSING = object()


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING."""
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return MISSING
        doc = doc[key]
    return doc


def _count(point: Any, path: str) -> int:
    value = lookup(point, path)
    return value if isinstance(value, int) else 0


def iter_points(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every point of every scenario of every system."""
    for system in doc.get("systems", {}).values():
        for scenario in system.get("scenarios", {}).values():
            yield from scenario.get("points", [])


def _point_problems(where: str, system: str, point: dict[str, Any]) -> list[str]:
    idle = point.get("scenario") == "idle"
    figures = IDLE_FIGURES if idle else TURN_FIGURES
    nothing_done = (
        lookup(point, "sockets.held") in (0, MISSING)
        if idle
        else lookup(point, "turns.completed") in (0, MISSING)
    )
    nullable = NULL_WITHOUT_SOCKETS if idle else NULL_WITHOUT_TURNS
    problems = []
    if point.get("scenario") == "chat" and not nothing_done and not point.get("cpu_by_kind"):
        problems.append(f"{where}: missing cpu_by_kind")
    for path in figures:
        value = lookup(point, path)
        if value is MISSING:
            problems.append(f"{where}: missing {path}")
        elif value is None and path == "persistence_lag_ms":
            if system in STATS_REQUIRED:
                problems.append(f"{where}: no persistence lag (stats document unreadable?)")
        elif value is None and not (nothing_done and path in nullable):
            problems.append(f"{where}: {path} is null")
    return problems


def _startup_problems(name: str, startup: Any) -> list[str]:
    if not isinstance(startup, dict):
        return [f"{name}: missing startup"]
    wanted = (*STARTUP_FIGURES, "serve_ready_s") if name in RAY_SYSTEMS else STARTUP_FIGURES
    problems = [
        f"{name}/startup: {key} is missing or null" for key in wanted if startup.get(key) is None
    ]
    if startup.get("error"):
        problems.append(f"{name}/startup: failed: {startup['error']}")
    return problems


def validate_results(doc: dict[str, Any]) -> list[str]:
    """Every figure the suite promises that `doc` lacks, one line each (empty: complete)."""
    problems = [
        f"missing {key}"
        for key in ("schema", "client", "sim", "settings", "systems", "targets")
        if key not in doc
    ]
    settings = doc.get("settings", {})
    for name in settings.get("systems", []):
        system = doc.get("systems", {}).get(name)
        if system is None:
            problems.append(f"{name}: missing")
            continue
        if system.get("status") != "ok":
            problems.append(f"{name}: {system.get('status')}: {system.get('error')}")
            continue
        problems += _startup_problems(name, system.get("startup"))
        for scenario in settings.get("scenarios", []):
            where = f"{name}/{scenario}"
            entry = system.get("scenarios", {}).get(scenario)
            if entry is None:
                problems.append(f"{where}: missing")
                continue
            if "error" in entry:
                problems.append(f"{where}: failed: {entry['error']}")
                continue
            points = entry.get("points") or []
            if not points:
                problems.append(f"{where}: no points")
            for index, point in enumerate(points):
                problems += _point_problems(f"{where}[{index}]", name, point)
            done = sum(_count(p, "turns.completed") + _count(p, "sockets.held") for p in points)
            if points and done == 0:
                problems.append(f"{where}: nothing completed (no turn, no held socket)")
            if scenario == "ramp" and not isinstance(entry.get("users_at_slo"), int):
                problems.append(f"{where}: missing users_at_slo")
    return problems


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Every figure, as JSON."""
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")


def _num(value: Any, digits: int = 0) -> str:
    if value is None or value is MISSING:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _trio(point: dict[str, Any], name: str, digits: int = 0) -> str:
    return " / ".join(_num(lookup(point, f"{name}.p{p}"), digits) for p in (50, 90, 99))


def _errors(point: dict[str, Any]) -> str:
    kinds = lookup(point, "errors.kinds")
    if not kinds or kinds is MISSING:
        return "0"
    return ", ".join(f"{kind} x{count}" for kind, count in kinds.items())


def _ratio_cell(point: dict[str, Any], top: str, bottom: str, digits: int = 0) -> str:
    return f"{_num(lookup(point, top), digits)} / {_num(lookup(point, bottom), digits)}"


def _label(point: dict[str, Any]) -> str:
    return str(point.get("scenario", "?"))


def _latency_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| system | scenario | users | turns ok/planned | TTFT p50/p90/p99 ms "
        "| e2e p50/p90/p99 ms | e2e x floor p50/p90/p99 | turns/s | deltas/s | errors "
        "| server CPU ms/turn | server CPU s | client CPU s | server peak MB "
        "| persist lag p50/p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for point in iter_points(doc):
        if point.get("scenario") == "idle":
            continue
        per_turn = lookup(point, "server.cpu_s_per_turn")
        lag = point.get("persistence_lag_ms") or {}
        lines.append(
            "| "
            + " | ".join(
                [
                    str(point.get("system")),
                    _label(point),
                    _num(point.get("users")),
                    _ratio_cell(point, "turns.completed", "turns.planned"),
                    _trio(point, "ttft_ms"),
                    _trio(point, "e2e_ms"),
                    _trio(point, "e2e_x_floor", 2),
                    _num(point.get("turns_per_s"), 1),
                    _num(point.get("deltas_per_s"), 0),
                    _errors(point),
                    _num(None if per_turn in (None, MISSING) else per_turn * 1000, 1),
                    _num(lookup(point, "server.cpu_s"), 1),
                    _num(lookup(point, "client.cpu_s"), 1),
                    _num(lookup(point, "server.peak_rss_mb"), 0),
                    f"{_num(lag.get('p50'), 1)} / {_num(lag.get('p99'), 1)}",
                ]
            )
            + " |"
        )
    return lines


def _ramp_step(point: dict[str, Any]) -> str:
    if lookup(point, "slo.held") is True:
        verdict = ""
    elif lookup(point, "slo.stopped_early") is True:
        verdict = " (missed, stopped early)"
    else:
        verdict = " (missed)"
    return f"{point.get('users')}: {_num(lookup(point, 'ttft_ms.p99'))}{verdict}"


def _ramp_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| system | users at SLO | steps (users: p99 TTFT ms, held?) | stopped |",
        "|---|---:|---|---|",
    ]
    for name, system in doc.get("systems", {}).items():
        ramp = system.get("scenarios", {}).get("ramp")
        if not ramp or "points" not in ramp:
            continue
        steps = ", ".join(_ramp_step(p) for p in ramp["points"])
        lines.append(
            f"| {name} | {_num(ramp.get('users_at_slo'))} | {steps} | {ramp.get('stopped')} |"
        )
    return lines


def _idle_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| system | sockets requested | held | server KB/socket | client KB/socket "
        "| server RSS before / held MB | errors |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for point in iter_points(doc):
        if point.get("scenario") != "idle":
            continue
        cells = [
            str(point.get("system")),
            _num(lookup(point, "sockets.requested")),
            _num(lookup(point, "sockets.held")),
            _num(point.get("server_kb_per_socket"), 1),
            _num(point.get("client_kb_per_socket"), 1),
            _ratio_cell(point, "server_rss_before_mb", "server_rss_held_mb"),
            _errors(point),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _startup_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| system | launch -> serve.run returned s | launch -> /readyz 200 s "
        "| first chat TTFT ms | warm chats TTFT median ms | first / warm | first chat e2e ms "
        "| errors (first, warm) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, system in doc.get("systems", {}).items():
        startup = system.get("startup")
        if not isinstance(startup, dict):
            continue
        errors = f"{startup.get('first_chat_error') or 0}, {startup.get('warm_chat_errors', '-')}"
        cells = [
            name,
            _num(startup.get("serve_ready_s"), 1),
            _num(startup.get("ready_s"), 1),
            _num(startup.get("first_chat_ttft_ms"), 0),
            _num(startup.get("warm_chat_ttft_ms"), 0),
            _num(startup.get("first_x_warm_ttft"), 2),
            _num(startup.get("first_chat_e2e_ms"), 0),
            errors,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pair(point: dict[str, Any], name: str, digits: int) -> str:
    return " / ".join(_num(lookup(point, f"{name}.p{p}"), digits) for p in (50, 99))


def _headline_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| scenario | users | system | TTFT x floor p50/p99 | e2e x floor p50/p99 "
        "| e2e p50/p99 ms | turns ok/planned | errors |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    rows = [p for p in iter_points(doc) if p.get("scenario") in ("chat", "stagger")]
    rows.sort(key=lambda p: (p.get("scenario") != "chat", p.get("users", 0)))
    for point in rows:
        cells = [
            str(point.get("scenario")),
            _num(point.get("users")),
            str(point.get("system")),
            _pair(point, "ttft_x_floor", 2),
            _pair(point, "e2e_x_floor", 2),
            _pair(point, "e2e_ms", 0),
            _ratio_cell(point, "turns.completed", "turns.planned"),
            _errors(point),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _kinds_in(points: list[dict[str, Any]]) -> list[str]:
    seen = {kind for p in points for kind in (p.get("cpu_by_kind") or {})}
    return [k for k in KINDS if k in seen] + sorted(seen - set(KINDS))


def _cpu_split_table(doc: dict[str, Any]) -> list[str]:
    points = [p for p in iter_points(doc) if p.get("scenario") == "chat"]
    kinds = _kinds_in(points)
    lines = [
        "| system | users | total | " + " | ".join(kinds) + " |",
        "|---|---:|---:|" + "---:|" * len(kinds),
    ]
    for point in points:
        split = point.get("cpu_by_kind") or {}
        per_turn = lookup(point, "server.cpu_s_per_turn")
        total = None if per_turn in (None, MISSING) else per_turn * 1000
        cells = [str(point.get("system")), _num(point.get("users")), _num(total, 1)]
        cells += [_num((split.get(kind) or {}).get("ms_per_turn"), 1) for kind in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown report: headline targets first, then startup, chat, CPU split, every point."""
    sim = doc.get("sim", {})
    client = doc.get("client", {})
    targets = doc.get("targets", [])
    out = [
        "# raychat benchmark",
        "",
        f"Client: {client.get('description', '?')}; client CPU "
        f"{_num(client.get('cpu_s_total'), 1)} s in total (per point below, next to the server's).",
        f"Simulated model: TTFT {_num(sim.get('ttft_ms'))} ms, {_num(sim.get('tokens_per_s'))} "
        f"tokens/s, {_num(sim.get('reply_tokens'))} reply tokens: floor "
        f"{_num(sim.get('floor_ms'))} ms. Server CPU sums every server process, Ray's included.",
        "`raychat` is the default path (`serve run serve_app:app`: HAProxy on Linux), "
        "`raychat-proxy` Serve's Python proxy, `raychat-direct` clients on the replica's port.",
        "",
        "## Targets: what users get (ratios within this run, `raychat` = the default path)",
        "",
        *render_targets(targets, "headline"),
        "",
        "## Start-up: ready, then the first chat and warm chats (fresh users, one at a time)",
        "",
        *_startup_table(doc),
        "",
        "## Chat and staggered starts",
        "",
        *_headline_table(doc),
        "",
        "## Where the CPU of a turn goes (chat; server CPU ms per completed turn, by process)",
        "",
        *_cpu_split_table(doc),
        "",
        "## Latency and throughput",
        "",
        *_latency_table(doc),
        "",
        f"## Ramp: users at SLO (p99 TTFT <= simulated TTFT + "
        f"{_num(lookup(doc, 'settings.slo_margin_ms'))} ms)",
        "",
        *_ramp_table(doc),
        "",
        "## Idle open sockets",
        "",
        *_idle_table(doc),
        "",
        "## Earlier targets",
        "",
        *render_targets(targets, "earlier"),
    ]
    problems = doc.get("problems") or []
    if problems:
        out += ["", "## Incomplete or failed", "", *(f"- {p}" for p in problems)]
    return "\n".join(out) + "\n"


def _curve_points(system: dict[str, Any]) -> list[dict[str, Any]]:
    scenarios = system.get("scenarios", {})
    points = [p for p in scenarios.get("ramp", {}).get("points", []) if p.get("e2e_ms")]
    if not points:
        points = [p for p in scenarios.get("chat", {}).get("points", []) if p.get("e2e_ms")]
    return sorted(points, key=lambda p: p.get("users", 0))


def plot_latency(doc: dict[str, Any], path: Path) -> None:
    """Two panels: e2e p50 (solid) / p99 (dashed) against users, and turns/s against users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, system) in enumerate(doc.get("systems", {}).items()):
        color = colors[index % len(colors)]
        points = _curve_points(system)
        users = [p["users"] for p in points]
        for pct, style in (("p50", "-"), ("p99", "--")):
            ys = [lookup(p, f"e2e_ms.{pct}") for p in points]
            xs = [u for u, y in zip(users, ys, strict=True) if y is not None]
            lat.plot(
                xs,
                [y for y in ys if y is not None],
                style,
                marker="o",
                color=color,
                label=f"{name} {pct}",
            )
        thr.plot(
            users,
            [p.get("turns_per_s", 0) for p in points],
            "-",
            marker="o",
            color=color,
            label=name,
        )
        for burst in system.get("scenarios", {}).get("burst", {}).get("points", []):
            thr.plot(
                [burst["users"]],
                [burst.get("turns_per_s", 0)],
                "*",
                markersize=12,
                color=color,
                label=f"{name} burst",
            )
    floor = lookup(doc, "sim.floor_ms")
    if isinstance(floor, int | float):
        lat.axhline(floor, color="grey", linewidth=0.8, label="model floor")
    drawn = [y for line in lat.get_lines() for y in line.get_ydata() if y]
    wide = bool(drawn) and max(drawn) / min(drawn) > 4  # log only when it spans a wide range
    if wide:
        lat.set_yscale("log")
    ticks = sorted({p["users"] for s in doc.get("systems", {}).values() for p in _curve_points(s)})
    for axis, title, ylabel in (
        (lat, "end-to-end latency (ramp; chat if no ramp)", "ms"),
        (thr, "throughput (lines: ramp; stars: burst)", "turns/s"),
    ):
        if ticks:  # a log axis without data cannot be drawn (an idle-only run)
            axis.set_xscale("log")
            axis.set_xticks(ticks)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("simulated users")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    if wide:
        lat.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        lat.yaxis.set_major_formatter(ScalarFormatter())
        lat.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
