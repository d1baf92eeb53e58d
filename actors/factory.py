"""Ray wiring: the actor classes and the one place their `ray.remote` options live.

The logic lives in plain classes (`Persistence`, `AgentManager`, `UserShard`);
here they are given handle-backed collaborators and started as named,
detached, restartable actors in the configured namespace. Every ingress
replica calls `ensure_actors`, which creates the actors once or finds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

from actors.agent_manager import AgentManager, RunOwner
from actors.assistant_agents import AGENT_NAMES
from actors.call_batcher import BatchSend, CallBatcher
from actors.errors import ConfigurationError
from actors.persistence import Persistence
from actors.sharding import shard_for
from actors.user_shard import UserShard
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


class RemoteCaller:
    """Calls an actor's methods as coroutines: `await caller.method(*args)`.

    A method named in `batched` (method name -> its batch twin, which takes a
    list of argument tuples and answers each one's result or error) goes through
    a `CallBatcher`: calls made at about the same time share one actor call.
    """

    def __init__(self, handle: Any, batched: Mapping[str, str] | None = None) -> None:
        self.handle = handle
        self.batchers: dict[str, CallBatcher[tuple[Any, ...]]] = {
            name: CallBatcher(self._twin_sender(twin)) for name, twin in (batched or {}).items()
        }

    def _twin_sender(self, twin: str) -> BatchSend[tuple[Any, ...]]:
        method = getattr(self.handle, twin)

        async def send(calls: list[tuple[Any, ...]]) -> list[Any]:
            results: list[Any] = await method.remote(calls)
            return results

        return send

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("handle", "batchers"):
            raise AttributeError(name)
        batcher = self.batchers.get(name)
        if batcher is not None:

            async def batched_call(*args: Any) -> Any:
                return await batcher.call(args)

            batched_call.__name__ = name
            return batched_call
        method = getattr(self.handle, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await method.remote(*args, **kwargs)

        call.__name__ = name
        return call


def actor_name(settings: Settings, kind: str, index: int | None = None) -> str:
    """The registered name of an actor (`persistence`, `agent`, `shard`)."""
    return f"raychat-{kind}" if index is None else f"raychat-{kind}-{index}"


class _HandleServices:
    """`ToolServices` and `ReplyStore` over the persistence actor's handle."""

    def __init__(self, persistence: Any) -> None:
        # Runs that end together share a call to store their replies.
        self._db = RemoteCaller(persistence, batched={"finish_reply": "finish_replies"})

    async def add_todo(self, user_id: str, text: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._db.add_todo(user_id, text)
        return result

    async def complete_todo(self, user_id: str, todo_id: int) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._db.complete_todo(user_id, todo_id)
        return result

    async def set_preference(self, user_id: str, key: str, value: str) -> dict[str, str]:
        result: dict[str, str] = await self._db.set_preference(user_id, key, value)
        return result

    async def load_context(self, user_id: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
        context = await self._db.load_context(user_id)
        return context.preferences, context.todos

    async def ping(self) -> bool:
        """True once the persistence actor answers (its database is open)."""
        answer: bool = await self._db.ping()
        return answer

    async def finish_reply(
        self,
        reply_message_id: int,
        text_: str,
        status: str,
        final_seq: int | None = None,
        error_code: str | None = None,
    ) -> None:
        await self._db.finish_reply(reply_message_id, text_, status, final_seq, error_code)


class _NamedActorCaller:
    """Calls a named actor's methods as coroutines, finding its handle on first use."""

    def __init__(self, name: str, namespace: str) -> None:
        self._name = name
        self._namespace = namespace
        self._caller: RemoteCaller | None = None
        self._lock = asyncio.Lock()

    async def _resolve(self) -> RemoteCaller:
        async with self._lock:
            if self._caller is None:
                # `ray.get_actor` blocks (GCS lookup): once per actor, off the event loop.
                handle = await asyncio.to_thread(ray.get_actor, self._name, self._namespace)
                self._caller = RemoteCaller(handle)
        return self._caller

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            caller = self._caller or await self._resolve()
            return await getattr(caller, name)(*args, **kwargs)

        call.__name__ = name
        return call


class AgentActor(AgentManager):
    """An agent manager whose tools and store are the persistence actor.

    Each run's owner arrives in its `RunSpec` as its shard's index (cheaper to
    send than a handle); the shard's handle is looked up by name once. Ends are
    reported to shards only on request: they learn them from replicas and
    their watchdog (see `UserShard`).
    """

    def __init__(self, settings: Settings, persistence: Any) -> None:
        services = _HandleServices(persistence)
        super().__init__(settings, services=services, store=services, report_ends=False)
        self._db = services
        self._shards: dict[int, _NamedActorCaller] = {}

    def wrap_owner(self, owner: Any) -> RunOwner:
        """The owning shard actor, by its index."""
        caller = self._shards.get(owner)
        if caller is None:
            name = actor_name(self._settings, "shard", owner)
            caller = self._shards[owner] = _NamedActorCaller(name, self._settings.namespace)
        port: RunOwner = caller
        return port

    async def ping(self) -> bool:
        """Liveness for `/readyz`."""
        return True

    async def warm_up(self) -> bool:
        """Reach the persistence actor and run the SDK once (see `AgentManager.warm_up`)."""
        await self._db.ping()
        return await super().warm_up()


class ShardActor(UserShard):
    """A user shard whose store and agents are other actors."""

    def __init__(self, settings: Settings, index: int, persistence: Any, agents: list[Any]) -> None:
        # Turns that start together share a call to store them and one to start them.
        self._db = RemoteCaller(persistence, batched={"begin_turn": "begin_turns"})
        self._agent_actors = [
            RemoteCaller(agent, batched={"start_run": "start_runs"}) for agent in agents
        ]
        super().__init__(
            settings,
            index=index,
            store=self._db,
            agents=list(self._agent_actors),
            agent_names=AGENT_NAMES,
        )

    def owner_ref(self) -> Any:
        """This shard's index: agents find the shard actor by name."""
        return self.index

    async def ping(self) -> bool:
        """Liveness for `/readyz`."""
        return True

    async def warm_up(self) -> bool:
        """Reach the persistence actor and every agent actor once, before the first chat."""
        await asyncio.gather(self._db.ping(), *(agent.ping() for agent in self._agent_actors))
        return True


class PersistenceActor(Persistence):
    """The persistence logic as the service's single writer actor."""


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


def running_counts(namespace: str) -> tuple[int, int]:
    """How many shard and agent actors run in `namespace` (blocking GCS lookup)."""
    names = {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == namespace
    }

    def count(kind: str) -> int:
        found = 0
        while f"raychat-{kind}-{found}" in names:
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
    return counts_in_use(settings, running_counts(settings.namespace), resources.get("CPU", 1))


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
