"""The persistence actor's logic: the only writer to the database, plus its reads.

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
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, event, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from actors.call_batcher import settle_each
from actors.db_schema import messages, preferences, sessions, todos, users
from actors.group_commit import GroupCommitter
from actors.records import TurnRecord, UserContext
from actors.schema import upgrade_schema
from actors.stats import percentiles
from config import Settings

logger = logging.getLogger(__name__)

FINAL_STATUSES = ("completed", "cancelled", "failed")
# What a reply row says about its run's end (see UserShard._final_from_row).
REPLY_COLUMNS = (
    messages.c.id,
    messages.c.text,
    messages.c.status,
    messages.c.session_id,
    messages.c.final_seq,
    messages.c.error_code,
)


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _new_id(result: Any) -> int:
    """The primary key an INSERT just created."""
    return int(result.inserted_primary_key[0])


async def _insert_if_missing(conn: AsyncConnection, table: Table, row: dict[str, Any]) -> bool:
    """INSERT `row` unless its primary key exists (SQLite and PostgreSQL); True if inserted."""
    dialect_insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    result = await conn.execute(dialect_insert(table).values(**row).on_conflict_do_nothing())
    return bool(result.rowcount == 1)


def make_engine(url: str) -> AsyncEngine:
    """An async engine for `url`; SQLite gets its folder created and WAL switched on."""
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=8, max_overflow=8)
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class Persistence:
    """Stores users, sessions, messages, todos and preferences.

    One instance per writer: writer `writer` of `persistence_writers` is sent
    the calls of the users `writer_for` gives it (and any row updates), so with
    several writers (PostgreSQL) each commits its own share of the load.
    """

    def __init__(self, settings: Settings, writer: int = 0) -> None:
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
        self._known_users: set[str] = set()
        self._known_sessions: set[tuple[str, str]] = set()
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
        if user_id not in self._known_users:
            new_user = await _insert_if_missing(conn, users, {"id": user_id, "created_at": now})
            self._known_users.add(user_id)
        if session_id is not None and (user_id, session_id) not in self._known_sessions:
            row = {"user_id": user_id, "session_id": session_id, "created_at": now}
            new_session = await _insert_if_missing(conn, sessions, row)
            self._known_sessions.add((user_id, session_id))
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
            return {"id": _new_id(result), "text": text_, "done": False}

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

    # -- reads ------------------------------------------------------------
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

    def stats(self) -> dict[str, Any]:
        """Queue depth, rows written, batches committed and commit lag percentiles."""
        return {
            "writer": self.writer,
            "queue_depth": self._writer.queue_depth,
            "written": self._writer.written,
            "batches": self._writer.batches,
            "failed": self._writer.failed,
            "reads": self.reads,
            "lag_ms": percentiles(self._writer.lag_ms.samples()),
        }
