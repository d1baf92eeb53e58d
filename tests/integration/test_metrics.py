"""Prometheus metrics on Ray's metrics export port, and statistics that cover every replica.

Real Ray, Serve (two ingress replicas), WebSockets and the node's metrics
agent. Ray reports metrics every few seconds: the checks poll with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import METRICS
from tests.integration.chat_client import ChatClient
from tests.integration.conftest import REPLICAS, Cluster, Service

pytestmark = pytest.mark.ray

DEADLINE_S = 45.0  # Ray's metrics agent reports every 10 s by default
SOCKETS = 6  # leastconn (HAProxy) or least-loaded (Serve's proxy) puts some on each replica
CHATS = 3
# Labels Ray adds to every metric; `le` is a histogram bucket's.
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "JobId", "le"}
CLIENT_CLOSE_CODE = 4000  # an application close code: labelled "other"

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    """Every `ray_raychat_*` sample of the metrics endpoint, by sample name."""
    response = await http.get(url)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("ray_raychat_"):
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    return sum(
        value
        for series, value in samples.get(name, [])
        if all(series.get(key) == wanted for key, wanted in labels.items())
    )


async def poll(
    check: Callable[[], Awaitable[list[str]]], deadline_s: float = DEADLINE_S
) -> list[str]:
    """Run `check` until it finds no problem or the deadline passes; the last problems."""
    end = time.monotonic() + deadline_s
    while True:
        problems = await check()
        if not problems or time.monotonic() > end:
            return problems
        await asyncio.sleep(0.5)  # polling an endpoint that updates on its own schedule


async def test_stats_cover_sockets_on_every_replica(service: Service) -> None:
    """Sockets open on both ingress replicas all show in one stats answer."""
    url = f"{service.http}/api/websocket/performance/stats"
    async with (
        AsyncExitStack() as stack,
        httpx.AsyncClient(headers=service.admin_headers(), timeout=30) as http,
    ):
        for i in range(SOCKETS):
            await stack.enter_async_context(ChatClient(service.ws_url(f"u-mt-stats-{i}")))
        last: dict[str, Any] = {}

        async def check() -> list[str]:
            nonlocal last
            last = (await http.get(url)).json()["ingress"]
            replicas = last["replicas"]
            problems = []
            if last["replica_count"] != REPLICAS or len(replicas) != REPLICAS:
                problems.append(f"{last['replica_count']} replicas reported")
            if any(replica["sockets"] == 0 for replica in replicas):
                problems.append("a replica reports no socket")
            if last["sockets"] != SOCKETS:
                problems.append(f"{last['sockets']} sockets, {SOCKETS} open")
            return problems

        problems = await poll(check, deadline_s=20)
        assert not problems, (problems, last)
        replicas = last["replicas"]
        assert last["sockets"] == sum(r["sockets"] for r in replicas)
        assert last["opened"] == sum(r["opened"] for r in replicas) >= SOCKETS
        assert last["replica"]["replica_id"] == last["replica_id"]
        assert last["replica_id"] in {r["replica_id"] for r in replicas}
        assert last["replica"]["sockets"] < SOCKETS  # this replica alone holds only some


async def test_metrics_endpoint_after_chats(service: Service, ray_cluster: Cluster) -> None:
    metrics_url = f"http://127.0.0.1:{ray_cluster.metrics_port}/metrics"
    stats_url = f"{service.http}/api/websocket/performance/stats"
    users = [f"u-mt-chat-{i}" for i in range(CHATS)]
    async with (
        AsyncExitStack() as stack,
        httpx.AsyncClient(headers=service.admin_headers(), timeout=30) as http,
    ):
        clients = [
            await stack.enter_async_context(ChatClient(service.ws_url(user))) for user in users
        ]
        logs = await asyncio.gather(
            *(client.turn(f"metrics chat {i}") for i, client in enumerate(clients))
        )
        assert all(log.final and log.final["type"] == "run.completed" for log in logs)
        # A second turn of the session (a session-cache hit), a cancel, a resume, a bad frame.
        await clients[0].turn("metrics chat again")
        long_id = await clients[1].start("a long story in 400 words")
        await clients[1].next_of("message.delta")
        await clients[1].send({"type": "cancel", "run_id": long_id})
        cancelled = await clients[1].until_final(long_id)
        assert cancelled.final and cancelled.final["type"] == "run.cancelled"
        await clients[2].send({"type": "resume", "run_id": logs[2].run_id, "after_seq": 0})
        await clients[2].send("{not json")
        assert (await clients[2].next_of("error"))["code"] == "bad_json"
        async with ChatClient(service.ws_url("u-mt-closer")) as closer:
            await closer.send({"type": "ping"})
            await closer.next_of("pong")
            assert closer.ws is not None
            await closer.ws.close(code=CLIENT_CLOSE_CODE)
        stats = (await http.get(stats_url)).json()
        runs = stats["runs"]
        assert runs["completed"] >= CHATS + 1 and runs["cancelled"] >= 1
        last: Samples = {}

        async def check() -> list[str]:
            nonlocal last
            last = samples = await scrape(http, metrics_url)
            # Each counter covers at least what the live statistics count (the metrics
            # also keep what stopped actors and other apps on this cluster recorded).
            floors = {
                ("ray_raychat_runs_total", ("status", "completed")): runs["completed"],
                ("ray_raychat_runs_total", ("status", "cancelled")): runs["cancelled"],
                ("ray_raychat_turn_seconds_count", ("status", "completed")): runs["completed"],
                ("ray_raychat_ttft_seconds_count", ("agent", "assistant")): CHATS + 1,
                ("ray_raychat_delta_gap_seconds_count", None): CHATS,
                ("ray_raychat_sockets_opened_total", None): stats["ingress"]["opened"],
                ("ray_raychat_socket_closes_total", None): stats["ingress"]["closed"],
                ("ray_raychat_socket_closes_total", ("code", "other")): 1,
                ("ray_raychat_errors_total", None): stats["ingress"]["errors"],
                ("ray_raychat_errors_total", ("code", "bad_json")): 1,
                ("ray_raychat_cancels_total", None): 1,
                ("ray_raychat_resumes_total", None): 1,
                ("ray_raychat_open_sockets", None): CHATS,
                ("ray_raychat_persistence_lag_seconds_count", None): stats["persistence"][
                    "written"
                ],
                ("ray_raychat_persistence_commit_seconds_count", None): stats["persistence"][
                    "batches"
                ],
            }
            for cache, section in (
                ("session", "session_cache"),
                ("user_context", "user_context_cache"),
            ):
                for result, key in (("hit", "hits"), ("miss", "misses")):
                    floors[
                        ("ray_raychat_cache_lookups_total", ("cache", cache), ("result", result))
                    ] = stats[section][key]
            problems = []
            for (name, *labels), floor in floors.items():
                value = total(samples, name, **dict(label for label in labels if label))
                if value < floor:
                    problems.append(f"{name}{labels} = {value} < {floor}")
            for gauge in ("runs_active", "runs_queued", "persistence_queue_depth"):
                if f"ray_raychat_{gauge}" not in samples:
                    problems.append(f"no ray_raychat_{gauge}")
            return problems

        problems = await poll(check)
        assert not problems, problems
    # Documented labels only, and nothing that names a user.
    for name, series in last.items():
        spec = next(s for s in METRICS if name.startswith(f"ray_{s.name}"))
        for labels, _ in series:
            extra = set(labels) - RAY_LABELS - set(spec.tags)
            assert not {k for k in extra if not k.startswith("otel_")}, (name, labels)
            assert not any("u-mt-" in value for value in labels.values()), (name, labels)
