"""Ray wiring: the one place the actors' `ray.remote` options live.

The logic lives in plain classes (`Persistence`, `AgentManager`, `UserShard`);
`persistence_actor`, `agent_actor` and `shard_actor` give them handle-backed
collaborators, each in a module of its own so an actor process imports only
what it runs (a shard never loads the Agents SDK). Here they are started as
named, detached, restartable actors in the configured namespace. Every ingress
replica calls `ensure_actors`, which creates the actors once or finds them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.agent_actor import AgentActor
from actors.errors import ConfigurationError
from actors.persistence_actor import PersistenceActor
from actors.persistence_router import PersistenceRouter
from actors.remote import actor_name
from actors.shard_actor import ShardActor
from actors.sharding import shard_for
from config import Settings

logger = logging.getLogger(__name__)

# Actors are async and mostly wait on I/O: by default they reserve no CPU (2-core
# machines still run all of them; `RAYCHAT_ACTOR_CPUS` reserves some) and take many
# concurrent calls (each run holds one). Each kind is spread over the nodes.
_ACTOR_OPTIONS: dict[str, Any] = {
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 0,
    "max_concurrency": 20_000,
}


@dataclass(frozen=True)
class ActorHandles:
    """Handles of every actor the ingress talks to."""

    writers: list[Any]  # persistence writers, by index
    agents: list[Any]
    shards: list[Any]

    @cached_property
    def store(self) -> PersistenceRouter:
        """The writers as one store (each call to the writer that owns it)."""
        return PersistenceRouter(self.writers)

    def shard(self, user_id: str) -> Any:
        """The shard actor of `user_id`."""
        return self.shards[self.shard_index(user_id)]

    def shard_index(self, user_id: str) -> int:
        """The index of `user_id`'s shard."""
        return shard_for(user_id, len(self.shards))


def running_counts(settings: Settings) -> tuple[int, int, int]:
    """How many shard, agent and persistence actors run in the namespace (blocking GCS lookup)."""
    names = {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == settings.namespace
    }

    def count(kind: str) -> int:
        found = 0
        while actor_name(settings, kind, found) in names:
            found += 1
        return found

    return count("shard"), count("agent"), count("persistence")


def counts_in_use(settings: Settings, running: tuple[int, int, int], cpus: float) -> Settings:
    """`settings` with the actor counts to use, given the (shard, agent, writer) actors running.

    None running: the counts set, else sized for `cpus`. Some running: those
    counts; a different explicit count is refused, since the shard count
    decides which shard owns a user and changing it would silently move users.
    """
    shards, agents, writers = running
    if not shards and not agents:
        return settings.sized(cpus)
    writers = writers or settings.sized(cpus).persistence_writer_count  # none started yet
    for variable, wanted, count in (
        ("RAYCHAT_SHARDS", settings.shards, shards),
        ("RAYCHAT_AGENT_ACTORS", settings.agent_actors, agents),
        ("RAYCHAT_PERSISTENCE_WRITERS", settings.persistence_writers, writers),
    ):
        if wanted is not None and wanted != count:
            raise ConfigurationError(
                f"{variable}={wanted}, but {count} run in namespace {settings.namespace!r}: "
                "the counts cannot change while the actors run (users would move to other "
                "shards). Run `raychat drain` and restart the cluster, or use another "
                "RAYCHAT_NAMESPACE."
            )
    counts = {"shards": shards, "agent_actors": agents, "persistence_writers": writers}
    return settings.model_copy(update=counts)


def check_cluster_safe(settings: Settings, nodes: int) -> None:
    """Refuse settings that would split the service's state over a cluster of `nodes` nodes.

    On more than one node, a secret generated into `data_dir` would differ per
    node (tokens signed on one fail on another), and a relative SQLite path
    would open a different file wherever the persistence actor lands. An
    absolute SQLite path is allowed: its single writer is pinned to the head
    node (`ensure_actors`), where the file must be.
    """
    if nodes <= 1:
        return
    problems = []
    if settings.secret is None:
        problems.append(
            "RAYCHAT_SECRET is unset: each node would generate its own secret in "
            f"{settings.data_dir}, and tokens signed on one node would fail on the others"
        )
    path = settings.sqlite_path
    if path is not None and not path.is_absolute():
        problems.append(
            f"RAYCHAT_DATABASE_URL is SQLite at a relative path ({path}): the persistence "
            "actor would open a different file on whichever node it lands; use PostgreSQL "
            "(postgresql+asyncpg://...) or an absolute path on the head node"
        )
    if problems:
        raise ConfigurationError(
            f"refusing to start on a cluster of {nodes} nodes: " + "; ".join(problems)
        )


def _alive_nodes() -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]


