"""What a run is, between the shard that owns it and the agent actor that executes it.

Plain data and protocols only: a shard imports this without the Agents SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.events import Event

ASSISTANT = "assistant"
ORGANIZER = "organizer"
AGENT_NAMES = (ASSISTANT, ORGANIZER)
SHUTDOWN_MESSAGE = "the service stopped during this run; its partial reply is stored"


@dataclass(frozen=True)
class RunSpec:
    """Everything an agent actor needs to execute one turn."""

    run_id: str
    user_id: str
    session_id: str
    text: str
    reply_message_id: int
    agent: str = ASSISTANT
    history: list[dict[str, str]] = field(default_factory=list)
    preferences: dict[str, str] = field(default_factory=dict)
    todos: list[dict[str, Any]] = field(default_factory=list)
    prelude: list[Event] = field(default_factory=list)
    subscribers: list[tuple[str, int]] = field(default_factory=list)
    cancelled: bool = False  # cancelled while queued: store and announce, run nothing
    owner: Any = None  # the run's shard: a RunOwner in process, its shard index between actors


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended and what was stored."""

    run_id: str
    status: str  # "completed" | "cancelled" | "failed"
    text: str
    message_id: int


class ReplyStore(Protocol):
    """Where a finished reply is committed before its final event goes out."""

    async def finish_reply(
        self,
        reply_message_id: int,
        text_: str,
        status: str,
        final_seq: int | None = None,
        error_code: str | None = None,
    ) -> None: ...


class RunOwner(Protocol):
    """The shard a run belongs to: told of context changes and of the run's end."""

    async def invalidate_context(self, user_id: str) -> bool: ...

    async def run_ended(self, user_id: str, outcome: RunOutcome) -> None: ...
