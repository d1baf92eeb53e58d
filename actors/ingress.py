"""The ingress replica's logic: sockets, frames, event fan-in and the HTTP endpoints' work.

Owns nothing that must survive a socket. Per replica: one long-poll task per
agent actor (events of every run for this replica's users arrive in batches),
and per socket a receive loop (in the handler), a sender task and a bounded
outbound queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ray.exceptions import RayActorError
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors import metrics
from actors.auth import Identity
from actors.connection import Connection
from actors.errors import NotReady, RateLimited, RaychatError
from actors.event_hub import PollBatch
from actors.events import Event, error_event
from actors.factory import ActorHandles
from actors.http_turn import HttpTurn
from actors.messages import Cancel, Chat, ClientMessage, Ping, Resume, parse_frame
from actors.rate_limit import TokenBucket
from actors.remote import RemoteCaller, until_up
from actors.replica_reports import merge_ingress
from actors.stats_report import merge_persistence, merge_stats
from actors.user_shard import ChatRequest
from config import Settings
from config.serve_env import serve_ingress

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_TOO_LARGE = 1009
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006  # (metrics) a socket that ended without a close code seen here
ENDS_KEPT_PER_USER = 64
STOPPING_CHECK_S = 0.2


# How long a call to a shard that is restarting (its process or node lost) is tried again.
SHARD_RETRY_S = 30.0


def remote_cause(exc: BaseException) -> BaseException:
    """The exception an actor raised, unwrapped from Ray's task error."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class IngressCore:
    """Everything one ingress replica does, independent of FastAPI routing."""

    def __init__(
        self,
        settings: Settings,
        handles: ActorHandles,
        stopping: Callable[[], bool | None] | None = None,
    ) -> None:
        """`stopping` says whether the server is stopping this replica (None: cannot tell)."""
        self.settings = settings
        self.handles = handles
        self.replica_id = uuid.uuid4().hex
        self._stopping = stopping
        self.going_away = False
        # Chats to the same shard made at about the same time share one actor call.
        self._shard_chats = [RemoteCaller(s, batched={"chat": "chats"}) for s in handles.shards]
        # Connects whose socket went away before the shard answered (see `serve_socket`).
        self._orphans: set[asyncio.Future[bool]] = set()
        self._users: dict[str, set[Connection]] = {}
        # user id -> run id -> (status, text) of runs whose final event was delivered here
        self._ended: dict[str, dict[str, tuple[str, str]]] = {}
        self._pollers: list[asyncio.Task[None]] = []
        self._sockets: set[WebSocket] = set()
        self._going: set[WebSocket] = set()  # closed with 1001 (or being closed)
        self._closed_with: dict[WebSocket, int] = {}  # close code (either side), for metrics
        self._report_seq = 0  # numbers this replica's reports to the shards
        self.counters = dict.fromkeys(
            (
                "opened",
                "closed",
                "frames",
                "errors",
                "batches",
                "slow_closed",
                "idle_closed",
                "catch_ups",
                "going_away_closed",
            ),
            0,
        )

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Start one long-poll task per agent actor, and the shard keeper."""
        loop = asyncio.get_running_loop()
        for index, agent in enumerate(self.handles.agents):
            self._pollers.append(loop.create_task(self._poll_loop(agent), name=f"poll-{index}"))
        self._pollers.append(loop.create_task(self._keep_shards_ready(), name="shard-keeper"))
        if self._stopping is not None:
            if self._stopping() is None:
                logger.warning(
                    "cannot see when Serve starts to stop this replica: sockets get their "
                    "1001 close only from its destructor, at the end of the shutdown budget"
                )
            else:
                stopping = self._stopping
                self._pollers.append(
                    loop.create_task(self._close_when_stopping(stopping), name="drain-watch")
                )

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
        """Raise if a background task of this replica died (Serve's health check).

        The drain watcher ends normally once the replica is stopping; the
        event polls and the shard keeper never end but by `stop`.
        """
        for task in self._pollers:
            if task.done() and (task.cancelled() or task.exception() is not None):
                error = None if task.cancelled() else task.exception()
                raise RuntimeError(f"the replica's {task.get_name()} task stopped") from error

    async def _close_when_stopping(self, stopping: Callable[[], bool | None]) -> None:
        """Once the replica is being stopped, close every socket with 1001 at once.

        Serve waits for open sockets before it stops a replica; closing them
        lets clients reconnect to another replica and `resume` right away.
        """
        while True:
            if stopping():
                break
            await asyncio.sleep(STOPPING_CHECK_S)  # Serve sets a flag; there is no event
        logger.info("this replica is stopping: closing %d sockets with 1001", len(self._sockets))
        await self._close_all()

    async def _keep_shards_ready(self) -> None:
        """Every `agent_check_s`, make each shard rebuild itself if it has restarted.

        A shard that answers False has been drained for a full stop: close every socket.
        """
        while True:
            await asyncio.sleep(self.settings.agent_check_s)  # a periodic check
            self._report_seq += 1
            report = self._local_stats()  # this replica's counters, for service-wide stats
            results = await asyncio.gather(
                *(shard.ensure_ready.remote(report) for shard in self.handles.shards),
                return_exceptions=True,
            )
            for index, result in enumerate(results):
                if isinstance(result, BaseException):
                    logger.warning("shard %d is not ready", index, exc_info=result)
            if False in results and not self.going_away:
                logger.info("the service was drained: closing %d sockets", len(self._sockets))
                await self._close_all()

    async def _close_all(self) -> None:
        """Refuse new sockets and close every open one with 1001, all at once."""
        self.going_away = True
        await asyncio.gather(*(self._going_away(websocket) for websocket in list(self._sockets)))

    async def _going_away(self, websocket: WebSocket) -> None:
        if websocket in self._going:
            return
        self._going.add(websocket)
        self._closed_with.setdefault(websocket, CLOSE_GOING_AWAY)
        try:  # bounded: a client that stopped reading must not hold the others up
            await asyncio.wait_for(websocket.close(CLOSE_GOING_AWAY, "server shutting down"), 2.0)
        except Exception:  # the client may have gone already
            logger.debug("could not close a socket with 1001", exc_info=True)
        else:
            self.counters["going_away_closed"] += 1

    async def stop(self) -> None:
        """Close every socket with 1001 and stop the pollers."""
        await self._close_all()
        for task in self._pollers:
            task.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        self._pollers.clear()
        for caller in self._shard_chats:
            await caller.batchers["chat"].close()

    async def _poll_loop(self, agent: Any) -> None:
        backoff = 0.05
        while True:
            try:
                batch: PollBatch = await agent.poll.remote(
                    self.replica_id, self.settings.poll_timeout_s
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("polling an agent actor failed; retrying in %.2fs", backoff)
                await asyncio.sleep(backoff)  # back off while the actor restarts
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            if batch:
                self.counters["batches"] += 1
                self.dispatch(batch)

    def dispatch(self, batch: PollBatch) -> None:
        """Hand each run's new events to every socket of its user on this replica.

        Ends of runs are kept per connected user and go to the user's shard with
        the next chat: the shard learns most ends this way, without a call of their own.
        """
        for user_id, run_id, first_seq, texts, end in batch:
            conns = self._users.get(user_id, ())
            for conn in conns:
                conn.deliver(run_id, first_seq, texts)
            if end is not None and conns:
                ended = self._ended.setdefault(user_id, {})
                ended[run_id] = end
                if len(ended) > ENDS_KEPT_PER_USER:  # the shard's watchdog learns the rest
                    del ended[next(iter(ended))]

    # -- sockets ---------------------------------------------------------------
    def admit(self, websocket: WebSocket) -> bool:
        """Count a new socket against this replica's limit at once; False when it is full.

        Counted before its handshake, so sockets that arrive together cannot
        all pass the check while the first ones are still being admitted.
        """
        if len(self._sockets) >= self.settings.max_sockets_per_replica:
            return False
        self._sockets.add(websocket)
        return True

    def release(self, websocket: WebSocket) -> None:
        """Uncount a socket that `admit` counted (idempotent)."""
        self._sockets.discard(websocket)
        self._going.discard(websocket)
        self._closed_with.pop(websocket, None)

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
        # Counting a socket twice (a call that ran on a shard that then died) is harmless:
        # a restarted shard starts counting afresh.
        connecting = asyncio.ensure_future(
            until_up(lambda: shard.connect.remote(user_id, self.replica_id, limit), SHARD_RETRY_S)
        )
        try:
            admitted = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # Cancelled while the shard counts this socket: uncount it when it answers
            # (the task is kept until then).
            self._orphans.add(connecting)
            connecting.add_done_callback(self._orphans.discard)
            connecting.add_done_callback(lambda _: self._undo_connect(connecting, shard, user_id))
            raise
        if not admitted:
            metrics.socket_closed(CLOSE_POLICY)
            await websocket.close(CLOSE_POLICY, "too many open sockets for this user")
            return
        self._users.setdefault(user_id, set()).add(conn)
        self.counters["opened"] += 1
        metrics.socket_opened(len(self._sockets))
        loop = asyncio.get_running_loop()
        sender = loop.create_task(conn.run_sender(), name="ws-sender")
        supervisor = loop.create_task(self._supervise(websocket, conn), name="ws-supervisor")
        try:
            if self.going_away:  # admitted while the replica began to stop
                await self._going_away(websocket)
            await self._receive_loop(websocket, conn)
        except WebSocketDisconnect as exc:
            self._closed_with.setdefault(websocket, exc.code)
        finally:
            # Submit the disconnect first: if this handler is being cancelled, the
            # awaits below may not run, but the shard still learns of the close.
            disconnected = shard.disconnect.remote(user_id, self.replica_id)
            self.counters["closed"] += 1
            users = self._users.get(user_id)
            if users is not None:
                users.discard(conn)
                if not users:
                    del self._users[user_id]
                    self._ended.pop(user_id, None)
            code = self._closed_with.get(websocket, CLOSE_ABNORMAL)
            self.release(websocket)
            metrics.socket_closed(code, len(self._sockets))
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
                self._closed_with.setdefault(websocket, CLOSE_POLICY)
                logger.warning("closing a socket of %s: it stopped reading", conn.user_id)
                await websocket.close(CLOSE_POLICY, "client is not reading")
                return
            for run_id, after_seq in conn.take_behind().items():
                self.counters["catch_ups"] += 1
                try:
                    await self.resume(conn, run_id, after_seq)
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
                self._closed_with.setdefault(websocket, CLOSE_NORMAL)
                await websocket.close(CLOSE_NORMAL, "idle timeout")
                return
            if message["type"] == "websocket.disconnect":
                self._closed_with.setdefault(websocket, message.get("code", CLOSE_NORMAL))
            if message["type"] == "websocket.disconnect" or websocket in self._going:
                return  # closed with 1001: nothing more is taken from it
            self.counters["frames"] += 1
            wait_s = frames.take()
            if wait_s > 0:
                self.counters["errors"] += 1
                metrics.error_sent("rate_limited")
                conn.send_event(
                    error_event("rate_limited", "too many frames", retry_after=round(wait_s, 3))
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
                self._closed_with.setdefault(websocket, CLOSE_TOO_LARGE)
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
            await self._act(conn, message)
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

    async def _act(
        self, conn: Connection, message: ClientMessage, run_id: str | None = None
    ) -> None:
        shard = self.handles.shard(conn.user_id)
        if isinstance(message, Ping):
            conn.send_event({"type": "pong"})
        elif isinstance(message, Chat):
            request = ChatRequest(
                user_id=conn.user_id,
                run_id=run_id or uuid.uuid4().hex,
                text=message.text,
                replica_id=self.replica_id,
                session_id=message.session_id,
                client_msg_id=message.client_msg_id,
                agent=message.agent,
                on_busy=message.on_busy,
                ended=tuple(
                    (run_id, status, text)
                    for run_id, (status, text) in self._ended.pop(conn.user_id, {}).items()
                ),
            )
            caller = self._shard_chats[self.handles.shard_index(conn.user_id)]
            attempts = 0

            async def send() -> list[Event]:
                # Sent again after a shard went away, the chat says so: a turn the lost
                # shard stored is then answered as a duplicate, not stored twice.
                nonlocal attempts
                attempts += 1
                again = replace(request, resent=True) if attempts > 1 else request
                events: list[Event] = await caller.chat(again)
                return events

            events = await until_up(send, SHARD_RETRY_S)
            if attempts > 1 and events and events[0].get("duplicate"):
                # Sent again by this replica, found stored: the client sent it once. It may
                # have seen the run already (its end, as a lost run's): nothing twice.
                await self._resent_turn(conn, events[0])
                return
            for event in events:
                conn.send_event(event)
            if events and events[0].get("duplicate"):
                await self.resume(conn, events[0]["run_id"], events[0]["seq"])
        elif isinstance(message, Cancel):
            metrics.cancelled()
            for event in await shard.cancel.remote(conn.user_id, message.run_id):
                conn.send_event(event)
        elif isinstance(message, Resume):
            metrics.resumed()
            await self.resume(conn, message.run_id, message.after_seq)

    async def _resent_turn(self, conn: Connection, accepted: Event) -> None:
        """Answer a chat this replica sent again and found stored, as its first answer."""
        run_id = accepted["run_id"]
        if conn.seen.get(run_id, 0) < accepted["seq"]:
            conn.send_event({**accepted, "duplicate": False})
        if not conn.has_ended(run_id):
            await self.resume(conn, run_id, conn.seen.get(run_id, 0))

    async def resume(self, conn: Connection, run_id: str, after_seq: int) -> None:
        """Replay a run to `conn` after `after_seq`, then keep it streaming live."""
        conn.begin_replay(run_id, after_seq)
        try:
            shard = self.handles.shard(conn.user_id)
            events = await until_up(
                lambda: shard.resume.remote(conn.user_id, run_id, after_seq, self.replica_id),
                SHARD_RETRY_S,
            )
        except BaseException:
            conn.abandon_replay(run_id)
            raise
        conn.finish_replay(run_id, after_seq, events)

    # -- HTTP turns (the OpenAI-compatible door) -------------------------------------
    async def http_turn(self, user_id: str, message: Chat) -> HttpTurn:
        """Run one `chat` for an HTTP request exactly as a socket's; the turn yields its events.

        The turn is registered for the user like a socket before the chat goes
        to the shard, so `dispatch` delivers its run's events to it. Raises what
        the chat raised (rate limited, busy, bad request, ...), with nothing
        left registered. The caller iterates the turn, then `aclose`s it.
        """
        turn = HttpTurn(
            user_id,
            uuid.uuid4().hex,
            queue_max=self.settings.outbound_queue_max,
            stuck_s=self.settings.stuck_timeout_s,
            resume=self.resume,
            finish=self._finish_http_turn,
        )
        self._users.setdefault(user_id, set()).add(turn.conn)
        turn.start()
        try:
            await self._act(turn.conn, message, run_id=turn.run_id)
        except BaseException:
            await turn.aclose(cancel=False)
            raise
        return turn

    async def _finish_http_turn(self, turn: HttpTurn, cancel: bool) -> None:
        """Unregister an HTTP turn; cancel its run if its response went away before the end."""
        users = self._users.get(turn.user_id)
        if users is not None:
            users.discard(turn.conn)
            if not users:
                del self._users[turn.user_id]
                self._ended.pop(turn.user_id, None)
        if not cancel:
            return
        # Submitted before the first await: it goes out even if this caller is cancelled.
        cancelled = self.handles.shard(turn.user_id).cancel.remote(turn.user_id, turn.run_id)
        try:
            await cancelled
        except Exception:
            logger.warning("could not cancel run %s of a gone response", turn.run_id, exc_info=True)

    # -- HTTP endpoints ------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """The statistics document of PROTOCOL.md, for the whole service.

        Its `ingress` section adds up this replica's counters and the latest
        ones every other live replica reported to the shards (`merge_ingress`).
        """
        shard_refs = [shard.stats.remote() for shard in self.handles.shards]
        agent_refs = [agent.stats.remote() for agent in self.handles.agents]
        shards = await asyncio.gather(*shard_refs)
        agents = await asyncio.gather(*agent_refs)
        writers = await asyncio.gather(*(w.stats.remote() for w in self.handles.writers))
        ingress = merge_ingress(self._local_stats(), [s.get("replicas", {}) for s in shards])
        return merge_stats(list(shards), list(agents), merge_persistence(list(writers)), ingress)

    def _local_stats(self) -> dict[str, Any]:
        """This replica's own counters (its report to the shards)."""
        conns = [conn for user_conns in self._users.values() for conn in user_conns]
        return {
            "replica_id": self.replica_id,
            "seq": self._report_seq,
            # Serve's ingress in front of this replica, and the actor counts in use.
            "proxy": serve_ingress(),
            "shards": len(self.handles.shards),
            "agent_actors": len(self.handles.agents),
            "persistence_writers": len(self.handles.writers),
            "sockets": len(self._sockets),
            "users": len(self._users),
            # Frames waiting in this replica's outbound queues (each bounded by
            # `outbound_queue_max`), and runs whose live events wait for a catch-up.
            "outbound_queued": sum(conn.queued for conn in conns),
            "outbound_queued_max": max((conn.queued for conn in conns), default=0),
            "behind_runs": sum(conn.behind for conn in conns),
            # Chats sent to shards, and the actor calls that carried them.
            "chats_sent": sum(caller.batchers["chat"].items for caller in self._shard_chats),
            "chat_calls": sum(caller.batchers["chat"].batches for caller in self._shard_chats),
            **self.counters,
        }

    async def cleanup(self) -> dict[str, int]:
        """Drop expired cache entries and finished run buffers everywhere."""
        shard_results = await asyncio.gather(*(s.cleanup.remote() for s in self.handles.shards))
        buffers = await asyncio.gather(*(a.cleanup.remote() for a in self.handles.agents))
        return {
            "expired_contexts": sum(r["contexts"] for r in shard_results),
            "finished_runs": sum(r["runs"] for r in shard_results),
            "run_buffers": sum(buffers),
        }

    async def refresh_context(self, user_id: str) -> dict[str, Any]:
        """Reload a user's context from the database into its shard's cache."""
        context = await self.handles.shard(user_id).context.remote(user_id, True)
        return {"user_id": user_id, "preferences": context.preferences, "todos": context.todos}

    async def history(
        self, user_id: str, session_id: str, limit: int, before: int | None
    ) -> dict[str, Any]:
        """A session's messages, oldest first, with in-flight replies' text so far."""
        rows = await self.handles.store.history(user_id, session_id, limit, before)
        streaming = [r["run_id"] for r in rows if r["status"] == "streaming"]
        if streaming:
            texts = await self.handles.shard(user_id).streaming_texts.remote(user_id, streaming)
            for row in rows:
                if row["status"] == "streaming":
                    row["text"] = texts.get(row["run_id"], row["text"])
        return {"session_id": session_id, "messages": rows}

    async def ready(self) -> bool:
        """True when the database and every actor answer."""
        refs = [w.ping.remote() for w in self.handles.writers]
        refs += [a.ping.remote() for a in self.handles.agents]
        refs += [s.ping.remote() for s in self.handles.shards]
        results = await asyncio.wait_for(asyncio.gather(*refs), timeout=10)
        return all(results)
