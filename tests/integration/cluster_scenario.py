"""A two-node Ray cluster on this machine loses its worker node while users chat.

Run by `test_cluster.py` in a process of its own (the test session's Ray cluster
is one node): `python -m tests.integration.cluster_scenario DATABASE_URL OUT.json`.

1. Two raylets (`ray.cluster_utils.Cluster`), one CPU each; the service's actors
   spread over both (two shards, two agent actors, two persistence writers on
   PostgreSQL), and two ingress replicas, one per node, behind Serve's proxy on
   the head node (two proxies on one machine would want the same port).
2. `USERS` users each start a long reply; once every one has seen text, the
   placement of every actor and which agent holds which run are recorded, and
   the worker node is removed (its raylet and every process on it killed).
3. Each client reads on; a dropped socket reconnects and `resume`s from the
   last seq it saw, as a client does, until the run's final event.
4. `NEW_USERS` new users chat as soon as Ray has declared the node dead.
5. The database is read back for every run.

It asserts nothing: it writes what happened to OUT.json and the test judges it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import websockets
from pydantic import SecretStr

from actors.auth import TokenCodec
from actors.remote import actor_name
from actors.sharding import shard_for, writer_for, writer_for_row
from benchmarks.systems import free_ports
from config import Settings
from tests.databases import Database
from tests.integration.chat_client import ChatClient, RunLog, resume_to_final

USERS = 24
NEW_USERS = 8
SECRET = "cluster-test-secret-" + uuid.uuid4().hex
LONG = "tell me a story in 300 words"  # 300 tokens at 50/s: 6 s, still going at the removal
DROP_ERRORS = (websockets.ConnectionClosed, TimeoutError, OSError)


def _settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret=SecretStr(SECRET),
        namespace="raychat-cluster-" + uuid.uuid4().hex[:8],
        shards=2,
        agent_actors=2,
        persistence_writers=2,
        sim_ttft_ms=50,
        sim_tokens_per_s=50,
        run_grace_s=60,
        agent_check_s=0.5,
    )


def _node_of(handle: Any) -> str:
    import ray

    def where(_self: Any) -> str:
        return str(ray.get_runtime_context().get_node_id())

    return str(ray.get(handle.__ray_call__.remote(where), timeout=60))


def _placement(settings: Settings) -> dict[str, str]:
    """The node id of every named actor of the service."""
    import ray

    names = [actor_name(settings, "persistence", i) for i in range(2)]
    names += [actor_name(settings, kind, i) for kind in ("agent", "shard") for i in range(2)]
    return {name: _node_of(ray.get_actor(name, namespace=settings.namespace)) for name in names}


def _replica_nodes() -> list[str]:
    import ray

    nodes = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and "RaychatIngress" in actor["name"]:
            nodes.append(_node_of(ray.get_actor(actor["name"], namespace="serve")))
    return nodes


def _held_by(settings: Settings, run_ids: list[str]) -> dict[str, int]:
    """Which agent actor holds each run."""
    import ray

    held: dict[str, int] = {}
    for index in range(2):
        agent = ray.get_actor(actor_name(settings, "agent", index), namespace=settings.namespace)
        for run_id in ray.get(agent.holding.remote(run_ids), timeout=60):
            held[run_id] = index
    return held


def _wait_node_dead(node_id: str, since: float, timeout_s: float = 120.0) -> float:
    """Seconds from `since` until the GCS reports the node dead (bounded poll)."""
    import ray

    while time.monotonic() - since < timeout_s:
        if not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            return round(time.monotonic() - since, 2)
        time.sleep(0.1)  # polling the GCS's view of the node, bounded by timeout_s
    raise TimeoutError(f"node {node_id} still alive after {timeout_s} s")


class User:
    """One simulated user: a socket, a long run, and what became of it."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.client = ChatClient(url)
        self.run_id = ""
        self.log: RunLog | None = None
        self.dropped = False
        self.error = ""

    async def start(self, text_seen: asyncio.Event) -> None:
        """Connect, start a long run and wait for its first text."""
        await self.client.__aenter__()
        self.run_id = await self.client.start(LONG, session_id="s")
        await self.client.next_of("message.delta")
        text_seen.set()

    async def finish(self) -> None:
        """Read until the run's final event, resuming on a new socket if this one drops."""
        try:
            self.log = await self.client.until_final(self.run_id)
        except DROP_ERRORS:
            self.dropped = True
            seen = self.client.runs[self.run_id].events
            resumed = await resume_to_final(self.url, self.run_id, seen[-1]["seq"], attempts=300)
            self.log = RunLog(self.run_id, seen + resumed.events)
        except AssertionError as exc:  # an `error` event
            self.error = str(exc)
        finally:
            await self.client.__aexit__(None, None, None)


async def _new_chat(url: str) -> dict[str, Any]:
    started = time.monotonic()
    for _ in range(100):
        try:
            async with ChatClient(url) as client:
                log = await client.turn("hello there")
                final = log.final or {}
                return {
                    "type": final.get("type"),
                    "run_id": log.run_id,
                    "seconds": round(time.monotonic() - started, 2),
                }
        except (websockets.InvalidStatus, OSError, websockets.ConnectionClosed):
            await asyncio.sleep(0.2)  # no replica for a moment: try again (bounded)
    return {"type": "never", "seconds": round(time.monotonic() - started, 2)}


