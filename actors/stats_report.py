"""Merge the statistics of every actor into the shape PROTOCOL.md gives (pure logic)."""

from __future__ import annotations

from typing import Any

from actors.stats import percentiles


def _rate(hits: int, misses: int) -> float:
    total = hits + misses
    return round(hits / total, 4) if total else 0.0


def merge_stats(
    shards: list[dict[str, Any]],
    agents: list[dict[str, Any]],
    persistence: dict[str, Any],
    ingress: dict[str, Any],
) -> dict[str, Any]:
    """One statistics document from the per-actor reports."""
    connections = {"active": 0, "opened": 0, "closed": 0}
    session = {"size": 0, "hits": 0, "misses": 0}
    context = {"size": 0, "hits": 0, "misses": 0, "expired": 0, "evicted": 0}
    ttl_s = 0.0
    queued = resumed = interrupted = rejected = duplicates = lost = drained = 0
    for shard in shards:
        for key in connections:
            connections[key] += shard["connections"][key]
        for key in session:
            session[key] += shard["session_cache"][key]
        for key in context:
            context[key] += shard["user_context_cache"][key]
        ttl_s = shard["user_context_cache"]["ttl_s"]
        queued += shard["queued"]
        counts = shard["counts"]
        resumed += counts["resumed"]
        interrupted += counts["interrupted"]
        rejected += counts["rejected"]
        duplicates += counts["duplicates"]
        lost += counts.get("lost", 0)  # failed because the actor running them stopped
        drained += counts.get("drained", 0)  # queued runs failed by `raychat drain`
    ttft = [s for agent in agents for s in agent["ttft_samples"]]
    processing = [s for agent in agents for s in agent["processing_samples"]]
    names = sorted({name for agent in agents for name in agent["agents"]})
    return {
        "connections": connections,
        "runs": {
            "active": sum(a["active"] for a in agents),
            "queued": queued,
            "completed": sum(a["completed"] for a in agents),
            "failed": sum(a["failed"] for a in agents),
            "cancelled": sum(a["cancelled"] for a in agents),
            "resumed": resumed,
            "interrupted": interrupted,
            "rejected": rejected,
            "duplicates": duplicates,
            "lost": lost,
            "drained": drained,
            "processing_ms": percentiles(processing),
            "ttft_ms": percentiles(ttft),
        },
        "agent_manager": {
            "agents": names,
            "lookups": sum(a["lookups"] for a in agents),
            "instances_created": sum(a["instances_created"] for a in agents),
            "actors": len(agents),
            # Agent actors that have run the SDK once (a replica waits for it before ready).
            "warmed_up": sum(1 for a in agents if a.get("warmed_up")),
            "polls": sum(a["polls"] for a in agents),
            "events_sent": sum(a["events_sent"] for a in agents),
            "buffered_runs": sum(a["buffered_runs"] for a in agents),
            "buffers_evicted": sum(a.get("buffers_evicted", 0) for a in agents),
            "tokens_emitted": sum(a.get("tokens_emitted") or 0 for a in agents),
            # Sizes (bounded by design): what the run buffers and remembered outcomes hold.
            **{
                key: sum(a.get(key, 0) for a in agents)
                for key in (
                    "finished_runs",
                    "buffer_bytes",
                    "buffers_refused",
                    "subscribers",
                    "cursors",
                    "outcomes",
                    "outcome_bytes",
                    "store_retries",
                    "store_failures",
                )
            },
        },
        "session_cache": {**session, "hit_rate": _rate(session["hits"], session["misses"])},
        "user_context_cache": {
            **context,
            "hit_rate": _rate(context["hits"], context["misses"]),
            "ttl_s": ttl_s,
        },
        "persistence": persistence,
        "shards": [
            {
                "shard": shard["shard"],
                "users": shard["users"],
                "connected_users": shard["connected_users"],
                "connections": shard["connections"]["active"],
                "queued": shard["queued"],
                "runs": shard["runs"],
                # Sizes (bounded by design), where the shard reports them.
                **{
                    key: shard[key]
                    for key in (
                        "lanes",
                        "run_records",
                        "ended_runs_evicted",
                        "presence",
                        "loops",
                        "recovery",
                    )
                    if key in shard
                },
                "session_cache_bytes": shard.get("session_cache", {}).get("bytes", 0),
            }
            for shard in shards
        ],
        "ingress": ingress,
    }


def merge_persistence(writers: list[dict[str, Any]]) -> dict[str, Any]:
    """One `persistence` object from each writer's statistics (PROTOCOL.md's shape).

    Counts and queue depths add up; each commit-lag percentile is the worst
    writer's (the lag a user of that writer sees). `writers` keeps each one's.
    """
    if len(writers) == 1:
        return {**writers[0], "writers": writers}
    totals = {
        key: sum(writer[key] for writer in writers)
        for key in ("queue_depth", "written", "batches", "failed", "reads")
    }
    totals["writer_restarts"] = sum(writer.get("writer_restarts", 0) for writer in writers)
    lag_ms = {key: max(writer["lag_ms"][key] for writer in writers) for key in writers[0]["lag_ms"]}
    return {**totals, "lag_ms": lag_ms, "writers": writers}
