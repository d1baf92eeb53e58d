"""Many connect/chat/disconnect cycles, some cut abruptly: nothing stays open or running."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from tests.integration.conftest import Service

pytestmark = pytest.mark.ray

CYCLES = 1000
AT_ONCE = 25


async def one_cycle(service: Service, index: int) -> None:
    async with websockets.connect(service.ws_url(f"u-cycle-{index % 100}")) as ws:
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
        await asyncio.gather(*(gated(i) for i in range(CYCLES)))
        for _ in range(300):  # runs of aborted sockets finish, closes reach the shards
            stats = (await http.get("/api/websocket/performance/stats")).json()
            if (
                stats["runs"]["active"] == 0
                and stats["connections"]["active"] == before["connections"]["active"]
            ):
                break
            await asyncio.sleep(0.1)  # poll for the condition, bounded
    assert stats["runs"]["active"] == 0 and stats["runs"]["queued"] == 0
    assert stats["connections"]["active"] == before["connections"]["active"]
    assert stats["connections"]["opened"] - before["connections"]["opened"] >= CYCLES
    stored = service.query(
        "SELECT status, COUNT(*) FROM messages WHERE user_id LIKE 'u-cycle-%' "
        "AND role = 'assistant' GROUP BY status"
    )
    assert stored == [("completed", CYCLES)]
