"""What a shard's parts share: the chat request, a run, a lane, and the ports to other actors."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.events import RUN_CANCELLED, RUN_COMPLETED, Event, run_failed
from actors.records import TurnRecord, UserContext
from actors.runs import SHUTDOWN_MESSAGE, RunOutcome, RunSpec

History = list[dict[str, str]]
LaneKey = tuple[str, str]  # (user id, session id)
LOST_MESSAGE = "the run was lost: the actor running it stopped"
# How long storing a turn is retried while its persistence writer restarts (a lost node).
STORE_RETRY_S = 30.0
FAILURE_MESSAGES = {"internal": LOST_MESSAGE, "shutdown": SHUTDOWN_MESSAGE}


class AgentPort(Protocol):
    """The agent-actor calls a shard makes."""

    async def cancel(self, run_id: str) -> bool: ...

    async def replay_and_subscribe(
        self, run_id: str, after_seq: int, replica_id: str
    ) -> list[Event] | None: ...

    async def texts(self, run_ids: list[str]) -> dict[str, str]: ...

    async def final_event(self, run_id: str) -> Event | None: ...

    async def start_run(self, spec: RunSpec) -> None: ...

    async def announce_final(self, run_id: str, user_id: str, events: list[Event]) -> bool: ...

    async def holding(self, run_ids: list[str]) -> list[str]: ...

    async def report_end(self, run_id: str) -> RunOutcome | None: ...

    async def runs_status(self, run_ids: list[str]) -> dict[str, RunOutcome | None]: ...


class ShardStore(Protocol):
    """The persistence calls a shard makes."""

    async def begin_turn(
        self,
        user_id: str,
        session_id: str,
        run_id: str,
        text_: str,
        client_msg_id: str | None,
        retry: bool = False,
        context: bool = False,
        history_limit: int = 0,
    ) -> TurnRecord: ...

    async def finish_reply(
        self, reply_message_id: int, text_: str, status: str, final_seq: int | None = None
    ) -> None: ...

    async def load_context(self, user_id: str) -> UserContext: ...

    async def load_conversation(
        self, user_id: str, session_id: str, limit: int, exclude_run_id: str | None = None
    ) -> History: ...

    async def run_record(self, user_id: str, run_id: str) -> dict[str, Any] | None: ...

    async def fail_if_streaming(self, reply_message_id: int, error_code: str) -> dict[str, Any]: ...

    async def streaming_replies(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ChatRequest:
    """A validated `chat` frame plus who sent it and from which replica."""

    user_id: str
    run_id: str
    text: str
    replica_id: str
    session_id: str = "default"
    client_msg_id: str | None = None
    agent: str | None = None
    on_busy: str = "enqueue"
    # Runs of this user whose final event the replica delivered: (run_id, status, text).
    ended: tuple[tuple[str, str, str], ...] = ()
    # Sent again because the shard it was first sent to went away before answering.
    resent: bool = False


@dataclass
class Run:
    """A run the shard knows: where it is and how it ended."""

    run_id: str
    user_id: str
    session_id: str
    agent_index: int
    status: str = "queued"  # queued | running | completed | cancelled | failed
    spec: RunSpec | None = None
    prelude: list[Event] = field(default_factory=list)
    subscribers: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    on_agent: bool = False  # started on its agent (from then on the agent reports its end)
    ended_at: float | None = None
    cancel_requested: bool = False
    # Looked up when the chat arrived, for a run that starts at once (else at its start).
    context: UserContext | None = None
    history: History | None = None

    @property
    def key(self) -> LaneKey:
        """The lane this run belongs to."""
        return (self.user_id, self.session_id)


@dataclass
class Lane:
    """The runs of one (user, session): at most one active, the rest in order."""

    active: str | None = None
    queue: deque[str] = field(default_factory=deque)


def final_from_row(run_id: str, message_id: int, row: dict[str, Any], seq: int) -> Event:
    """The final event of a run as its stored reply row (`status`, `text`, `error_code`) says."""
    if row["status"] == "failed":
        code = row.get("error_code") or "internal"
        event = run_failed(code, FAILURE_MESSAGES.get(code, "the run failed"))
    else:
        kind = RUN_COMPLETED if row["status"] == "completed" else RUN_CANCELLED
        event = {"type": kind, "message_id": message_id, "text": row["text"]}
    return {**event, "run_id": run_id, "seq": seq}
