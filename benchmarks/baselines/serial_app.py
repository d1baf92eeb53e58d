"""The "before" design raychat replaces: one process, one chat turn at a time.

One uvicorn/FastAPI process. A global `asyncio.Lock` is held for the whole of
every turn, across all users, so turns never overlap. Each turn builds
everything afresh: a new `Persistence` (a new engine and connection pool; its
`start` re-runs `create_all` and the crash-recovery UPDATE), a new
`AgentManager`, hence a new `SimulatedModel` and new agents (`build_agents`),
and it reads the user's context and the session's history from the database
(no caches). The run
itself executes on that throwaway `AgentManager`, the same code raychat's agent
actors run, with coalescing off so every delta goes to the socket as it comes.

Frames: `chat` and `ping`. A socket's frames are handled in order, each turn
to its end before the next frame is read; `cancel` and `resume` are answered
with an `error` (`bad_request`) because a finished turn is all there ever is.
A repeated `client_msg_id` gets `run.accepted` with `duplicate: true` and no
other event. `GET /stats` counts turns and errors, and `max_active_turns`
(1 whenever the lock does its job).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from actors.agent_manager import AgentManager, RunSpec
from actors.connection import Connection
from actors.errors import BadRequest
from actors.events import accepted_event
from actors.messages import Chat, ClientMessage
from actors.persistence import Persistence
from actors.runs import AGENT_NAMES, ASSISTANT
from benchmarks.baselines._common import Backend, PersistenceTools, run_main
from config import Settings

TITLE = "raychat serial baseline"
LISTENER = "serial"  # the one subscriber of every run's event hub


class SerialBackend(Backend):
    """Runs every chat turn under one global lock, building everything per turn."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._turn_settings = settings.model_copy(update={"coalesce_ms": 0.0})
        self._lock = asyncio.Lock()
        self.turns = {"completed": 0, "cancelled": 0, "failed": 0, "duplicates": 0}
        self.active = 0
        self.max_active = 0

    async def start(self) -> None:
        """Create the tables once, so the first turn does not race a reader."""
        db = Persistence(self.settings)
        try:
            await db.start()
        finally:
            await db.close()

    async def handle(self, conn: Connection, message: ClientMessage) -> None:
        """Run a `chat` to its end under the global lock; refuse anything else."""
        if not isinstance(message, Chat):
            raise BadRequest(f"{message.type}: not supported by the serial baseline")
        if message.agent is not None and message.agent not in AGENT_NAMES:
            raise BadRequest(f"agent: unknown agent {message.agent[:64]!r}")
        async with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            db = Persistence(self.settings)
            try:
                await self._turn(conn, message, db)
            finally:
                self.active -= 1
                await db.close()

    async def _turn(self, conn: Connection, chat: Chat, db: Persistence) -> None:
        user_id = conn.user_id
        record = await db.begin_turn(
            user_id, chat.session_id, uuid.uuid4().hex, chat.text, chat.client_msg_id
        )
        accepted = accepted_event(
            chat.session_id, chat.client_msg_id, record.run_id, duplicate=record.duplicate
        )
        conn.send_event(accepted)
        if record.duplicate:
            self.turns["duplicates"] += 1
            return
        context = await db.load_context(user_id)
        history = await db.load_conversation(
            user_id, chat.session_id, self.settings.history_messages, record.run_id
        )
        tools = PersistenceTools(db)
        manager = AgentManager(self._turn_settings, services=tools, store=tools)
        spec = RunSpec(
            run_id=record.run_id,
            user_id=user_id,
            session_id=chat.session_id,
            text=chat.text,
            reply_message_id=record.reply_message_id,
            agent=chat.agent or ASSISTANT,
            history=history,
            preferences=context.preferences,
            todos=context.todos,
            prelude=[accepted],
            subscribers=[(LISTENER, 1)],
        )
        run = asyncio.create_task(manager.run_turn(spec), name=f"turn-{spec.run_id}")
        try:
            await self._stream(conn, manager, spec.run_id, run)
            outcome = await run
        finally:
            await manager.stop()  # cancels the run if we were cancelled; closes the model
        self.turns[outcome.status] += 1

    async def _stream(
        self, conn: Connection, manager: AgentManager, run_id: str, run: asyncio.Task[Any]
    ) -> None:
        """Send the run's events to the socket as they come, up to its final event."""
        delivered = 1
        while True:
            batch = await manager.poll(LISTENER, self.settings.poll_timeout_s)
            for _user, _run, first_seq, texts, _end in batch:
                conn.deliver(run_id, first_seq, texts)
                delivered = first_seq + len(texts) - 1
            buffer = manager.hub.get(run_id)
            if buffer is None or (buffer.finished and delivered >= buffer.last_seq):
                return
            if run.done() and not batch:
                return  # the run ended without a final event: `await run` raises

    def stats(self) -> dict[str, Any]:
        """Sockets, turns by outcome, and the most turns ever in flight at once."""
        return {
            **super().stats(),
            "turns": dict(self.turns),
            "active_turns": self.active,
            "max_active_turns": self.max_active,
        }


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.baselines.serial_app --port N` (settings from RAYCHAT_*)."""
    run_main(SerialBackend, TITLE, argv)


if __name__ == "__main__":
    main()