async def _chat(url_for: Any, cluster: Any, worker: Any, settings: Settings) -> dict[str, Any]:
    users = [User(url_for(f"cu-{i}"), f"cu-{i}") for i in range(USERS)]
    seen = [asyncio.Event() for _ in users]
    await asyncio.gather(*(u.start(event) for u, event in zip(users, seen, strict=True)))
    run_ids = [u.run_id for u in users]
    placement = await asyncio.to_thread(_placement, settings)
    replicas = await asyncio.to_thread(_replica_nodes)
    held = await asyncio.to_thread(_held_by, settings, run_ids)
    finishing = [asyncio.ensure_future(u.finish()) for u in users]
    removed_at = time.monotonic()
    await asyncio.to_thread(cluster.remove_node, worker, False)
    # New users chat once Ray has declared the node dead: until then an agent on it may
    # still take a run (and lose it with the node), as on any cluster.
    detected_s = await asyncio.to_thread(_wait_node_dead, worker.node_id, removed_at)
    new_chats = await asyncio.gather(*(_new_chat(url_for(f"cn-{i}")) for i in range(NEW_USERS)))
    await asyncio.gather(*finishing)
    return {
        "placement": placement,
        "replica_nodes": replicas,
        "held": held,
        "users": users,
        "new_chats": list(new_chats),
        "settled_s": round(time.monotonic() - removed_at, 2),
        "node_dead_after_s": detected_s,
    }


def _stored(database: Database, run_id: str) -> dict[str, Any]:
    rows = database.rows(
        "SELECT role, status, text, error_code, id FROM messages WHERE run_id = ? ORDER BY id",
        run_id,
    )
    return {
        "roles": [row[0] for row in rows],
        "status": next((row[1] for row in rows if row[0] == "assistant"), None),
        "text": next((row[2] for row in rows if row[0] == "assistant"), None),
        "error_code": next((row[3] for row in rows if row[0] == "assistant"), None),
        "reply_id": next((row[4] for row in rows if row[0] == "assistant"), None),
    }


def main(database_url: str, out: Path) -> None:
    """Run the scenario against `database_url` (PostgreSQL); write the facts to `out`."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    # Serve's Python proxy on the head node only: on one machine every node has the same
    # address, and a proxy (or HAProxy) per node would each want the one port.
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    # ... which would otherwise send every socket to the replica on its own node.
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve_app import RaychatIngress

    settings = _settings(database_url)
    (port,) = free_ports(1)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            # Ray declares a node dead after this many missed health checks; its actors
            # restart elsewhere only then (defaults: 5 checks, 3 s apart).
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    head_id = ray.get_runtime_context().get_node_id()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        app = RaychatIngress.options(num_replicas=2, max_replicas_per_node=1).bind(settings)
        started = time.monotonic()
        serve.run(app, name="raychat", route_prefix="/")
        startup_s = time.monotonic() - started
        codec = TokenCodec(SECRET, issuer=settings.token_issuer, ttl_s=3600)

        def url_for(user: str) -> str:
            return f"ws://127.0.0.1:{port}/api/websocket/ws?token={codec.issue(user)}"

        result = asyncio.run(_chat(url_for, cluster, worker, settings))
        database = Database("postgresql", database_url)

        def node(name: str) -> str:
            return "head" if result["placement"][name] == head_id else "worker"

        runs = []
        for user in result["users"]:
            stored = _stored(database, user.run_id)
            log: RunLog | None = user.log
            final = (log.final if log else None) or {}
            agent = result["held"].get(user.run_id)
            reply_id = stored["reply_id"] or 0
            runs.append(
                {
                    "user": user.name,
                    "run_id": user.run_id,
                    "agent": None if agent is None else node(actor_name(settings, "agent", agent)),
                    "shard": node(actor_name(settings, "shard", shard_for(user.name, 2))),
                    "writer": node(actor_name(settings, "persistence", writer_for(user.name, 2))),
                    "reply_writer": node(
                        actor_name(settings, "persistence", writer_for_row(reply_id, 2))
                    ),
                    "dropped": user.dropped,
                    "error": user.error,
                    "final": final.get("type"),
                    "code": (final.get("error") or {}).get("code"),
                    "deltas": log.deltas_text if log else "",
                    "final_text": final.get("text"),
                    "seqs": log.seqs if log else [],
                    "stored": stored,
                }
            )
        for chat in result["new_chats"]:
            chat["stored"] = _stored(database, chat["run_id"]) if chat.get("run_id") else None
        facts = {
            "startup_s": round(startup_s, 1),
            "placement": {name: node(name) for name in result["placement"]},
            "replicas": ["head" if n == head_id else "worker" for n in result["replica_nodes"]],
            "runs": runs,
            "new_chats": result["new_chats"],
            "settled_s": result["settled_s"],
            "node_dead_after_s": result["node_dead_after_s"],
        }
        out.write_text(json.dumps(facts, indent=1))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
