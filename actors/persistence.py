"""The persistence actor's logic: the only writer to the database (reads: `persistence_reads`).

Writes go through a `GroupCommitter` (bounded queue, group commit) and return
only after they are committed, so callers can acknowledge what they stored.
Reads use their own pooled connections; with SQLite in WAL mode they never
wait behind a write batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import and_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.bounded import BoundedLRU
from actors.call_batcher import settle_each
from actors.db_engine import insert_if_missing, make_engine, new_id
from actors.db_schema import messages, preferences, sessions, todos, users
from actors.group_commit import GroupCommitter
from actors.persistence_reads import FINAL_STATUSES, REPLY_COLUMNS, PersistenceReads
from actors.records import TurnRecord, UserContext
from actors.schema import upgrade_schema
from actors.stats import percentiles
from config import Settings

logger = logging.getLogger(__name__)
KNOWN_MAX = 100_000  # users, and sessions, remembered as stored


class Persistence(PersistenceReads):
    """Stores users, sessions, messages, todos and preferences.

    One instance per writer: writer `writer` of `persistence_writers` is sent
    the calls of the users `writer_for` gives it (and any row updates), so with
    several writers (PostgreSQL) each commits its own share of the load.
    """

    def __init__(self, settings: Settings, writer: int = 0, known_max: int = KNOWN_MAX) -> None:
        self.writer = writer
        self._engine = make_engine(settings.database_url)
        self._writer: GroupCommitter[AsyncConnection] = GroupCommitter(
            self._transaction,
            queue_max=settings.persist_queue_max,
            batch_max=settings.persist_batch_max,
            flush_s=settings.persist_flush_ms / 1000,
            on_rollback=self._forget_known,
        )
        self._schema_ready: asyncio.Future[None] | None = None
        # Users and sessions known to have rows (LRU: a miss asks the database again).
        self._known_users: BoundedLRU[str, bool] = BoundedLRU(known_max)
        self._known_sessions: BoundedLRU[tuple[str, str], bool] = BoundedLRU(known_max)
        self.reads = 0

    def _forget_known(self) -> None:
        # A failed batch rolled back the user and session rows it may have added.
        self._known_users.clear()
        self._known_sessions.clear()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.begin() as conn:
            yield conn

    async def start(self) -> None:
        """Migrate the schema to the newest revision (once per instance).

        Replies left `streaming` are not touched here: a writer restarting
        (its process or node lost) cannot tell which of them agents are still
        running. The shards settle them: each shard's recovery asks the agents
        which of its users' streaming runs they hold and fails the others.
        """
        if self._schema_ready is None:
            self._schema_ready = asyncio.get_running_loop().create_future()
            try:
                async with self._engine.begin() as conn:
                    await conn.run_sync(upgrade_schema)
            except BaseException as exc:
                self._schema_ready.set_exception(exc)
                self._schema_ready = None
                raise
            self._schema_ready.set_result(None)
        await self._schema_ready

    async def _write(self, op: Any) -> Any:
        await self.start()
        return await self._writer.submit(op)

    async def flush(self) -> int:
        """Wait until every write queued so far is committed; return how many are stored."""
        await self._writer.flush()
        return await self.count_messages()

    async def close(self) -> None:
        """Commit everything queued, then release the database."""
        await self._writer.close()
        await self._engine.dispose()

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        await self.start()
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    # -- writes -----------------------------------------------------------
    async def _ensure_user_session(
        self, conn: AsyncConnection, user_id: str, session_id: str | None
    ) -> tuple[bool, bool]:
        """Create the user and session rows if missing; whether each was new."""
        now = time.time()
        new_user = new_session = False
        if not self._known_users.touch(user_id):
            new_user = await insert_if_missing(conn, users, {"id": user_id, "created_at": now})
            self._known_users.put(user_id, True)
        if session_id is not None and not self._known_sessions.touch((user_id, session_id)):
            row = {"user_id": user_id, "session_id": session_id, "created_at": now}
            new_session = await insert_if_missing(conn, sessions, row)
            self._known_sessions.put((user_id, session_id), True)
        return new_user, new_session

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
    ) -> TurnRecord:
        """Store the user message and an empty `streaming` reply row, committed together.

        A `client_msg_id` this user already used returns the original turn with
        `duplicate=True` and stores nothing. With `retry`, a turn already stored
        under `run_id` (an earlier attempt whose answer was lost) is returned as is.
        A new turn can also bring back, read in the same call before it is stored,
        the user's context (`context=True`) and the session's last `history_limit`
        messages: a first message then costs one call instead of three.
        """

        async def op(conn: AsyncConnection) -> TurnRecord:
            if retry:  # the same turn sent again after an unanswered attempt
                stored = (
                    await conn.execute(
                        select(messages.c.id, messages.c.role).where(messages.c.run_id == run_id)
                    )
                ).all()
                if stored:
                    ids = {row.role: row.id for row in stored}
                    return TurnRecord(run_id, ids["user"], ids.get("assistant", 0))
            if client_msg_id is not None:
                row = (
                    await conn.execute(
                        select(messages.c.id, messages.c.run_id).where(
                            messages.c.user_id == user_id,
                            messages.c.client_msg_id == client_msg_id,
                        )
                    )
                ).first()
                if row is not None:
                    reply = await conn.scalar(
                        select(messages.c.id).where(
                            messages.c.run_id == row.run_id, messages.c.role == "assistant"
                        )
                    )
                    return TurnRecord(row.run_id, row.id, reply or 0, duplicate=True)
            new_user, new_session = await self._ensure_user_session(conn, user_id, session_id)
            # A user or session created just now has nothing to read yet.
            loaded: UserContext | None = None
            if context:
                loaded = UserContext() if new_user else await self._read_context(conn, user_id)
            history: list[dict[str, str]] = []
            if not (new_user or new_session):
                history = await self._read_conversation(conn, user_id, session_id, history_limit)
            now = time.time()
            base = {"user_id": user_id, "session_id": session_id, "run_id": run_id}
            stamps = {"created_at": now, "updated_at": now}
            rows = [
                {
                    **base,
                    **stamps,
                    "role": "user",
                    "text": text_,
                    "status": "stored",
                    "client_msg_id": client_msg_id,
                },
                {
                    **base,
                    **stamps,
                    "role": "assistant",
                    "text": "",
                    "status": "streaming",
                    "client_msg_id": None,
                },
            ]
            # Both rows in one multi-row INSERT (SQLite >= 3.35 for RETURNING); its
            # rows may come back in any order, so each id is matched by its role.
            inserted = await conn.execute(
                messages.insert().values(rows).returning(messages.c.id, messages.c.role)
            )
            ids = {row.role: int(row.id) for row in inserted}
            user_message_id, reply_message_id = ids["user"], ids["assistant"]
            return TurnRecord(
                run_id,
                user_message_id,
                reply_message_id,
                context=loaded,
                history=history if history_limit > 0 else None,
            )

        record: TurnRecord = await self._write(op)
        return record

    async def begin_turns(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """`begin_turn` for each argument tuple, in one call; each one's record or error."""
        return await settle_each([self.begin_turn(*args) for args in calls])

    async def finish_replies(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """`finish_reply` for each argument tuple, in one call; each one's None or error."""
        return await settle_each([self.finish_reply(*args) for args in calls])

    async def finish_reply(
        self,
        reply_message_id: int,
        text_: str,
        status: str,
        final_seq: int | None = None,
        error_code: str | None = None,
    ) -> None:
        """Store a reply's final text, status (`completed`, `cancelled`, `failed`) and seq."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"not a final status: {status}")

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(messages)
                .where(messages.c.id == reply_message_id)
                .values(
                    text=text_,
                    status=status,
                    final_seq=final_seq,
                    error_code=error_code,
                    updated_at=time.time(),
                )
            )

        await self._write(op)

    async def fail_if_streaming(self, reply_message_id: int, error_code: str) -> dict[str, Any]:
        """Mark a reply `failed` unless it already has a final status; return the stored row."""

        async def op(conn: AsyncConnection) -> dict[str, Any]:
            await conn.execute(
                update(messages)
                .where(messages.c.id == reply_message_id, messages.c.status == "streaming")
                .values(status="failed", error_code=error_code, updated_at=time.time())
            )
            row = (
                await conn.execute(select(*REPLY_COLUMNS).where(messages.c.id == reply_message_id))
            ).one()
            return dict(row._mapping)

        result: dict[str, Any] = await self._write(op)
        return result

    async def add_todo(self, user_id: str, text_: str) -> dict[str, Any]:
        """Add an open todo; return it."""

        async def op(conn: AsyncConnection) -> dict[str, Any]:
            await self._ensure_user_session(conn, user_id, None)
            result = await conn.execute(
                todos.insert().values(
                    user_id=user_id, text=text_, done=False, created_at=time.time()
                )
            )
            return {"id": new_id(result), "text": text_, "done": False}

        todo: dict[str, Any] = await self._write(op)
        return todo

    async def complete_todo(self, user_id: str, todo_id: int) -> dict[str, Any] | None:
        """Mark one of the user's todos done; None if the user has no such todo."""

        async def op(conn: AsyncConnection) -> dict[str, Any] | None:
            owned = and_(todos.c.id == todo_id, todos.c.user_id == user_id)
            row = (await conn.execute(select(todos.c.id, todos.c.text).where(owned))).first()
            if row is None:
                return None
            await conn.execute(update(todos).where(owned).values(done=True))
            return {"id": row.id, "text": row.text, "done": True}

        result: dict[str, Any] | None = await self._write(op)
        return result

    async def set_preference(self, user_id: str, key: str, value: str) -> dict[str, str]:
        """Create or replace one preference."""

        async def op(conn: AsyncConnection) -> dict[str, str]:
            await self._ensure_user_session(conn, user_id, None)
            owned = and_(preferences.c.user_id == user_id, preferences.c.key == key)
            now = time.time()
            changed = await conn.execute(
                update(preferences).where(owned).values(value=value, updated_at=now)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    preferences.insert().values(
                        user_id=user_id, key=key, value=value, updated_at=now
                    )
                )
            return {"key": key, "value": value}

        result: dict[str, str] = await self._write(op)
        return result

    def stats(self) -> dict[str, Any]:
        """Queue depth, rows written, batches committed and commit lag percentiles."""
        return {
            "writer": self.writer,
            "queue_depth": self._writer.queue_depth,
            "written": self._writer.written,
            "batches": self._writer.batches,
            "failed": self._writer.failed,
            "writer_restarts": self._writer.restarts,
            "reads": self.reads,
            "known_users": len(self._known_users),
            "known_sessions": len(self._known_sessions),
            "known_max": self._known_users.max_items,
            "lag_ms": percentiles(self._writer.lag_ms.samples()),
        }
