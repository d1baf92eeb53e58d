"""What a shard reports: its stats answer and the metrics it exports."""

from __future__ import annotations

from typing import Any

from actors import metrics
from actors.records import UserContext
from actors.replica_reports import ReplicaReports
from actors.shard.lanes import Lanes
from actors.shard.model import Run
from actors.shard.presence import Presence
from actors.shard.sessions import SessionCache
from actors.ttl_cache import TTLCache


def shard_stats(
    *,
    index: int,
    runs: dict[str, Run],
    presence: Presence,
    lanes: Lanes,
    counts: dict[str, int],
    contexts: TTLCache[str, UserContext],
    sessions: SessionCache,
    replicas: ReplicaReports,
) -> dict[str, Any]:
    """A shard's users, caches, runs and connections, and the replicas' latest reports."""
    statuses: dict[str, int] = {}
    for run in runs.values():
        statuses[run.status] = statuses.get(run.status, 0) + 1
    connected = presence.users()
    return {
        "shard": index,
        "users": len({run.user_id for run in runs.values()} | connected),
        "connected_users": len(connected),
        "connections": {
            "active": presence.sockets(),
            "opened": presence.opened,
            "closed": presence.closed,
        },
        "runs": statuses,
        "queued": lanes.queued(),
        "counts": dict(counts),
        "user_context_cache": contexts.stats(),
        "session_cache": sessions.stats(),
        "replicas": replicas.live(),
        # Sizes, bounded by design: lanes, presence (by replica liveness), run records.
        "lanes": len(lanes),
        "presence": presence.stats(),
        "run_records": len(runs),
    }


def export_metrics(
    exporter: metrics.CountExporter,
    *,
    lanes: Lanes,
    contexts: TTLCache[str, UserContext],
    sessions: SessionCache,
    counts: dict[str, int],
) -> None:
    """Export the shard's queued runs, cache lookups and runs it failed itself."""
    metrics.export_shard(
        exporter,
        queued=lanes.queued(),
        caches={
            "user_context": (contexts.hits, contexts.misses),
            "session": (sessions.hits, sessions.misses),
        },
        lost=counts["lost"],
        drained=counts["drained"],
    )
