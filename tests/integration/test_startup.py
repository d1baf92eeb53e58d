"""Ready means ready: when Serve reports an app ready, its actors answer and are warmed up."""

from __future__ import annotations

import uuid

import httpx
import pytest

from actors.remote import actor_name
from tests.integration.chat_client import ChatClient
from tests.integration.conftest import Service, ingress

pytestmark = pytest.mark.ray

APP = "raychat-fresh"


async def test_an_app_is_ready_when_serve_says_so(service: Service) -> None:
    """A new namespace: the replica creates every actor and returns only once they answer."""
    import ray
    from ray import serve

    namespace = "raychat-fresh-" + uuid.uuid4().hex[:8]
    # Counts left unset: sized from the cluster's CPUs (2 here: 1 shard, 2 agent actors).
    settings = service.settings.model_copy(
        update={"namespace": namespace, "shards": None, "agent_actors": None}
    )
    app = ingress("FreshIngress", num_replicas=1).bind(settings)
    try:
        serve.run(app, name=APP, route_prefix="/fresh")
        async with httpx.AsyncClient(base_url=f"{service.http}/fresh", timeout=30) as http:
            # No waiting: the first request after serve.run returns finds everything up.
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            stats_url = "/api/websocket/performance/stats"
            stats = (await http.get(stats_url, headers=service.admin_headers())).json()
        assert (stats["ingress"]["shards"], stats["ingress"]["agent_actors"]) == (1, 2)
        # Both agent actors ran the SDK once before Serve called the app ready.
        assert stats["agent_manager"]["warmed_up"] == 2
        assert stats["agent_manager"]["instances_created"] == 2 * 2  # two agents per actor
        url = f"ws://127.0.0.1:{service.port}/fresh/api/websocket/ws?token="
        async with ChatClient(url + service.token("u-fresh")) as client:
            run = await client.turn("hello, first chat")
            assert run.final is not None and run.final["type"] == "run.completed"
    finally:
        serve.delete(APP)
        for kind, count in (("persistence", None), ("agent", 2), ("shard", 1)):
            for index in [None] if count is None else range(count):
                name = actor_name(settings, kind, index)
                ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
