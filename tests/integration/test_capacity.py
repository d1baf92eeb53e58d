"""Socket capacity: past its socket limit a replica refuses new sockets with 503, not a hang."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
import websockets

from tests.integration.chat_client import ChatClient
from tests.integration.conftest import Service, ingress, wait_ready

pytestmark = pytest.mark.ray

SMALL_APP = "raychat-small"


async def connect_when_admitted(url: str, attempts: int = 100) -> ChatClient:
    """Connect once the server has released a place (it learns of a close asynchronously)."""
    for _ in range(attempts):
        client = ChatClient(url)
        try:
            await client.__aenter__()
            return client
        except websockets.InvalidStatus as refused:
            assert refused.response.status_code == 503
            await asyncio.sleep(0.1)  # poll for the condition, bounded by `attempts`
    raise AssertionError("no place was released")


async def test_overflow_sockets_get_503_and_held_ones_keep_working(service: Service) -> None:
    from ray import serve

    settings = service.settings.model_copy(update={"max_sockets_per_replica": 3})
    small = ingress(
        "SmallIngress", num_replicas=1, max_ongoing_requests=64, max_queued_requests=8
    ).bind(settings)
    serve.run(small, name=SMALL_APP, route_prefix="/small")
    wait_ready(f"{service.http}/small")
    url = f"ws://127.0.0.1:{service.port}/small/api/websocket/ws?token={service.token('u-cap')}"
    try:
        async with AsyncExitStack() as stack:
            held = [await stack.enter_async_context(ChatClient(url)) for _ in range(3)]
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(url):
                    pass
            assert refused.value.response.status_code == 503
            run = await held[0].turn("still served while full")
            assert run.final is not None and run.final["type"] == "run.completed"
            assert held[1].ws is not None
            await held[1].ws.close()
            again = await connect_when_admitted(url)  # a place freed: a new socket gets in
            stack.push_async_exit(again.__aexit__)
            run = await again.turn("my turn now")
            assert run.final is not None and run.final["type"] == "run.completed"
    finally:
        serve.delete(SMALL_APP)
