"""Pure figure computations: percentiles, the model floor, and the figures of one point."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.client import TurnRecord

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Floor:
    """What the simulated model alone costs a turn: the best any server can do."""

    ttft_ms: float
    e2e_ms: float

    @classmethod
    def of(cls, ttft_ms: float, reply_tokens: int, tokens_per_s: float) -> Floor:
        """floor = simulated TTFT + reply tokens / speed."""
        return cls(ttft_ms=ttft_ms, e2e_ms=ttft_ms + 1000.0 * reply_tokens / tokens_per_s)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least p% of values at or below it)."""
    if not values:
        return None
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))
    return float(ordered[max(rank, 1) - 1])


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, p50, p90, p99 and max of some latencies (None when there are none)."""
    out: dict[str, Any] = {"n": len(values)}
    out["mean"] = round(sum(values) / len(values), 3) if values else None
    for p in PERCENTILES:
        value = percentile(values, p)
        out[f"p{p}"] = None if value is None else round(value, 3)
    out["max"] = round(max(values), 3) if values else None
    return out


def ratios(summary: dict[str, Any], floor_ms: float) -> dict[str, float | None]:
    """Each percentile of `summary` divided by `floor_ms`."""
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        value = summary.get(f"p{p}")
        out[f"p{p}"] = None if value is None or floor_ms <= 0 else round(value / floor_ms, 3)
    return out


def per_second(count: float, window_s: float) -> float:
    """count / window, 0 for an empty window."""
    return round(count / window_s, 3) if window_s > 0 else 0.0


def latency_figures(records: Iterable[TurnRecord], floor: Floor) -> dict[str, Any]:
    """TTFT, end-to-end and acceptance latencies, and their ratios to the floor."""
    rows = list(records)
    ttft = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    e2e = [r.e2e_ms for r in rows if r.ok and r.e2e_ms is not None]
    accepted = [r.accepted_ms for r in rows if r.accepted_ms is not None]
    ttft_s, e2e_s = summarize(ttft), summarize(e2e)
    return {
        "ttft_ms": ttft_s,
        "e2e_ms": e2e_s,
        "accepted_ms": summarize(accepted),
        "ttft_x_floor": ratios(ttft_s, floor.ttft_ms),
        "e2e_x_floor": ratios(e2e_s, floor.e2e_ms),
    }


def point_figures(
    records: Sequence[TurnRecord],
    errors: Counter[str],
    *,
    users: int,
    window_s: float,
    floor: Floor,
    in_window: Sequence[TurnRecord] | None = None,
) -> dict[str, Any]:
    """Every latency, throughput and error figure of one point.

    `in_window` are the turns that count for throughput (default: every turn);
    latencies use every turn.
    """
    counted = records if in_window is None else in_window
    done = [r for r in counted if r.ok]
    sent = sum(1 for r in records if r.sent_at is not None)
    ok = sum(1 for r in records if r.ok)
    total_errors = sum(errors.values())
    kinds = sorted({r.kind for r in records})
    return {
        "users": users,
        "turns": {
            "planned": len(records),
            "sent": sent,
            "completed": ok,
            "failed": len(records) - ok,
        },
        "window_s": round(window_s, 3),
        **latency_figures(records, floor),
        "turns_per_s": per_second(len(done), window_s),
        "deltas_per_s": per_second(sum(r.deltas for r in done), window_s),
        "deltas_per_turn": round(sum(r.deltas for r in done) / len(done), 2) if done else None,
        "queued_turns": sum(1 for r in records if r.queued),
        "errors": {
            "total": total_errors,
            "rate": round(total_errors / max(1, len(records)), 4),
            "kinds": dict(sorted(errors.items())),
        },
        "by_kind": {
            kind: latency_figures((r for r in records if r.kind == kind), floor) for kind in kinds
        },
    }


def persistence_lag(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """`persistence.lag_ms` of a PROTOCOL stats document, if it has one."""
    persistence = stats.get("persistence") if isinstance(stats, dict) else None
    lag = persistence.get("lag_ms") if isinstance(persistence, dict) else None
    if not isinstance(lag, dict):
        return None
    return {"p50": lag.get("p50"), "p99": lag.get("p99")}


def in_flight(stats: dict[str, Any] | None) -> int | None:
    """Work still on the server per its stats document; None if the document tells nothing.

    A document with run counts (PROTOCOL's `runs.active` + `runs.queued`) is
    trusted for those alone: an open-socket count is no sign of work there (and
    raychat's shard socket count has been seen to drift). Without run counts (the
    serial baseline), `active_turns` plus `connections.active`: a socket closed
    by the client stays open on the server until its queued turn is done.
    """
    if not isinstance(stats, dict):
        return None
    runs = stats.get("runs")
    if isinstance(runs, dict):
        found = [v for v in (runs.get("active"), runs.get("queued")) if isinstance(v, int)]
        if found:
            return sum(found)
    connections = stats.get("connections")
    turns = stats.get("active_turns")
    counts = [turns] if isinstance(turns, int) else []
    sockets = connections.get("active") if isinstance(connections, dict) else None
    if isinstance(sockets, int):
        counts.append(sockets)
    return sum(counts) if counts else None
