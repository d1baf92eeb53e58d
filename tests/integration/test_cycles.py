"""Many connect/chat/disconnect cycles, some cut abruptly: nothing stays open or running.

Each cycle is a fresh user (and session), so whatever a shard, agent or writer
keeps per user shows as growth: after the cycles, the sizes every actor reports
(presence, lanes, run records, caches, run buffers, known users) must be back
to what the users still connected need, or within their bounds.

The grace period: the session's service runs with `run_grace_s=2` (its shards
and agents are shared by every test module; `side_app` changes only ingress
settings). With the default 300 s, ended runs' records and buffers would
legitimately stay for the whole test, so nothing they hold could be told from a
leak within it; with 2 s they must be gone seconds after the cycles, which
the size checks below assert.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets

from actors.remote import actor_name
from tests.integration.conftest import REPLICAS, Service
from tests.integration.processes import MIB, rss_by_pid

pytestmark = pytest.mark.ray

CYCLES = 1000
AT_ONCE = 25
WARMUP = 200  # cycles before the first RSS reading: caches, pools and arenas fill up
SERVICE_PROCESSES = ("ServeReplica:raychat:", "ShardActor", "AgentActor", "PersistenceActor")
# The plateau: after the warm-up, no service process may grow by more than this over
# the remaining 800 cycles (each replica and shard sees about 400 of them, each agent
# about 400 runs, the persistence actor all 800). Measured on a 2-core machine: 1-3 MiB
# per process (allocator noise, bounded latency windows). A leak of about 20 KiB per
# socket or run in one process (a socket's handler state with its tasks, or a run's
# events and agent state kept after it ended) adds 8 MiB and fails it; smaller leaks
# are below what RSS can tell apart from noise. Serve's own ProxyActor is not asserted
# (it grew ~11 MiB, at a falling rate, in the same measurement).
RSS_GROWTH_MAX = 8 * MIB
DRAINED_S = 30.0  # the run grace (2 s) and a few housekeeping rounds, on a busy machine


async def shard_stats(service: Service) -> list[dict[str, Any]]:
    """Each shard's own stats (sizes the service-wide document does not carry)."""
    import ray

    settings = service.settings
    shards = [
        ray.get_actor(actor_name(settings, "shard", i), namespace=settings.namespace)
        for i in range(settings.shards)
    ]
    for shard in shards:  # drop the records of runs past their grace now, not on a next chat
        await shard.cleanup.remote()
    return list(await asyncio.gather(*(shard.stats.remote() for shard in shards)))


async def drained(
    service: Service, http: httpx.AsyncClient, users_before: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Poll until the cycles' users are forgotten where they must be; the last stats."""
    deadline = asyncio.get_running_loop().time() + DRAINED_S
    while True:
        shards = await shard_stats(service)
        stats: dict[str, Any] = (await http.get("/api/websocket/performance/stats")).json()
        agents = stats["agent_manager"]
        if (
            sum(s["lanes"] for s in shards) == 0
            and sum(s["run_records"] for s in shards) == 0
            and sum(s["presence"]["users"] for s in shards) <= users_before
            and agents["finished_runs"] == 0
            and agents["buffer_bytes"] == 0
        ) or asyncio.get_running_loop().time() > deadline:
            return shards, stats
        await asyncio.sleep(0.2)  # poll for the condition, bounded by the deadline


async def one_cycle(service: Service, index: int) -> None:
    async with websockets.connect(service.ws_url(f"u-cycle-{index}")) as ws:  # a fresh user
        await ws.send(
            json.dumps({"type": "chat", "text": f"cycle {index}", "session_id": f"c{index}"})
        )
        async with asyncio.timeout(60):
            while True:
                event = json.loads(await ws.recv())
                if index % 4 == 0 and event["type"] == "message.delta":
                    # Abrupt reset mid-stream: no close frame, the run must still finish.
                    assert ws.transport is not None
                    ws.transport.abort()
                    return
                if event["type"] in ("run.completed", "run.failed", "error"):
                    assert event["type"] == "run.completed", event
                    return


async def test_a_thousand_cycles_leave_nothing_open(service: Service) -> None:
    gate = asyncio.Semaphore(AT_ONCE)

    async def gated(index: int) -> None:
        async with gate:
            try:
                await one_cycle(service, index)
            except websockets.ConnectionClosed:
                if index % 4:  # only the aborted ones may see their socket go
                    raise

    admin = service.admin_headers()
    async with httpx.AsyncClient(base_url=service.http, headers=admin, timeout=30) as http:
        before = (await http.get("/api/websocket/performance/stats")).json()
        users_before = sum(s["presence"]["users"] for s in await shard_stats(service))

        async def settled() -> dict[str, Any]:
            for _ in range(300):  # runs of aborted sockets finish, closes reach the shards
                stats: dict[str, Any] = (await http.get("/api/websocket/performance/stats")).json()
                if (
                    stats["runs"]["active"] == 0
                    and stats["connections"]["active"] == before["connections"]["active"]
                ):
                    break
                await asyncio.sleep(0.1)  # poll for the condition, bounded
            return stats

        await asyncio.gather(*(gated(i) for i in range(WARMUP)))
        await settled()
        await drained(service, http, users_before)
        warm = rss_by_pid(*SERVICE_PROCESSES)
        await asyncio.gather(*(gated(i) for i in range(WARMUP, CYCLES)))
        stats = await settled()
        shards, after = await drained(service, http, users_before)
        final = rss_by_pid(*SERVICE_PROCESSES)
    assert stats["runs"]["active"] == 0 and stats["runs"]["queued"] == 0
    assert stats["connections"]["active"] == before["connections"]["active"]
    assert stats["connections"]["opened"] - before["connections"]["opened"] >= CYCLES
    stored = service.query(
        "SELECT status, COUNT(*) FROM messages WHERE user_id LIKE 'u-cycle-%' "
        "AND role = 'assistant' GROUP BY status"
    )
    assert stored == [("completed", CYCLES)]
    # Bounded by design: nothing is left for the users that are gone ...
    settings = service.settings
    assert sum(s["lanes"] for s in shards) == 0, shards
    assert sum(s["run_records"] for s in shards) == 0, shards
    assert sum(s["presence"]["users"] for s in shards) <= users_before, shards
    assert all(s["presence"]["replicas"] <= REPLICAS + 4 for s in shards), shards  # + side apps
    agents = after["agent_manager"]
    assert agents["finished_runs"] == 0 and agents["buffer_bytes"] == 0, agents
    # ... and what is kept for them on purpose stays within its bounds.
    for shard in shards:
        sessions, contexts = shard["session_cache"], shard["user_context_cache"]
        assert 0 < sessions["bytes"] <= settings.session_cache_max_bytes, sessions
        assert sessions["size"] <= settings.session_cache_max, sessions
        assert contexts["size"] <= settings.context_cache_max, contexts
    persistence = after["persistence"]
    assert persistence["known_users"] <= persistence["known_max"], persistence
    # Memory returns to a plateau: the same processes, none grown past the bound.
    assert len(warm) == REPLICAS + settings.shards + settings.agent_actors + 1, warm
    assert set(final) == set(warm), "a service process restarted during the cycles"
    growth = {f"{p.kind} ({pid})": p.rss - warm[pid].rss for pid, p in final.items()}
    shown = {kind: round(grown / MIB, 1) for kind, grown in growth.items()}
    print(f"\nRSS growth after warm-up (MiB): {shown}")  # seen with -s
    assert {k: v for k, v in growth.items() if v > RSS_GROWTH_MAX} == {}
