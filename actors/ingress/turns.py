"""What a client's `chat`, `cancel` and `resume` do at the user's shard, for sockets and HTTP."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from actors import metrics
from actors.connection import Connection
from actors.events import Event
from actors.factory import ActorHandles
from actors.http_turn import HttpTurn
from actors.ingress.fan_in import FanIn
from actors.messages import Cancel, Chat, ClientMessage, Ping, Resume
from actors.remote import RemoteCaller, until_up
from actors.shard import ChatDeferred, ChatRequest
from config import Settings

logger = logging.getLogger(__name__)

# How long a call to a shard that is restarting (its process or node lost) is tried again.
SHARD_RETRY_S = 30.0


def remote_cause(exc: BaseException) -> BaseException:
    """The exception an actor raised, unwrapped from Ray's task error."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class Turns:
    """Acts on a connection's client messages; its run's events then come by the fan-in."""

    def __init__(
        self, settings: Settings, handles: ActorHandles, replica_id: str, fan_in: FanIn
    ) -> None:
        self.settings = settings
        self.handles = handles
        self.replica_id = replica_id
        self.fan_in = fan_in
        # Chats to the same shard made at about the same time share one actor call.
        self.shard_chats = [RemoteCaller(s, batched={"chat": "chats"}) for s in handles.shards]

    async def close(self) -> None:
        """Stop the chat batchers."""
        for caller in self.shard_chats:
            await caller.batchers["chat"].close()

    async def act(
        self, conn: Connection, message: ClientMessage, run_id: str | None = None
    ) -> None:
        """Do what a parsed client message asks; its answers go to `conn`."""
        shard = self.handles.shard(conn.user_id)
        if isinstance(message, Ping):
            conn.send_event({"type": "pong"})
        elif isinstance(message, Chat):
            await self._chat(conn, message, run_id)
        elif isinstance(message, Cancel):
            metrics.cancelled()
            for event in await shard.cancel.remote(conn.user_id, message.run_id):
                conn.send_event(event)
        elif isinstance(message, Resume):
            metrics.resumed()
            await self.resume(conn, message.run_id, message.after_seq)

    async def _chat(self, conn: Connection, message: Chat, run_id: str | None) -> None:
        request = ChatRequest(
            user_id=conn.user_id,
            run_id=run_id or uuid.uuid4().hex,
            text=message.text,
            replica_id=self.replica_id,
            session_id=message.session_id,
            client_msg_id=message.client_msg_id,
            agent=message.agent,
            on_busy=message.on_busy,
            ended=self.fan_in.take_ended(conn.user_id),
        )
        caller = self.shard_chats[self.handles.shard_index(conn.user_id)]
        attempts = 0

        async def send() -> list[Event]:
            # Sent again after a shard went away, the chat says so: a turn the lost
            # shard stored is then answered as a duplicate, not stored twice.
            nonlocal attempts
            attempts += 1
            again = replace(request, resent=True) if attempts > 1 else request
            answer = await caller.chat(again)  # its events, or `ChatDeferred`
            if isinstance(answer, ChatDeferred):
                # Its turn is being stored again (a writer restarting): the batch it came
                # with was answered without it; its own answer is fetched apart.
                shard = self.handles.shard(conn.user_id)
                answer = await shard.chat_result.remote(answer.run_id)
            events: list[Event] = answer
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
        to the shard, so the fan-in delivers its run's events to it. Raises what
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
        self.fan_in.register(turn.conn)
        turn.start()
        try:
            await self.act(turn.conn, message, run_id=turn.run_id)
        except BaseException:
            await turn.aclose(cancel=False)
            raise
        return turn

    async def _finish_http_turn(self, turn: HttpTurn, cancel: bool) -> None:
        """Unregister an HTTP turn; cancel its run if its response went away before the end."""
        self.fan_in.unregister(turn.conn)
        if not cancel:
            return
        # Submitted before the first await: it goes out even if this caller is cancelled.
        cancelled = self.handles.shard(turn.user_id).cancel.remote(turn.user_id, turn.run_id)
        try:
            await cancelled
        except Exception:
            logger.warning("could not cancel run %s of a gone response", turn.run_id, exc_info=True)
