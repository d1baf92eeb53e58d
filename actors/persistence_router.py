"""The persistence writers seen as one store: each call goes to the writer that owns it.

A user's reads and writes go to `writer_for(user_id)`; an update of one message
row (a reply's end) to `writer_for_row(row_id)`; scans and pings to every
writer. With one writer (SQLite) every call goes to it, as before.

Calls that are safe to repeat (reads, and a reply's end, which sets the same
values again) are retried while their writer restarts (its process or node
lost), for up to `retry_s`: the run they belong to lives elsewhere and must not
fail for it. Tool writes (a todo added twice) are not repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from actors.records import TurnRecord, UserContext
from actors.remote import RemoteCaller, until_up
from actors.sharding import writer_for, writer_for_row

RETRY_S = 60.0  # longest a repeatable call waits for its writer to come back


class PersistenceRouter:
    """`ShardStore`, tools and reply store over the persistence writer actors' handles."""

    def __init__(
        self,
        handles: Sequence[Any],
        batched: Mapping[str, str] | None = None,
        retry_s: float = RETRY_S,
    ) -> None:
        if not handles:
            raise ValueError("at least one persistence writer")
        self.callers = [RemoteCaller(handle, batched) for handle in handles]
        self.retry_s = retry_s
        self.retries = 0

    async def _repeatable(self, caller: RemoteCaller, method: str, *args: Any) -> Any:
        """`caller.method(*args)`, repeated while the writer is down (up to `retry_s`)."""
        return await until_up(lambda: getattr(caller, method)(*args), self.retry_s, self._retried)

    def _retried(self) -> None:
        self.retries += 1

    def for_user(self, user_id: str) -> RemoteCaller:
        """The writer of `user_id`'s rows."""
        return self.callers[writer_for(user_id, len(self.callers))]

    def for_row(self, row_id: int) -> RemoteCaller:
        """The writer that updates message row `row_id`."""
        return self.callers[writer_for_row(row_id, len(self.callers))]

    async def _everywhere(self, method: str, *args: Any) -> list[Any]:
        return list(await asyncio.gather(*(getattr(c, method)(*args) for c in self.callers)))

    # -- per user -------------------------------------------------------------------
    async def begin_turn(self, user_id: str, *args: Any, **kwargs: Any) -> TurnRecord:
        """Store a turn (`Persistence.begin_turn`) on the user's writer."""
        record: TurnRecord = await self.for_user(user_id).begin_turn(user_id, *args, **kwargs)
        return record

    async def load_context(self, user_id: str) -> UserContext:
        """The user's preferences and open todos."""
        context: UserContext = await self._repeatable(
            self.for_user(user_id), "load_context", user_id
        )
        return context

    async def load_conversation(self, user_id: str, *args: Any) -> list[dict[str, str]]:
        """The session's last messages as agent input."""
        items: list[dict[str, str]] = await self._repeatable(
            self.for_user(user_id), "load_conversation", user_id, *args
        )
        return items

    async def run_record(self, user_id: str, run_id: str) -> dict[str, Any] | None:
        """The stored reply row of one of the user's runs."""
        row: dict[str, Any] | None = await self._repeatable(
            self.for_user(user_id), "run_record", user_id, run_id
        )
        return row

    async def history(self, user_id: str, *args: Any) -> list[dict[str, Any]]:
        """A session's messages (`Persistence.history`)."""
        rows: list[dict[str, Any]] = await self._repeatable(
            self.for_user(user_id), "history", user_id, *args
        )
        return rows

    async def add_todo(self, user_id: str, text: str) -> dict[str, Any]:
        """Add an open todo."""
        todo: dict[str, Any] = await self.for_user(user_id).add_todo(user_id, text)
        return todo

    async def complete_todo(self, user_id: str, todo_id: int) -> dict[str, Any] | None:
        """Close one of the user's todos."""
        todo: dict[str, Any] | None = await self.for_user(user_id).complete_todo(user_id, todo_id)
        return todo

    async def set_preference(self, user_id: str, key: str, value: str) -> dict[str, str]:
        """Create or replace one preference."""
        stored: dict[str, str] = await self.for_user(user_id).set_preference(user_id, key, value)
        return stored

    # -- per row --------------------------------------------------------------------
    async def finish_reply(
        self,
        reply_message_id: int,
        text_: str,
        status: str,
        final_seq: int | None = None,
        error_code: str | None = None,
    ) -> None:
        """Store a reply's end (repeated while its writer restarts: it sets the same values)."""
        caller = self.for_row(reply_message_id)
        args = (reply_message_id, text_, status, final_seq, error_code)
        await self._repeatable(caller, "finish_reply", *args)

    async def fail_if_streaming(self, reply_message_id: int, error_code: str) -> dict[str, Any]:
        """Mark a reply failed unless it has ended; the stored row."""
        row: dict[str, Any] = await self._repeatable(
            self.for_row(reply_message_id), "fail_if_streaming", reply_message_id, error_code
        )
        return row

    # -- every writer ---------------------------------------------------------------
    async def streaming_replies(self) -> list[dict[str, Any]]:
        """Every reply still streaming, from every writer."""
        # Every writer reads the same database: one answer holds every row.
        rows: list[dict[str, Any]] = await self._repeatable(self.callers[0], "streaming_replies")
        return rows

    async def ping(self) -> bool:
        """True once every writer's database answers."""
        return all(await self._everywhere("ping"))

    async def stats(self) -> list[dict[str, Any]]:
        """Each writer's statistics, by index."""
        return await self._everywhere("stats")
