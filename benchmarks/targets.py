"""The issue's performance targets, checked against a results document (reported, never tuned)."""

from __future__ import annotations

from typing import Any

TARGET_SYSTEMS = ("raychat", "raychat-direct")
CHAT_USERS = 500
CHAT_P50_X_FLOOR = 1.25
CHAT_P99_X_FLOOR = 2.0
RAMP_USERS_AT_SLO = 1000
RAMP_X_SERIAL = 10.0
BURST_X_SINGLE = 1.3
IDLE_SOCKETS = 2000


def _shown(value: Any) -> str:
    return "not run" if value is None else str(value)


def _scenario(doc: dict[str, Any], system: str, scenario: str) -> dict[str, Any] | None:
    entry = doc.get("systems", {}).get(system, {})
    if entry.get("status") != "ok":
        return None
    found = entry.get("scenarios", {}).get(scenario)
    return found if isinstance(found, dict) and "points" in found else None


def _check(
    name: str, system: str, value: Any, limit: Any, ok: bool | None, detail: str
) -> dict[str, Any]:
    status = "not measured" if ok is None else "met" if ok else "missed"
    return {
        "name": name,
        "system": system,
        "status": status,
        "value": value,
        "limit": limit,
        "detail": detail,
    }


def _chat_checks(doc: dict[str, Any], system: str) -> list[dict[str, Any]]:
    chat = _scenario(doc, system, "chat")
    point = next((p for p in (chat or {}).get("points", []) if p.get("users") == CHAT_USERS), None)
    why = "chat was not run at 500 users" if point is None else ""
    ratio = (point or {}).get("e2e_x_floor", {})
    p50, p99 = ratio.get("p50"), ratio.get("p99")
    errors = (point or {}).get("errors", {}).get("total")
    return [
        _check(
            "chat@500 p50 e2e <= 1.25 x floor",
            system,
            p50,
            CHAT_P50_X_FLOOR,
            None if p50 is None else p50 <= CHAT_P50_X_FLOOR,
            why or f"p50 = {p50} x floor",
        ),
        _check(
            "chat@500 p99 e2e <= 2 x floor",
            system,
            p99,
            CHAT_P99_X_FLOOR,
            None if p99 is None else p99 <= CHAT_P99_X_FLOOR,
            why or f"p99 = {p99} x floor",
        ),
        _check(
            "chat@500 zero errors",
            system,
            errors,
            0,
            None if errors is None else errors == 0,
            why or f"{errors} errors {point.get('errors', {}).get('kinds') if point else ''}",
        ),
    ]


def _ramp_checks(doc: dict[str, Any], system: str) -> list[dict[str, Any]]:
    mine = (_scenario(doc, system, "ramp") or {}).get("users_at_slo")
    serial = (_scenario(doc, "serial", "ramp") or {}).get("users_at_slo")
    single = (_scenario(doc, "single-process", "ramp") or {}).get("users_at_slo")
    checks = [
        _check(
            "ramp users at SLO >= 1,000",
            system,
            mine,
            RAMP_USERS_AT_SLO,
            None if mine is None else mine >= RAMP_USERS_AT_SLO,
            f"{_shown(mine)} users held",
        ),
    ]
    ok = None if mine is None or serial is None else mine >= RAMP_X_SERIAL * serial
    detail = f"{_shown(mine)} vs serial {_shown(serial)}"
    if serial == 0:
        detail += " (serial held no step, even 1 user: the ratio is undefined)"
    checks.append(
        _check(
            "ramp users at SLO >= 10 x serial",
            system,
            mine,
            None if serial is None else RAMP_X_SERIAL * serial,
            ok,
            detail,
        )
    )
    ok = None if mine is None or single is None else mine > single
    checks.append(
        _check(
            "ramp users at SLO > single-process",
            system,
            mine,
            single,
            ok,
            f"{_shown(mine)} vs single-process {_shown(single)}",
        )
    )
    return checks


def _burst_check(doc: dict[str, Any], system: str) -> dict[str, Any]:
    def rate(name: str) -> float | None:
        points = (_scenario(doc, name, "burst") or {}).get("points") or [{}]
        value = points[0].get("turns_per_s")
        return float(value) if isinstance(value, int | float) else None

    mine, single = rate(system), rate("single-process")
    ok = None if mine is None or single is None else mine >= BURST_X_SINGLE * single
    ratio = f" = {mine / single:.2f} x" if mine is not None and single else ""
    return _check(
        "burst turns/s >= 1.3 x single-process",
        system,
        mine,
        None if single is None else BURST_X_SINGLE * single,
        ok,
        f"{_shown(mine)} vs single-process {_shown(single)} turns/s{ratio}",
    )


def _idle_check(doc: dict[str, Any], system: str) -> dict[str, Any]:
    points = (_scenario(doc, system, "idle") or {}).get("points") or [{}]
    held = points[0].get("sockets", {}).get("held")
    per_socket = points[0].get("server_kb_per_socket")
    ok = None if held is None else held >= IDLE_SOCKETS and per_socket is not None
    return _check(
        "2,000 idle sockets held, memory per socket reported",
        system,
        held,
        IDLE_SOCKETS,
        ok,
        f"{_shown(held)} held, {_shown(per_socket)} KB per socket (server RSS)",
    )


def check_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target for raychat (via the proxy) and raychat-direct: met, missed, not measured."""
    checks: list[dict[str, Any]] = []
    for system in TARGET_SYSTEMS:
        if system not in doc.get("systems", {}):
            continue
        checks += _chat_checks(doc, system)
        checks += _ramp_checks(doc, system)
        checks.append(_burst_check(doc, system))
        checks.append(_idle_check(doc, system))
    return checks


def render_targets(checks: list[dict[str, Any]]) -> list[str]:
    """One Markdown bullet per check."""
    if not checks:
        return ["- no raychat system was measured"]
    return [f"- **{c['status']}** {c['system']}: {c['name']}: {c['detail']}" for c in checks]
