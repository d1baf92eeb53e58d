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
from typing import Any

import ray

from actors.agent_actor import AgentActor
from actors.errors import ConfigurationError
from actors.persistence_actor import PersistenceActor
from actors.remote import actor_name
from actors.shard_actor import ShardActor
from actors.sharding import shard_for
from config import Settings

logger = logging.getLogger(__name__)

# Actors are async and mostly wait on I/O: they reserve no CPU (2-core machines
# still run all of them) and take many concurrent calls (each run holds one).
_ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": 0,
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 0,
    "max_concurrency": 20_000,
}


@dataclass(frozen=True)
class ActorHandles:
    """Handles of every actor the ingress talks to."""

    persistence: Any
    agents: list[Any]
    shards: list[Any]

    def shard(self, user_id: str) -> Any:
        """The shard actor of `user_id`."""
        return self.shards[self.shard_index(user_id)]

    def shard_index(self, user_id: str) -> int:
        """The index of `user_id`'s shard."""
        return shard_for(user_id, len(self.shards))


def running_counts(settings: Settings) -> tuple[int, int]:
    """How many shard and agent actors run in the settings' namespace (blocking GCS lookup)."""
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

    return count("shard"), count("agent")


def counts_in_use(settings: Settings, running: tuple[int, int], cpus: float) -> Settings:
    """`settings` with the actor counts to use, given the (shard, agent) actors running.

    None running: the counts set, else sized for `cpus`. Some running: those
    counts; a different explicit count is refused, since the shard count
    decides which shard owns a user and changing it would silently move users.
    """
    shards, agents = running
    if not shards and not agents:
        return settings.sized(cpus)
    for variable, wanted, count in (
        ("RAYCHAT_SHARDS", settings.shards, shards),
        ("RAYCHAT_AGENT_ACTORS", settings.agent_actors, agents),
    ):
        if wanted is not None and wanted != count:
            raise ConfigurationError(
                f"{variable}={wanted}, but {count} run in namespace {settings.namespace!r}: "
                "the counts cannot change while the actors run (users would move to other "
                "shards). Run `raychat drain` and restart the cluster, or use another "
                "RAYCHAT_NAMESPACE."
            )
    return settings.model_copy(update={"shards": shards, "agent_actors": agents})


def sized_settings(settings: Settings) -> Settings:
    """`counts_in_use` for this Ray cluster (blocking GCS lookups)."""
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return counts_in_use(settings, running_counts(settings), resources.get("CPU", 1))


def ensure_actors(settings: Settings) -> ActorHandles:
    """Create the service's actors, or find them if they already run (blocking).

    `settings` must be `sized_settings` (actor counts known).
    """
    ns = settings.namespace
    persistence = (
        ray.remote(PersistenceActor)
        .options(name=actor_name(settings, "persistence"), namespace=ns, **_ACTOR_OPTIONS)
        .remote(settings)
    )
    agents = [
        ray.remote(AgentActor)
        .options(name=actor_name(settings, "agent", i), namespace=ns, **_ACTOR_OPTIONS)
        .remote(settings, persistence)
        for i in range(settings.agent_actor_count)
    ]
    shards = [
        ray.remote(ShardActor)
        .options(name=actor_name(settings, "shard", i), namespace=ns, **_ACTOR_OPTIONS)
        .remote(settings, i, persistence, agents)
        for i in range(settings.shard_count)
    ]
    return ActorHandles(persistence=persistence, agents=agents, shards=shards)


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
    [persistence] = find("persistence")
    queued = sum(ray.get([shard.drain.remote() for shard in shards]))
    stopped = sum(ray.get([agent.drain.remote() for agent in agents]))
    stored = ray.get(persistence.flush.remote())
    if close_sockets:
        ray.get([shard.close_sockets.remote() for shard in shards])
        # Replicas look every `agent_check_s`: give them two looks before the cluster stops.
        time.sleep(2 * settings.agent_check_s + 2.0)
    return {"queued_runs_failed": queued, "runs_stopped": stopped, "messages_stored": stored}
