"""The strongest simple alternative: raychat's own logic in one process, without Ray.

One uvicorn/FastAPI process wires the plain classes that raychat's actors are
made of, as `actors/factory.py` does with Ray handles, but with direct objects:
one `Persistence` (group commit, WAL), one `AgentManager` (agents built once,
shared by all users), one `UserShard` (context and session caches, run
registry, per-session lanes, so `on_busy`, `cancel` and `resume` behave as in
raychat; its `owner_ref()` is the shard itself). One task long-polls the
manager (`await manager.poll(replica_id, timeout)`) and fans each batch out to
the user's `Connection`s, as `actors/ingress/fan_in.py` does per agent actor; every
socket has its own receive loop and sender task. `GET /stats` returns the
PROTOCOL.md statistics document (unauthenticated: it listens on loopback).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from actors.agent_manager import AgentManager
from actors.connection import Connection
from actors.messages import Cancel, Chat, ClientMessage, Resume
from actors.persistence import Persistence
from actors.runs import AGENT_NAMES
from actors.shard import ChatRequest, UserShard
from actors.stats_report import merge_stats
from benchmarks.baselines._common import Backend, PersistenceTools, run_main
from config import Settings

logger = logging.getLogger(__name__)

TITLE = "raychat single-process baseline"


class InProcessBackend(Backend):
    """Persistence, agent manager and user shard as plain objects in this process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.persistence = Persistence(settings)
        tools = PersistenceTools(self.persistence)
        self.manager = AgentManager(settings, services=tools, store=tools)
        self.shard = UserShard(
            settings,
            index=0,
            store=self.persistence,
            agents=[self.manager],
            agent_names=AGENT_NAMES,
        )
        self.replica_id = uuid.uuid4().hex
        self._users: dict[str, set[Connection]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the tables, then start delivering events."""
        await self.persistence.start()
        self._poller = asyncio.create_task(self._deliver_events(), name="poll-agents")

    async def stop(self) -> None:
        """Stop delivering, cancel the runs in flight (their partial replies are stored)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.manager.stop()
        await self.shard.stop()
        await self.persistence.close()

    async def ready(self) -> bool:
        """True while events are delivered and the database answers."""
        delivering = self._poller is not None and not self._poller.done()
        return delivering and await self.persistence.ping()

    async def _deliver_events(self) -> None:
        try:
            while True:
                batch = await self.manager.poll(self.replica_id, self.settings.poll_timeout_s)
                for user_id, run_id, first_seq, texts, _end in batch:
                    for conn in self._users.get(user_id, ()):
                        conn.deliver(run_id, first_seq, texts)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("event delivery stopped")  # `/readyz` turns 503
            raise

    async def opened(self, conn: Connection) -> None:
        """Register the socket for its user's events."""
        self._users.setdefault(conn.user_id, set()).add(conn)
        await self.shard.connect(conn.user_id, self.replica_id)

    async def closed(self, conn: Connection) -> None:
        """Unregister the socket; its user's runs go on."""
        users = self._users.get(conn.user_id)
        if users is not None:
            users.discard(conn)
            if not users:
                del self._users[conn.user_id]
        await self.shard.disconnect(conn.user_id, self.replica_id)

    async def handle(self, conn: Connection, message: ClientMessage) -> None:
        """`chat`, `cancel` and `resume` through the user shard."""
        if isinstance(message, Resume):
            await self._resume(conn, message.run_id, message.after_seq)
            return
        if isinstance(message, Chat):
            fields = message.model_dump(exclude={"type"})
            request = ChatRequest(
                conn.user_id, uuid.uuid4().hex, replica_id=self.replica_id, **fields
            )
            answers = await self.shard.chat(request)
        elif isinstance(message, Cancel):
            answers = await self.shard.cancel(conn.user_id, message.run_id)
        else:
            return  # `ping` is answered before a backend sees frames
        for event in answers:
            conn.send_event(event)
        if answers and answers[0].get("duplicate"):  # the chat's run exists: stream it
            await self._resume(conn, answers[0]["run_id"], answers[0]["seq"])

    async def _resume(self, conn: Connection, run_id: str, after_seq: int) -> None:
        conn.begin_replay(run_id)
        try:
            replay = await self.shard.resume(conn.user_id, run_id, after_seq, self.replica_id)
        except BaseException:
            conn.abandon_replay(run_id)
            raise
        conn.finish_replay(run_id, after_seq, replay)

    def stats(self) -> dict[str, Any]:
        """The PROTOCOL.md statistics document, from the in-process objects."""
        local = {
            "replica_id": self.replica_id,
            "users": len(self._users),
            **self.sockets,
        }
        return merge_stats(
            [self.shard.stats()], [self.manager.stats()], self.persistence.stats(), local
        )


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.baselines.single_process_app --port N` (settings from RAYCHAT_*)."""
    run_main(InProcessBackend, TITLE, argv)


if __name__ == "__main__":
    main()
