"""The shard actor: a `UserShard` whose store and agents are other actors.

Imports neither the Agents SDK nor SQLAlchemy: a shard process starts fast and small.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.persistence_router import PersistenceRouter
from actors.remote import RemoteCaller
from actors.runs import AGENT_NAMES
from actors.shard import UserShard
from config import Settings


class ShardActor(UserShard):
    """A user shard whose store and agents are other actors."""

    def __init__(
        self, settings: Settings, index: int, writers: list[Any], agents: list[Any]
    ) -> None:
        # Turns that start together share a call (per writer) to store them and one to
        # start them.
        self._db = PersistenceRouter(writers, batched={"begin_turn": "begin_turns"})
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
        """Readiness for `/readyz`: False while a critical loop (the watchdog) is down."""
        return self.healthy()

    async def warm_up(self) -> bool:
        """Reach every persistence writer and agent actor once, before the first chat."""
        await asyncio.gather(self._db.ping(), *(agent.ping() for agent in self._agent_actors))
        return True
