"""The agent actor: an `AgentManager` whose tools and reply store are the persistence writers."""

from __future__ import annotations

from typing import Any

from actors.agent_manager import AgentManager
from actors.persistence_router import PersistenceRouter
from actors.remote import NamedActorCaller, actor_name
from actors.runs import RunOwner
from config import Settings


class _HandleServices:
    """`ToolServices` and `ReplyStore` over the persistence writers' handles."""

    def __init__(self, writers: list[Any]) -> None:
        # Runs that end together share a call (per writer) to store their replies.
        self._db = PersistenceRouter(writers, batched={"finish_reply": "finish_replies"})

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
        """True once every persistence writer answers (its database is open)."""
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


class AgentActor(AgentManager):
    """An agent manager whose tools and store are the persistence writers.

    Each run's owner arrives in its `RunSpec` as its shard's index (cheaper to
    send than a handle); the shard's handle is looked up by name once. Ends are
    reported to shards only on request: they learn them from replicas and
    their watchdog (see `UserShard`).
    """

    def __init__(self, settings: Settings, writers: list[Any]) -> None:
        services = _HandleServices(writers)
        super().__init__(settings, services=services, store=services, report_ends=False)
        self._db = services
        self._shards: dict[int, NamedActorCaller] = {}

    def wrap_owner(self, owner: Any) -> RunOwner:
        """The owning shard actor, by its index."""
        caller = self._shards.get(owner)
        if caller is None:
            name = actor_name(self._settings, "shard", owner)
            caller = self._shards[owner] = NamedActorCaller(name, self._settings.namespace)
        port: RunOwner = caller
        return port

    async def ping(self) -> bool:
        """Liveness for `/readyz`."""
        return True

    async def warm_up(self) -> bool:
        """Reach the persistence actor and run the SDK once (see `AgentManager.warm_up`)."""
        await self._db.ping()
        return await super().warm_up()
