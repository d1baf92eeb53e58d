"""The performance targets, checked against a results document (reported, never tuned).

Two groups. `headline` (issue 10, "the benchmark measures what users get"):
ratios within one run for the default `raychat` system against the
`single-process` and `minimal` baselines measured in the same run, plus the
first chat after ready against warm chats. `earlier`: the absolute targets of
the first benchmark issue, for `raychat` and `raychat-direct`. Every check is
met, missed or not measured; none is ever turned into a failure.
"""

from __future__ import annotations

from typing import Any

HEADLINE_SYSTEM = "raychat"
HEADLINE_CHAT_USERS = (300, 500)
CHAT_X_SINGLE = 0.7  # raychat's chat e2e p50 and p99 <= this x single-process's
RAMP_X_SINGLE = 2.0
BURST_X_SINGLE_HEADLINE = 1.5
FIRST_CHAT_X_WARM = 1.5

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
    name: str,
    system: str,
    value: Any,
    limit: Any,
    ok: bool | None,
    detail: str,
    group: str = "earlier",
) -> dict[str, Any]:
    status = "not measured" if ok is None else "met" if ok else "missed"
    return {
        "name": name,
        "system": system,
        "group": group,
        "status": status,
        "value": value,
        "limit": limit,
        "detail": detail,
    }


def _chat_point(doc: dict[str, Any], system: str, users: int) -> dict[str, Any] | None:
    chat = _scenario(doc, system, "chat")
    return next((p for p in (chat or {}).get("points", []) if p.get("users") == users), None)


def _e2e(point: dict[str, Any] | None, pct: str) -> float | None:
    value = ((point or {}).get("e2e_ms") or {}).get(pct)
    return float(value) if isinstance(value, int | float) else None


def _vs(system: str, value: float | None, other: str, theirs: float | None, users: int) -> str:
    missing = [name for name, v in ((system, value), (other, theirs)) if v is None]
    if missing:
        return f"{' and '.join(missing)}: chat was not run at {users} users"
    return f"{value} ms vs {other} {theirs} ms"


def _headline_chat(doc: dict[str, Any], users: int) -> list[dict[str, Any]]:
    system = HEADLINE_SYSTEM
    mine = _chat_point(doc, system, users)
    single = _chat_point(doc, "single-process", users)
    minimal = _chat_point(doc, "minimal", users)
    checks = []
    for pct in ("p50", "p99"):
        value = _e2e(mine, pct)
        for other, point, factor in (
            ("single-process", single, CHAT_X_SINGLE),
            ("minimal", minimal, 1.0),
        ):
            theirs = _e2e(point, pct)
            limit = None if theirs is None else round(factor * theirs, 1)
            ok = None if value is None or limit is None else value <= limit
            shown = "" if factor == 1.0 else f"{factor} x "
            ratio = f" = {value / theirs:.2f} x" if value is not None and theirs else ""
            checks.append(
                _check(
                    f"chat@{users} {pct} e2e <= {shown}{other}",
                    system,
                    value,
                    limit,
                    ok,
                    _vs(system, value, other, theirs, users) + ratio,
                    "headline",
                )
            )
    errors = ((mine or {}).get("errors") or {}).get("total")
    kinds = ((mine or {}).get("errors") or {}).get("kinds") or {}
    checks.append(
        _check(
            f"chat@{users} zero errors",
            system,
            errors,
            0,
            None if errors is None else errors == 0,
            f"chat was not run at {users} users" if mine is None else f"{errors} errors {kinds}",
            "headline",
        )
    )
    return checks


def _headline_ramp(doc: dict[str, Any]) -> dict[str, Any]:
    system = HEADLINE_SYSTEM
    mine = (_scenario(doc, system, "ramp") or {}).get("users_at_slo")
    single = (_scenario(doc, "single-process", "ramp") or {}).get("users_at_slo")
    ok = None if mine is None or single is None else mine >= RAMP_X_SINGLE * single
    return _check(
        "ramp users at SLO >= 2 x single-process",
        system,
        mine,
        None if single is None else RAMP_X_SINGLE * single,
        ok,
        f"{_shown(mine)} vs single-process {_shown(single)}",
        "headline",
    )


def _burst_rate(doc: dict[str, Any], name: str) -> float | None:
    points = (_scenario(doc, name, "burst") or {}).get("points") or [{}]
    value = points[0].get("turns_per_s")
    return float(value) if isinstance(value, int | float) else None


def _headline_burst(doc: dict[str, Any]) -> dict[str, Any]:
    return _burst_check(doc, HEADLINE_SYSTEM, BURST_X_SINGLE_HEADLINE, "headline")


def _headline_first_chat(doc: dict[str, Any]) -> dict[str, Any]:
    system = HEADLINE_SYSTEM
    entry = doc.get("systems", {}).get(system, {})
    startup = (entry.get("startup") or {}) if entry.get("status") == "ok" else {}
    first, warm = startup.get("first_chat_ttft_ms"), startup.get("warm_chat_ttft_ms")
    limit = None if warm is None else round(FIRST_CHAT_X_WARM * warm, 1)
    ok = None if first is None or limit is None else first <= limit
    ratio = f" = {first / warm:.2f} x" if first is not None and warm else ""
    return _check(
        "first-chat TTFT <= 1.5 x warm TTFT",
        system,
        first,
        limit,
        ok,
        f"first chat {_shown(first)} ms vs warm median {_shown(warm)} ms{ratio}",
        "headline",
    )


def headline_checks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's targets for the default `raychat` system, as ratios within this run."""
    checks: list[dict[str, Any]] = []
    for users in HEADLINE_CHAT_USERS:
        checks += _headline_chat(doc, users)
    checks.append(_headline_ramp(doc))
    checks.append(_headline_burst(doc))
    checks.append(_headline_first_chat(doc))
    return checks


def _chat_checks(doc: dict[str, Any], system: str) -> list[dict[str, Any]]:
    point = _chat_point(doc, system, CHAT_USERS)
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


def _burst_check(
    doc: dict[str, Any], system: str, factor: float = BURST_X_SINGLE, *group: str
) -> dict[str, Any]:
    """`system`'s burst turns/s against `factor` x the single-process app's."""
    mine, single = _burst_rate(doc, system), _burst_rate(doc, "single-process")
    ok = None if mine is None or single is None else mine >= factor * single
    ratio = f" = {mine / single:.2f} x" if mine is not None and single else ""
    return _check(
        f"burst turns/s >= {factor:g} x single-process",
        system,
        mine,
        None if single is None else round(factor * single, 3),
        ok,
        f"{_shown(mine)} vs single-process {_shown(single)} turns/s{ratio}",
        *group,
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
    """Headline targets (when `raychat` ran), then the earlier ones: met, missed, not measured."""
    checks: list[dict[str, Any]] = []
    if HEADLINE_SYSTEM in doc.get("systems", {}):
        checks += headline_checks(doc)
    for system in TARGET_SYSTEMS:
        if system not in doc.get("systems", {}):
            continue
        checks += _chat_checks(doc, system)
        checks += _ramp_checks(doc, system)
        checks.append(_burst_check(doc, system))
        checks.append(_idle_check(doc, system))
    return checks


def _bullet(check: dict[str, Any]) -> str:
    return f"- **{check['status']}** {check['system']}: {check['name']}: {check['detail']}"


def render_targets(checks: list[dict[str, Any]], group: str | None = None) -> list[str]:
    """One Markdown bullet per check (of `group` only, when given)."""
    chosen = [c for c in checks if group is None or c.get("group", "earlier") == group]
    if not chosen:
        return ["- no raychat system was measured"]
    return [_bullet(c) for c in chosen]
