"""merge_stats: per-actor reports merged into the document PROTOCOL.md specifies."""

from __future__ import annotations

from typing import Any

import pytest

from actors.stats_report import merge_stats


def shard_report(
    index: int,
    *,
    users: int,
    active: int,
    opened: int,
    closed: int,
    queued: int,
    session: tuple[int, int, int],
    context: tuple[int, int, int, int, int],
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A report shaped like `UserShard.stats()`."""
    s_size, s_hits, s_misses = session
    c_size, c_hits, c_misses, c_expired, c_evicted = context
    base_counts = {
        "accepted": 0,
        "duplicates": 0,
        "queued": 0,
        "rejected": 0,
        "interrupted": 0,
        "resumed": 0,
        "cancel_requests": 0,
        "lost": 0,
    }
    return {
        "shard": index,
        "users": users,
        "connected_users": min(users, active),
        "connections": {"active": active, "opened": opened, "closed": closed},
        "runs": {"streaming": 1},
        "queued": queued,
        "counts": {**base_counts, **(counts or {})},
        "user_context_cache": {
            "size": c_size,
            "hits": c_hits,
            "misses": c_misses,
            "hit_rate": round(c_hits / (c_hits + c_misses), 4) if c_hits + c_misses else 0.0,
            "expired": c_expired,
            "evicted": c_evicted,
            "ttl_s": 600.0,
        },
        "session_cache": {
            "size": s_size,
            "hits": s_hits,
            "misses": s_misses,
            "hit_rate": round(s_hits / (s_hits + s_misses), 4) if s_hits + s_misses else 0.0,
        },
    }


def agent_report(
    *,
    active: int,
    completed: int,
    failed: int,
    cancelled: int,
    ttft: list[float],
    processing: list[float],
    lookups: int,
    tokens: int | None,
) -> dict[str, Any]:
    """A report shaped like `AgentManager.stats()`."""
    return {
        "agents": ["assistant", "planner", "todo"],
        "lookups": lookups,
        "instances_created": 3,
        "active": active,
        "buffered_runs": active + completed,
        "buffers_expired": 0,
        "polls": 10,
        "events_sent": 100,
        "tokens_emitted": tokens,
        "buffer_bytes": 1000 * (active + completed),
        "cursors": active,
        "store_failures": failed,
        "started": active + completed + failed + cancelled,
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
        "ttft_samples": ttft,
        "processing_samples": processing,
    }


PERSISTENCE = {
    "queue_depth": 2,
    "written": 40,
    "batches": 9,
    "failed": 0,
    "reads": 5,
    "lag_ms": {"p50": 1.5, "p99": 7.0},
}


@pytest.fixture
def merged() -> dict[str, Any]:
    shards = [
        shard_report(
            0,
            users=3,
            active=2,
            opened=5,
            closed=3,
            queued=1,
            session=(2, 6, 2),
            context=(3, 4, 1, 2, 0),
            counts={"resumed": 1, "duplicates": 2, "lost": 2},
        ),
        shard_report(
            1,
            users=4,
            active=1,
            opened=2,
            closed=1,
            queued=0,
            session=(1, 2, 6),
            context=(4, 0, 3, 1, 1),
            counts={"rejected": 3, "interrupted": 1, "lost": 1, "drained": 4},
        ),
    ]
    agents = [
        agent_report(
            active=1,
            completed=5,
            failed=1,
            cancelled=0,
            ttft=[10.0, 20.0, 30.0],
            processing=[100.0, 200.0],
            lookups=7,
            tokens=50,
        ),
        agent_report(
            active=0,
            completed=3,
            failed=0,
            cancelled=2,
            ttft=[40.0],
            processing=[300.0, 400.0],
            lookups=4,
            tokens=None,
        ),
    ]
    return merge_stats(shards, agents, PERSISTENCE, {"replica": "x"})


def test_every_protocol_key_exists(merged: dict[str, Any]) -> None:
    assert {"active", "opened", "closed"} <= merged["connections"].keys()
    runs = merged["runs"]
    assert {"active", "queued", "completed", "failed", "cancelled"} <= runs.keys()
    assert {"p50", "p99"} <= runs["processing_ms"].keys()
    assert {"p50", "p99"} <= runs["ttft_ms"].keys()
    assert {"agents", "lookups", "instances_created"} <= merged["agent_manager"].keys()
    assert isinstance(merged["agent_manager"]["agents"], list)
    assert {"size", "hits", "misses", "hit_rate"} <= merged["session_cache"].keys()
    assert {"size", "hits", "misses", "hit_rate", "expired", "ttl_s"} <= merged[
        "user_context_cache"
    ].keys()
    assert {"queue_depth", "written", "batches", "lag_ms"} <= merged["persistence"].keys()
    assert {"p50", "p99"} <= merged["persistence"]["lag_ms"].keys()
    assert isinstance(merged["shards"], list)
    for entry in merged["shards"]:
        assert {"shard", "users"} <= entry.keys()


def test_protocol_numbers_are_numbers(merged: dict[str, Any]) -> None:
    def numbers(section: dict[str, Any], keys: list[str]) -> None:
        for key in keys:
            value = section[key]
            assert isinstance(value, int | float) and not isinstance(value, bool), key

    numbers(merged["connections"], ["active", "opened", "closed"])
    numbers(merged["runs"], ["active", "queued", "completed", "failed", "cancelled"])
    numbers(merged["runs"]["processing_ms"], ["p50", "p99"])
    numbers(merged["runs"]["ttft_ms"], ["p50", "p99"])
    numbers(merged["agent_manager"], ["lookups", "instances_created"])
    numbers(merged["session_cache"], ["size", "hits", "misses", "hit_rate"])
    numbers(
        merged["user_context_cache"], ["size", "hits", "misses", "hit_rate", "expired", "ttl_s"]
    )


def test_connections_are_summed(merged: dict[str, Any]) -> None:
    assert merged["connections"] == {"active": 3, "opened": 7, "closed": 4}


def test_runs_are_summed(merged: dict[str, Any]) -> None:
    runs = merged["runs"]
    assert (runs["active"], runs["queued"]) == (1, 1)
    assert (runs["completed"], runs["failed"], runs["cancelled"]) == (8, 1, 2)
    assert (runs["resumed"], runs["duplicates"], runs["rejected"], runs["interrupted"]) == (
        1,
        2,
        3,
        1,
    )
    assert (runs["lost"], runs["drained"]) == (3, 4)


def test_latency_percentiles_pool_every_agents_samples(merged: dict[str, Any]) -> None:
    assert merged["runs"]["ttft_ms"] == {"p50": 20.0, "p99": 40.0}
    assert merged["runs"]["processing_ms"] == {"p50": 200.0, "p99": 400.0}


def test_agent_manager_section(merged: dict[str, Any]) -> None:
    manager = merged["agent_manager"]
    assert manager["agents"] == ["assistant", "planner", "todo"]  # deduplicated, sorted
    assert manager["lookups"] == 11
    assert manager["instances_created"] == 6
    assert manager["actors"] == 2
    assert manager["tokens_emitted"] == 50  # None (a real model) counts as 0


def test_agent_sizes_are_summed(merged: dict[str, Any]) -> None:
    manager = merged["agent_manager"]
    assert manager["buffer_bytes"] == 9000  # 6000 + 3000
    assert manager["cursors"] == 1
    assert manager["store_failures"] == 1
    assert manager["outcome_bytes"] == 0  # a report without the key (an older actor) counts 0


def test_caches_are_summed_with_recomputed_hit_rates(merged: dict[str, Any]) -> None:
    assert merged["session_cache"] == {"size": 3, "hits": 8, "misses": 8, "hit_rate": 0.5}
    context = merged["user_context_cache"]
    assert (context["size"], context["hits"], context["misses"]) == (7, 4, 4)
    assert context["hit_rate"] == 0.5
    assert context["expired"] == 3
    assert context["ttl_s"] == 600.0


def test_persistence_and_ingress_pass_through(merged: dict[str, Any]) -> None:
    assert merged["persistence"] == PERSISTENCE
    assert merged["ingress"] == {"replica": "x"}


def test_shards_list_entries(merged: dict[str, Any]) -> None:
    assert [(s["shard"], s["users"]) for s in merged["shards"]] == [(0, 3), (1, 4)]
    assert [s["connections"] for s in merged["shards"]] == [2, 1]


def test_no_actors_gives_zeros() -> None:
    merged = merge_stats([], [], PERSISTENCE, {})
    assert merged["connections"] == {"active": 0, "opened": 0, "closed": 0}
    assert merged["runs"]["ttft_ms"] == {"p50": 0.0, "p99": 0.0}
    assert merged["session_cache"]["hit_rate"] == 0.0
    assert merged["user_context_cache"]["hit_rate"] == 0.0
    assert merged["agent_manager"]["agents"] == []
    assert merged["shards"] == []


def test_shard_sizes_pass_through_when_reported() -> None:
    shard = shard_report(
        0,
        users=1,
        active=1,
        opened=1,
        closed=0,
        queued=0,
        session=(1, 0, 1),
        context=(0, 0, 0, 0, 0),
    )
    shard["session_cache"]["bytes"] = 42
    shard |= {"lanes": 3, "run_records": 2, "presence": {"users": 1, "replicas": 1}}
    entry = merge_stats([shard], [], PERSISTENCE, {})["shards"][0]
    assert entry["lanes"] == 3 and entry["run_records"] == 2
    assert entry["presence"] == {"users": 1, "replicas": 1}
    assert entry["session_cache_bytes"] == 42
