"""One socket's session: connect at the shard, receive loop, frames, slow-reader supervisor."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray.exceptions import RayActorError
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors import metrics
from actors.auth import Identity
from actors.connection import Connection
from actors.errors import RateLimited, RaychatError
from actors.events import error_event
from actors.factory import ActorHandles
from actors.ingress.fan_in import FanIn
from actors.ingress.sockets import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_LARGE, SocketTable
from actors.ingress.turns import SHARD_RETRY_S, Turns, remote_cause
from actors.messages import parse_frame
from actors.rate_limit import TokenBucket, retry_after
from actors.remote import until_up
from config import Settings

logger = logging.getLogger(__name__)


class Sessions:
    """Runs each accepted socket until it closes: its frames in, its events out."""

    def __init__(
        self,
        settings: Settings,
        handles: ActorHandles,
        replica_id: str,
        sockets: SocketTable,
        fan_in: FanIn,
        turns: Turns,
    ) -> None:
        self.settings = settings
        self.handles = handles
        self.replica_id = replica_id
        self.sockets = sockets
        self.fan_in = fan_in
        self.turns = turns
        self.counters = sockets.counters
        # Connects whose socket went away before the shard answered (see `serve_socket`).
        self._orphans: set[asyncio.Future[bool]] = set()
        # User id -> this replica's sockets of the user that its shard counts (or is asked
        # to): what the replica tells a shard that lost count of them (`present_of`).
        self.present: dict[str, int] = {}

    def present_of(self, shard_index: int) -> dict[str, int]:
        """The sockets here of the users of shard `shard_index` (user id -> sockets)."""
        index_of = self.handles.shard_index
        return {user: n for user, n in self.present.items() if index_of(user) == shard_index}

    def _count(self, user_id: str, delta: int) -> None:
        left = self.present.get(user_id, 0) + delta
        if left > 0:
            self.present[user_id] = left
        else:
            self.present.pop(user_id, None)

    async def serve_socket(self, websocket: WebSocket, identity: Identity) -> None:
        """Run one authenticated, accepted socket (counted by `admit`) until it closes."""
        user_id = identity.user_id
        conn = Connection(
            user_id,
            websocket.send_text,
            queue_max=self.settings.outbound_queue_max,
            stuck_s=self.settings.stuck_timeout_s,
        )
        shard = self.handles.shard(user_id)
        limit = self.settings.max_sockets_per_user
        asked = False

        def ask() -> Any:
            # Counted here from the first ask, in the same step as the call goes out: a
            # `rejoin` sent before it then includes it, one sent after it does not.
            nonlocal asked
            if not asked:
                asked = True
                self._count(user_id, 1)
            return shard.connect.remote(user_id, self.replica_id, limit)

        # Counting a socket twice (a call that ran on a shard that then died) is harmless:
        # a restarted shard starts afresh and asks each replica for its sockets (`rejoin`).
        # The ask's task always runs (it is shielded), so each path below uncounts once.
        connecting = asyncio.ensure_future(until_up(ask, SHARD_RETRY_S))
        try:
            admitted = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # Cancelled while the shard counts this socket: uncount it when it answers
            # (the task is kept until then).
            self._orphans.add(connecting)
            connecting.add_done_callback(self._orphans.discard)
            connecting.add_done_callback(lambda _: self._undo_connect(connecting, shard, user_id))
            connecting.add_done_callback(lambda _: self._count(user_id, -1))
            raise
        except BaseException:
            self._count(user_id, -1)
            raise
        if not admitted:
            self._count(user_id, -1)
            metrics.socket_closed(CLOSE_POLICY)
            await websocket.close(CLOSE_POLICY, "too many open sockets for this user")
            return
        self.fan_in.register(conn)
        self.counters["opened"] += 1
        metrics.socket_opened(len(self.sockets))
        loop = asyncio.get_running_loop()
        sender = loop.create_task(conn.run_sender(), name="ws-sender")
        supervisor = loop.create_task(self._supervise(websocket, conn), name="ws-supervisor")
        try:
            if self.sockets.going_away:  # admitted while the replica began to stop
                await self.sockets.close_going_away(websocket)
            await self._receive_loop(websocket, conn)
        except WebSocketDisconnect as exc:
            self.sockets.note_close(websocket, exc.code)
        finally:
            # Submit the disconnect first: if this handler is being cancelled, the
            # awaits below may not run, but the shard still learns of the close.
            disconnected = shard.disconnect.remote(user_id, self.replica_id)
            self._count(user_id, -1)
            self.counters["closed"] += 1
            self.fan_in.unregister(conn)
            code = self.sockets.close_code(websocket)
            self.sockets.release(websocket)
            metrics.socket_closed(code, len(self.sockets))
            for task in (sender, supervisor):
                task.cancel()
            for result in await asyncio.gather(sender, supervisor, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, WebSocketDisconnect):
                    logger.warning(
                        "socket task of %s ended with an error", user_id, exc_info=result
                    )
            try:
                await disconnected
            except Exception:
                logger.exception("could not record the disconnect of %s", user_id)

    def _undo_connect(self, connecting: asyncio.Future[bool], shard: Any, user_id: str) -> None:
        if not connecting.cancelled() and connecting.exception() is None and connecting.result():
            shard.disconnect.remote(user_id, self.replica_id)  # its result is not needed

    async def _supervise(self, websocket: WebSocket, conn: Connection) -> None:
        """Close a socket whose client stopped reading; replay runs it fell behind on."""
        while True:
            await conn.wakeup.wait()
            conn.wakeup.clear()
            if conn.overflowed.is_set():
                self.counters["slow_closed"] += 1
                self.sockets.note_close(websocket, CLOSE_POLICY)
                logger.warning("closing a socket of %s: it stopped reading", conn.user_id)
                await websocket.close(CLOSE_POLICY, "client is not reading")
                return
            for run_id, after_seq in conn.take_behind().items():
                self.counters["catch_ups"] += 1
                try:
                    await self.turns.resume(conn, run_id, after_seq)
                except Exception:
                    logger.exception("could not replay run %s to a lagging socket", run_id)

    async def _receive_loop(self, websocket: WebSocket, conn: Connection) -> None:
        frames = TokenBucket(self.settings.frame_rate_per_s, self.settings.frame_rate_burst)
        idle_s = self.settings.idle_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), idle_s)
            except TimeoutError:
                if time.monotonic() - conn.last_progress < idle_s:
                    continue  # the socket is streaming to the client: not idle
                self.counters["idle_closed"] += 1
                self.sockets.note_close(websocket, CLOSE_NORMAL)
                await websocket.close(CLOSE_NORMAL, "idle timeout")
                return
            if message["type"] == "websocket.disconnect":
                self.sockets.note_close(websocket, message.get("code", CLOSE_NORMAL))
            if message["type"] == "websocket.disconnect" or self.sockets.is_going(websocket):
                return  # closed with 1001: nothing more is taken from it
            self.counters["frames"] += 1
            wait_s = frames.take()
            if wait_s > 0:
                self.counters["errors"] += 1
                metrics.error_sent("rate_limited")
                conn.send_event(
                    error_event("rate_limited", "too many frames", retry_after=retry_after(wait_s))
                )
                continue
            text = message.get("text")
            if text is None:
                self.counters["errors"] += 1
                metrics.error_sent("bad_request")
                conn.send_event(error_event("bad_request", "send JSON text frames, not binary"))
                continue
            if len(text) > self.settings.max_frame_bytes or (
                len(text.encode("utf-8", "surrogatepass")) > self.settings.max_frame_bytes
            ):
                self.sockets.note_close(websocket, CLOSE_TOO_LARGE)
                await websocket.close(CLOSE_TOO_LARGE, "frame too large")
                return
            await self.handle_frame(conn, text)

    async def handle_frame(self, conn: Connection, text: str) -> None:
        """Parse one text frame and act on it; problems become `error` events."""
        try:
            message = parse_frame(text, max_text_chars=self.settings.max_text_chars)
        except RaychatError as exc:
            self.counters["errors"] += 1
            metrics.error_sent(exc.code)
            conn.send_event(error_event(exc.code, exc.message))
            return
        try:
            await self.turns.act(conn, message)
        except Exception as exc:
            cause = remote_cause(exc)
            ref = getattr(message, "run_id", None) or getattr(message, "client_msg_id", None)
            self.counters["errors"] += 1
            if isinstance(cause, RaychatError):
                metrics.error_sent(cause.code)
            else:
                unavailable = isinstance(cause, RayActorError)
                metrics.error_sent("unavailable" if unavailable else "internal")
            if isinstance(cause, RateLimited):
                event = error_event(cause.code, cause.message, ref, retry_after=cause.retry_after)
                conn.send_event(event)
            elif isinstance(cause, RaychatError):
                conn.send_event(error_event(cause.code, cause.message, ref))
            elif isinstance(cause, RayActorError):
                logger.error("handling a %s frame failed", message.type, exc_info=exc)
                message_ = "the user's shard is restarting; try again (with the same client_msg_id)"
                conn.send_event(error_event("unavailable", message_, ref, retry_after=1.0))
            else:
                logger.error("handling a %s frame failed", message.type, exc_info=exc)
                conn.send_event(error_event("internal", "the server could not handle that", ref))