def sized_settings(settings: Settings) -> Settings:
    """`counts_in_use` for this Ray cluster, checked by `check_cluster_safe` (blocking)."""
    check_cluster_safe(settings, len(_alive_nodes()))
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return counts_in_use(settings, running_counts(settings), resources.get("CPU", 1))


# Where each kind's actor 0 goes among the nodes (see `placement_node`): kinds start on
# different nodes, so a small cluster still gets a bit of each kind on every node.
_FIRST_NODE = {"persistence": 0, "agent": 1, "shard": 0}


def placement_node(kind: str, index: int, nodes: list[str]) -> str:
    """The node (from `nodes`, head first) that actor `index` of `kind` is placed on.

    Round-robin per kind: actor i of a kind goes to node (i + offset) mod nodes.
    """
    if not nodes:
        raise ValueError("no nodes")
    return nodes[(index + _FIRST_NODE.get(kind, 0)) % len(nodes)]


def _nodes_head_first() -> list[str]:
    alive = _alive_nodes()
    return [
        str(node["NodeID"])
        for node in sorted(
            alive,
            key=lambda n: ("node:__internal_head__" not in n.get("Resources", {}), n["NodeID"]),
        )
    ]


def actor_options(
    settings: Settings, kind: str, index: int | None, nodes: list[str]
) -> dict[str, Any]:
    """The `ray.remote` options of one actor: name, namespace, CPUs and placement.

    Actors are spread over the nodes alive when they are created, round-robin
    per kind (`placement_node`), with a soft node affinity: an actor whose node
    is lost restarts on another. A SQLite writer on a cluster of several nodes
    is pinned to the head node instead, where its file is (`check_cluster_safe`
    has refused a relative path); it restarts only there. `nodes`: the alive
    nodes' ids, head first.
    """
    if kind == "persistence" and settings.is_sqlite and len(nodes) > 1:
        strategy = NodeAffinitySchedulingStrategy(node_id=nodes[0], soft=False)
    else:
        node = placement_node(kind, index or 0, nodes)
        strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
    return {
        **_ACTOR_OPTIONS,
        "name": actor_name(settings, kind, index),
        "namespace": settings.namespace,
        "num_cpus": settings.actor_cpus,
        "scheduling_strategy": strategy,
    }


def ensure_actors(settings: Settings) -> ActorHandles:
    """Create the service's actors, or find them if they already run (blocking).

    `settings` must be `sized_settings` (actor counts known).
    """
    nodes = _nodes_head_first()
    writers = [
        ray.remote(PersistenceActor)
        .options(**actor_options(settings, "persistence", i, nodes))
        .remote(settings, i)
        for i in range(settings.persistence_writer_count)
    ]
    agents = [
        ray.remote(AgentActor)
        .options(**actor_options(settings, "agent", i, nodes))
        .remote(settings, writers)
        for i in range(settings.agent_actor_count)
    ]
    shards = [
        ray.remote(ShardActor)
        .options(**actor_options(settings, "shard", i, nodes))
        .remote(settings, i, writers, agents)
        for i in range(settings.shard_count)
    ]
    return ActorHandles(writers=writers, agents=agents, shards=shards)


def drain_actors(settings: Settings, close_sockets: bool = True) -> dict[str, int]:
    """Prepare a full stop (blocking; needs `ray.init` on the running cluster).

    Shards stop taking chats and store their queued runs as failed, then agent
    actors end their runs in flight as failed (code `shutdown`) with the partial
    reply stored, then the persistence actor commits everything queued. Last,
    unless `close_sockets` is False, the shards tell the ingress replicas (at
    their next shard check) to close every socket with 1001 and refuse new ones,
    and this waits two such checks before it returns.
    The actors keep running but take no new runs: stop the cluster next.
    """
    ns = settings.namespace

    def find(kind: str, count: int | None = None) -> list[Any]:
        indexes: list[int | None] = [None] if count is None else list(range(count))
        return [ray.get_actor(actor_name(settings, kind, i), namespace=ns) for i in indexes]

    settings = sized_settings(settings)
    shards = find("shard", settings.shard_count)
    agents = find("agent", settings.agent_actor_count)
    writers = find("persistence", settings.persistence_writer_count)
    queued = sum(ray.get([shard.drain.remote() for shard in shards]))
    stopped = sum(ray.get([agent.drain.remote() for agent in agents]))
    # Every writer answers the count of all stored messages (one database).
    stored = max(ray.get([writer.flush.remote() for writer in writers]))
    if close_sockets:
        ray.get([shard.close_sockets.remote() for shard in shards])
        # Replicas look every `agent_check_s`: give them two looks before the cluster stops.
        time.sleep(2 * settings.agent_check_s + 2.0)
    return {"queued_runs_failed": queued, "runs_stopped": stopped, "messages_stored": stored}
