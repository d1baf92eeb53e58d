"""Stand-ins for the collaborators of an `AgentManager`: tools, reply store, run owner."""

from __future__ import annotations

from typing import Any

from actors.agent_manager import RunOutcome


class FakeServices:
    def __init__(self) -> None:
        self.todos: list[dict[str, Any]] = []

    async def add_todo(self, user_id: str, text: str) -> dict[str, Any]:
        todo = {"id": len(self.todos) + 1, "text": text, "done": False}
        self.todos.append(todo)
        return todo

    async def complete_todo(self, user_id: str, todo_id: int) -> dict[str, Any] | None:
        return None

    async def set_preference(self, user_id: str, key: str, value: str) -> dict[str, str]:
        return {"key": key, "value": value}

    async def load_context(self, user_id: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
        return {}, self.todos


class FakeStore:
    def __init__(self) -> None:
        self.finished: list[tuple[int, str, str, int | None, str | None]] = []

    async def finish_reply(
        self,
        reply_message_id: int,
        text_: str,
        status: str,
        final_seq: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.finished.append((reply_message_id, text_, status, final_seq, error_code))


class FakeObserver:
    def __init__(self) -> None:
        self.ended: list[tuple[str, RunOutcome]] = []
        self.invalidated: list[str] = []

    async def invalidate_context(self, user_id: str) -> bool:
        self.invalidated.append(user_id)
        return True

    async def run_ended(self, user_id: str, outcome: RunOutcome) -> None:
        self.ended.append((user_id, outcome))
