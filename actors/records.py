"""What the persistence actor answers with: a user's context and a stored turn.

Plain data: a shard imports this without SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class UserContext:
    """What the agent knows about a user: preferences and open todos."""

    preferences: dict[str, str] = field(default_factory=dict)
    todos: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TurnRecord:
    """The stored user message of a turn and the reply row that will hold the answer."""

    run_id: str
    user_message_id: int
    reply_message_id: int
    duplicate: bool = False
    # Read with the turn when asked (`begin_turn(..., context=True, history_limit=N)`).
    context: UserContext | None = None
    history: list[dict[str, str]] | None = None
