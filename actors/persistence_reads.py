"""The persistence actor's reads: each on its own pooled connection, never behind a write."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from actors.db_schema import messages, preferences, todos
from actors.records import UserContext

FINAL_STATUSES = ("completed", "cancelled", "failed")
# What a reply row says about its run's end (see actors.shard.model.final_from_row).
REPLY_COLUMNS = (
    messages.c.id,
    messages.c.text,
    messages.c.status,
    messages.c.session_id,
    messages.c.final_seq,
    messages.c.error_code,
)


class PersistenceReads:
    """The read queries of `Persistence` (its engine, `start` and `reads` counter)."""

    _engine: AsyncEngine
    reads: int

    async def start(self) -> None:
        """Make the schema ready (`Persistence.start`)."""
        raise NotImplementedError

    async def load_context(self, user_id: str) -> UserContext:
        """The user's preferences and open todos, read from the database."""
        await self.start()
        self.reads += 1
        async with self._engine.connect() as conn:
            return await self._read_context(conn, user_id)

    @staticmethod
    async def _read_context(conn: AsyncConnection, user_id: str) -> UserContext:
        prefs = await conn.execute(
            select(preferences.c.key, preferences.c.value)
            .where(preferences.c.user_id == user_id)
            .order_by(preferences.c.key)
        )
        open_todos = await conn.execute(
            select(todos.c.id, todos.c.text)
            .where(todos.c.user_id == user_id, todos.c.done.is_(False))
            .order_by(todos.c.id)
        )
        return UserContext(
            preferences={row.key: row.value for row in prefs},
            todos=[{"id": row.id, "text": row.text} for row in open_todos],
        )

    async def load_conversation(
        self, user_id: str, session_id: str, limit: int, exclude_run_id: str | None = None
    ) -> list[dict[str, str]]:
        """The last `limit` finished messages of a session as agent input items, oldest first.

        `exclude_run_id` leaves out the turn being started (its user message is
        already stored when the history is read).
        """
        await self.start()
        self.reads += 1
        async with self._engine.connect() as conn:
            return await self._read_conversation(conn, user_id, session_id, limit, exclude_run_id)

    @staticmethod
    async def _read_conversation(
        conn: AsyncConnection,
        user_id: str,
        session_id: str,
        limit: int,
        exclude_run_id: str | None = None,
    ) -> list[dict[str, str]]:
        if limit <= 0:
            return []
        rows = await conn.execute(
            select(messages.c.role, messages.c.text)
            .where(
                messages.c.user_id == user_id,
                messages.c.session_id == session_id,
                messages.c.status.in_(("stored", *FINAL_STATUSES)),
                messages.c.text != "",
                messages.c.run_id != (exclude_run_id or ""),
            )
            .order_by(messages.c.id.desc())
            .limit(limit)
        )
        return [{"role": row.role, "content": row.text} for row in reversed(rows.all())]

    async def history(
        self, user_id: str, session_id: str, limit: int, before: int | None
    ) -> list[dict[str, Any]]:
        """A session's messages, oldest first: the `limit` newest with `id < before`."""
        await self.start()
        self.reads += 1
        conditions = [messages.c.user_id == user_id, messages.c.session_id == session_id]
        if before is not None:
            conditions.append(messages.c.id < before)
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    messages.c.id,
                    messages.c.run_id,
                    messages.c.role,
                    messages.c.text,
                    messages.c.status,
                    messages.c.client_msg_id,
                    messages.c.created_at,
                )
                .where(*conditions)
                .order_by(messages.c.id.desc())
                .limit(limit)
            )
            return [dict(row._mapping) for row in reversed(rows.all())]

    async def run_record(self, user_id: str, run_id: str) -> dict[str, Any] | None:
        """The stored reply row of one of the user's runs, or None."""
        await self.start()
        self.reads += 1
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*REPLY_COLUMNS).where(
                        messages.c.run_id == run_id,
                        messages.c.user_id == user_id,
                        messages.c.role == "assistant",
                    )
                )
            ).first()
            return None if row is None else dict(row._mapping)

    async def streaming_replies(self) -> list[dict[str, Any]]:
        """Every reply still `streaming`: run id, user, session and reply row id."""
        await self.start()
        self.reads += 1
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    messages.c.run_id,
                    messages.c.user_id,
                    messages.c.session_id,
                    messages.c.id,
                ).where(messages.c.status == "streaming", messages.c.role == "assistant")
            )
            return [dict(row._mapping) for row in rows]

    async def count_messages(self) -> int:
        """How many messages are stored (for tests and stats)."""
        await self.start()
        async with self._engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(messages)) or 0)
