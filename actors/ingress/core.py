"""`IngressCore`: one ingress replica, composed of its sockets, sessions, fan-in, turns and drain.

Owns nothing that must survive a socket. Per replica: one long-poll task per
agent actor (events of every run for this replica's users arrive in batches),
the shard keeper and the drain watcher; per socket a receive loop (in the
handler), a sender task and a bounded outbound queue.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.websockets import WebSocket

from actors.auth import Identity
from actors.connection import Connection
from actors.errors import NotReady
from actors.event_hub import PollBatch
from actors.factory import ActorHandles
from actors.http_turn import HttpTurn
from actors.ingress.admin import Admin
from actors.ingress.draining import Draining
from actors.ingress.fan_in import FanIn
from actors.ingress.sessions import Sessions
from actors.ingress.sockets import SocketTable
from actors.ingress.turns import Turns
from actors.messages import Chat
from actors.supervise import Supervisor
from config import Settings

logger = logging.getLogger(__name__)

COUNTERS = (
    "opened",
    "closed",
    "frames",
    "errors",
    "batches",
    "slow_closed",
    "idle_closed",
    "catch_ups",
    "going_away_closed",
)


class IngressCore:
    """Everything one ingress replica does, independent of FastAPI routing."""

    def __init__(
        self,
        settings: Settings,
        handles: ActorHandles,
        stopping: Callable[[], bool | None] | None = None,
        loops: Supervisor | None = None,
    ) -> None:
        """`stopping` says whether the server is stopping this replica (None: cannot tell).

        `loops` supervises the background loops (a default one if None).
        """
        self.settings = settings
        self.handles = handles
        self.replica_id = uuid.uuid4().hex
        self._stopping = stopping
        self.counters = dict.fromkeys(COUNTERS, 0)  # shared by the parts below
        # Owns the replica's loops: restarted with backoff when they fail, health meanwhile.
        self.loops = loops or Supervisor(f"ingress {self.replica_id[:8]}")
        self.sockets = SocketTable(settings.max_sockets_per_replica, self.counters)
        self.fan_in = FanIn(self.replica_id, settings.poll_timeout_s, self.counters)
        self.turns = Turns(settings, handles, self.replica_id, self.fan_in)
        self.sessions = Sessions(
            settings, handles, self.replica_id, self.sockets, self.fan_in, self.turns
        )
        self.admin = Admin(
            handles, self.replica_id, self.sockets, self.fan_in, self.turns, self.loops
        )
        self.draining = Draining(
            self.sockets,
            handles.shards,
            settings.agent_check_s,
            self.admin.next_report,
            present=self.sessions.present_of,
        )

    @property
    def going_away(self) -> bool:
        """True once this replica refuses new sockets and closes the open ones with 1001."""
        return self.sockets.going_away

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Start one long-poll loop per agent actor, the shard keeper and the drain watcher.

        Each runs under `self.loops`: an exception (in a poll or in `dispatch`)
        is logged and the loop restarted with backoff; the replica reports
        unhealthy and not ready until it runs again.
        """
        for index, agent in enumerate(self.handles.agents):
            self.loops.start(f"poll-{index}", partial(self.fan_in.poll_loop, agent))
        self.loops.start("shard-keeper", self.draining.keep_shards_ready)
        if self._stopping is not None:
            if self._stopping() is None:
                logger.warning(
                    "cannot see when Serve starts to stop this replica: sockets get their "
                    "1001 close only from its destructor, at the end of the shutdown budget"
                )
            else:
                watch = partial(self.draining.close_when_stopping, self._stopping)
                self.loops.start("drain-watch", watch, ends=True)

    async def wait_ready(self) -> None:
        """Return once every actor answers and the agents have run the SDK once.

        Actors still being created take the calls when their constructor
        returns. Raises `NotReady` after `start_timeout_s`, or the error of
        an actor that cannot start (a bad database URL, say).
        """
        handles = self.handles
        calls = [writer.ping.remote() for writer in handles.writers]
        calls += [agent.warm_up.remote() for agent in handles.agents]
        calls += [shard.warm_up.remote() for shard in handles.shards]
        try:
            await asyncio.wait_for(asyncio.gather(*calls), self.settings.start_timeout_s)
        except TimeoutError:
            raise NotReady(
                f"the actors did not answer within {self.settings.start_timeout_s:g} s "
                "(RAYCHAT_START_TIMEOUT_S)"
            ) from None

    def check_health(self) -> None:
        """Raise while a loop of this replica is down (Serve's health check).

        The drain watcher ends normally once the replica is stopping; the
        event polls and the shard keeper run until `stop`.
        """
        self.loops.check()

    async def stop(self) -> None:
        """Close every socket with 1001 and stop the pollers."""
        await self.sockets.close_all()
        await self.loops.stop()
        await self.turns.close()

    # -- sockets and turns -------------------------------------------------------
    def admit(self, websocket: WebSocket) -> bool:
        """Count a new socket against this replica's limit; False when it is full."""
        return self.sockets.admit(websocket)

    def release(self, websocket: WebSocket) -> None:
        """Uncount a socket that `admit` counted (idempotent)."""
        self.sockets.release(websocket)

    async def serve_socket(self, websocket: WebSocket, identity: Identity) -> None:
        """Run one authenticated, accepted socket (counted by `admit`) until it closes."""
        await self.sessions.serve_socket(websocket, identity)

    async def handle_frame(self, conn: Connection, text: str) -> None:
        """Parse one text frame and act on it; problems become `error` events."""
        await self.sessions.handle_frame(conn, text)

    def dispatch(self, batch: PollBatch) -> None:
        """Hand each run's new events to every connection of its user on this replica."""
        self.fan_in.dispatch(batch)

    async def resume(self, conn: Connection, run_id: str, after_seq: int) -> None:
        """Replay a run to `conn` after `after_seq`, then keep it streaming live."""
        await self.turns.resume(conn, run_id, after_seq)

    async def http_turn(self, user_id: str, message: Chat) -> HttpTurn:
        """Run one `chat` for an HTTP request exactly as a socket's (see `Turns.http_turn`)."""
        return await self.turns.http_turn(user_id, message)

    # -- HTTP endpoints ------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """The statistics document of PROTOCOL.md, for the whole service."""
        return await self.admin.stats()

    async def cleanup(self) -> dict[str, int]:
        """Drop expired cache entries and finished run buffers everywhere."""
        return await self.admin.cleanup()

    async def refresh_context(self, user_id: str) -> dict[str, Any]:
        """Reload a user's context from the database into its shard's cache."""
        return await self.admin.refresh_context(user_id)

    async def history(
        self, user_id: str, session_id: str, limit: int, before: int | None
    ) -> dict[str, Any]:
        """A session's messages, oldest first, with in-flight replies' text so far."""
        return await self.admin.history(user_id, session_id, limit, before)

    async def ready(self) -> bool:
        """True when this replica's loops run and the database and every actor answer."""
        return self.loops.healthy() and await self.admin.ready()
