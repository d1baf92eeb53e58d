"""Many connect/chat/disconnect cycles, some cut abruptly: nothing stays open, nothing grows.

Each cycle is a fresh user (and session), so whatever a replica, shard, agent or
writer keeps per user shows as growth. The app runs with its own actors and
the default run grace period (300 s, longer than the test): what the actors
keep for ended runs within it (run records, run buffers, cached histories and
contexts) is not dropped by time here, only by the bounds. The bounds are set
small, so each is reached during the warm-up. After it, every size the actors
report stays within its bound, and the Python heap each process still holds
(traced with `tracemalloc`) grows by less than a small leak per cycle would
add. The grace period's own expiry is unit-tested with a fake clock
(`tests/unit/test_shard_bounds.py`, `tests/unit/test_event_hub.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.integration.conftest import Cluster, Service, own_service
from tests.integration.processes import MIB, python_heap_tracing, rss_by_pid

pytestmark = pytest.mark.ray

WARMUP = 150  # cycles before tracing starts: every bound below is reached by then
CYCLES = 450  # in all: 300 traced
AT_ONCE = 25
REPLICAS = 2
# Small bounds (the defaults are tens of thousands of entries and hundreds of MiB).
BOUNDS: dict[str, Any] = {
    "ended_runs_max": 40,  # per shard: ~75 runs each in the warm-up
    "run_buffers_max": 40,  # per agent actor
    "run_buffers_max_bytes": 1024 * 1024,
    "session_cache_max": 40,
    "session_cache_max_bytes": 64 * 1024,
    "context_cache_max": 40,
}
# Python heap a process may still hold after the 300 traced cycles (each replica, shard
# and agent sees about 150 of them, the database actor all 300). What is kept on purpose
# and not bounded small here: the agents' remembered outcomes (10,000 per agent, ~350
# bytes each) and the writer's known users and sessions (100,000 each, LRU). Measured
# on a 2-core machine: at most ~280 KiB per process after 400 cycles. A leak of ~3.5 KiB
# per socket or run (a socket's handler state, a run's events or record kept past its
# bound) fails it.
HEAP_GROWTH_MAX = 512 * 1024
# RSS also counts the allocator and Ray's native buffers, which a fresh process fills
# for thousands of calls (2-5 MiB per 400 cycles at first on this machine): only a gross
# leak (~200 KiB per socket) is told apart from that.
RSS_GROWTH_MAX = 32 * MIB


@pytest.fixture(scope="module")
def cycles_service(
    ray_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("raychat-cycles")
    with own_service(
        ray_cluster, folder, "raychat-cycles", replicas=REPLICAS, persistence_writers=1, **BOUNDS
    ) as service:
        assert service.settings.run_grace_s == 300  # the default
        yield service


def app_processes(service: Service) -> list[Any]:
    """Handles of the app's ingress replicas and actors (not the session's other apps)."""
    import ray

    settings = service.settings
    app = service.prefix.strip("/")
    handles = [
        ray.get_actor(actor["name"], namespace="serve")
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and actor["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]
    handles.append(service.actor("persistence", 0))
    handles += [service.actor("shard", i) for i in range(settings.shards)]
    handles += [service.actor("agent", i) for i in range(settings.agent_actors)]
    return handles


def app_rss(processes: list[Any]) -> dict[int, int]:
    """RSS by pid of `processes` (the session's own app has processes of the same kinds)."""
    import ray

    pids = set(ray.get([h.__ray_call__.remote(lambda _self: os.getpid()) for h in processes]))
    return {pid: proc.rss for pid, proc in rss_by_pid("").items() if pid in pids}


async def shard_stats(service: Service) -> list[dict[str, Any]]:
    """Each shard's own stats (sizes the service-wide document does not carry)."""
    shards = [service.actor("shard", i) for i in range(service.settings.shards)]
    return list(await asyncio.gather(*(shard.stats.remote() for shard in shards)))


async def ends_recorded_after(service: Service, cycles: int) -> list[dict[str, Any]]:
    """The shards' stats once they have recorded `cycles` runs as ended (bounded poll).

    A shard learns of an end from the agent, the replica's next chat, or its
    check of the agents every `agent_check_s`: a moment after the client saw it.
    """
    for _ in range(150):
        shards = await shard_stats(service)
        if sum(s["run_records"] + s["ended_runs_evicted"] for s in shards) == cycles and all(
            s["runs"].keys() <= {"completed"} for s in shards
        ):
            break
        await asyncio.sleep(0.2)  # poll for the condition, bounded
    return shards


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


async def settled(http: httpx.AsyncClient) -> dict[str, Any]:
    """The stats once every run has ended and every socket's close has been seen (bounded)."""
    for _ in range(300):
        stats: dict[str, Any] = (await http.get("/api/websocket/performance/stats")).json()
        if stats["runs"]["active"] == 0 and stats["connections"]["active"] == 0:
            break
        await asyncio.sleep(0.1)  # poll for the condition, bounded
    return stats


async def test_cycles_leave_nothing_open_and_grow_nothing(cycles_service: Service) -> None:
    service = cycles_service
    gate = asyncio.Semaphore(AT_ONCE)

    async def gated(index: int) -> None:
        async with gate:
            try:
                await one_cycle(service, index)
            except websockets.ConnectionClosed:
                if index % 4:  # only the aborted ones may see their socket go
                    raise

    processes = app_processes(service)
    assert len(processes) == REPLICAS + 1 + service.settings.shards + service.settings.agent_actors
    admin = service.admin_headers()
    async with httpx.AsyncClient(base_url=service.http, headers=admin, timeout=30) as http:
        await asyncio.gather(*(gated(i) for i in range(WARMUP)))
        await settled(http)
        await ends_recorded_after(service, WARMUP)
        traced = python_heap_tracing(processes)
        warm = app_rss(processes)
        await asyncio.gather(*(gated(i) for i in range(WARMUP, CYCLES)))
        stats = await settled(http)
        shards = await ends_recorded_after(service, CYCLES)
        held = traced()
        final = app_rss(processes)
    assert stats["runs"]["active"] == 0 and stats["runs"]["queued"] == 0
    assert stats["connections"]["active"] == 0
    assert stats["connections"]["opened"] >= CYCLES
    stored = service.query(
        "SELECT status, COUNT(*) FROM messages WHERE role = 'assistant' GROUP BY status"
    )
    assert stored == [("completed", CYCLES)]
    # Nothing is left for the users that are gone ...
    assert sum(s["lanes"] for s in shards) == 0, shards
    assert sum(s["presence"]["users"] for s in shards) == 0, shards
    assert all(s["presence"]["replicas"] <= REPLICAS for s in shards), shards
    # ... and what is kept for them within the grace period stays within its bounds:
    # every run ended and none reached its grace, so each is either remembered or was
    # forgotten by the bound, and the bound was reached.
    settings = service.settings
    for shard in shards:
        assert shard["run_records"] <= settings.ended_runs_max, shard
        assert shard["ended_runs_evicted"] > 0, shard
    assert sum(s["run_records"] + s["ended_runs_evicted"] for s in shards) == CYCLES, shards
    agents = stats["agent_manager"]
    assert 0 < agents["finished_runs"] <= settings.agent_actors * settings.run_buffers_max, agents
    assert agents["buffer_bytes"] <= settings.agent_actors * settings.run_buffers_max_bytes, agents
    for shard in shards:
        sessions, contexts = shard["session_cache"], shard["user_context_cache"]
        assert 0 < sessions["bytes"] <= settings.session_cache_max_bytes, sessions
        assert sessions["size"] <= settings.session_cache_max, sessions
        assert 0 < contexts["size"] <= settings.context_cache_max, contexts
    persistence = stats["persistence"]
    assert persistence["known_users"] <= persistence["known_max"], persistence
    # What each process still holds after the traced cycles: the same processes, each
    # within the bound.
    print(
        f"\nPython heap held after {CYCLES - WARMUP} cycles (KiB): "
        f"{ {name: round(n / 1024) for name, n in held.items()} }"
    )
    rss = {pid: round((final[pid] - warm[pid]) / MIB, 1) for pid in final}
    print(f"RSS growth (MiB): {rss}")  # seen with -s
    assert set(final) == set(warm), "a service process restarted during the cycles"
    assert {name: n for name, n in held.items() if n > HEAP_GROWTH_MAX} == {}
    assert {pid: n for pid, n in rss.items() if n * MIB > RSS_GROWTH_MAX} == {}
