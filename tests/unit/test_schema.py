"""Alembic migrations on real SQLite and PostgreSQL databases: fresh, upgraded, concurrent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
)
from sqlalchemy.exc import IntegrityError

from actors.db_schema import metadata
from actors.persistence import Persistence
from actors.schema import current_revision, head_revision, upgrade_schema
from config import Settings
from tests.databases import Database, sync_url


def _schema_before_migrations() -> MetaData:
    """The tables as `metadata.create_all` made them before migrations existed (frozen copy)."""
    old = MetaData()
    Table("users", old, Column("id", String(128), primary_key=True),
          Column("created_at", Float, nullable=False))  # fmt: skip
    Table(
        "sessions",
        old,
        Column("user_id", String(128), ForeignKey("users.id"), primary_key=True),
        Column("session_id", String(128), primary_key=True),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "messages",
        old,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", String(128), ForeignKey("users.id"), nullable=False),
        Column("session_id", String(128), nullable=False),
        Column("run_id", String(64), nullable=False),
        Column("role", String(16), nullable=False),
        Column("text", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("client_msg_id", String(128), nullable=True),
        Column("final_seq", Integer, nullable=True),
        Column("error_code", String(32), nullable=True),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        UniqueConstraint("user_id", "client_msg_id", name="uq_messages_client_msg"),
        Index("ix_messages_session", "user_id", "session_id", "id"),
        Index("ix_messages_run", "run_id"),
    )
    Table(
        "todos",
        old,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", String(128), ForeignKey("users.id"), nullable=False, index=True),
        Column("text", Text, nullable=False),
        Column("done", Boolean, nullable=False, default=False),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "preferences",
        old,
        Column("user_id", String(128), ForeignKey("users.id"), primary_key=True),
        Column("key", String(128), primary_key=True),
        Column("value", Text, nullable=False),
        Column("updated_at", Float, nullable=False),
    )
    return old


def _differences(connection: Connection) -> list[Any]:
    """What differs between the migrated database and `actors.db_schema` (empty: nothing)."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [
        diff
        for diff in compare_metadata(context, metadata)
        if not (diff[0] == "remove_table" and diff[1].name == "alembic_version")
    ]


def _on(db: Database, work: Any) -> Any:
    engine = create_engine(sync_url(db.url))
    try:
        with engine.begin() as conn:
            return work(conn)
    finally:
        engine.dispose()


def test_a_fresh_database_is_migrated_to_exactly_the_code_schema(db: Database) -> None:
    assert _on(db, upgrade_schema) == head_revision()
    assert _on(db, current_revision) == head_revision()
    assert _on(db, _differences) == []


def test_migrating_twice_changes_nothing(db: Database) -> None:
    _on(db, upgrade_schema)
    _on(db, upgrade_schema)
    assert _on(db, _differences) == []


NOW = 1_700_000_000.0


def _old_rows(conn: Connection) -> None:
    _schema_before_migrations().create_all(conn)
    conn.exec_driver_sql(f"INSERT INTO users (id, created_at) VALUES ('alice', {NOW})")
    conn.exec_driver_sql(
        f"INSERT INTO sessions (user_id, session_id, created_at) VALUES ('alice', 's', {NOW})"
    )
    rows = [
        ("r1", "user", "hello", "stored"),
        ("r1", "assistant", "hi!", "completed"),
        ("r2", "user", "again", "stored"),
        ("r2", "user", "again", "stored"),  # a turn stored twice (ambiguous commit, re-run)
        ("r2", "assistant", "", "streaming"),
    ]
    for run_id, role, text, status in rows:
        conn.exec_driver_sql(
            "INSERT INTO messages (user_id, session_id, run_id, role, text, status, "
            f"created_at, updated_at) VALUES ('alice', 's', '{run_id}', '{role}', '{text}', "
            f"'{status}', {NOW}, {NOW})"
        )
    conn.exec_driver_sql(
        f"INSERT INTO todos (user_id, text, done, created_at) VALUES ('alice', 'milk', "
        f"{'false' if conn.dialect.name == 'postgresql' else 0}, {NOW})"
    )


async def test_a_database_from_before_migrations_is_upgraded_keeping_its_rows(
    db: Database,
) -> None:
    _on(db, _old_rows)
    persistence = Persistence(Settings(database_url=db.url))
    try:
        await persistence.start()
        history = await persistence.history("alice", "s", limit=10, before=None)
        context = await persistence.load_context("alice")
    finally:
        await persistence.close()
    assert _on(db, current_revision) == head_revision()
    assert _on(db, _differences) == []
    # The duplicate user row is gone (the oldest kept); the streaming reply is left to the
    # shards' recovery.
    assert [(m["run_id"], m["role"], m["text"], m["status"]) for m in history] == [
        ("r1", "user", "hello", "stored"),
        ("r1", "assistant", "hi!", "completed"),
        ("r2", "user", "again", "stored"),
        ("r2", "assistant", "", "streaming"),
    ]
    assert context.todos == [{"id": 1, "text": "milk"}]


def test_a_run_cannot_store_two_rows_of_one_role(db: Database) -> None:
    _on(db, upgrade_schema)

    def insert_twice(conn: Connection) -> None:
        conn.exec_driver_sql(f"INSERT INTO users (id, created_at) VALUES ('bob', {NOW})")
        for _ in range(2):
            conn.exec_driver_sql(
                "INSERT INTO messages (user_id, session_id, run_id, role, text, status, "
                f"created_at, updated_at) VALUES ('bob', 's', 'r', 'user', 'x', 'stored', "
                f"{NOW}, {NOW})"
            )

    with pytest.raises(IntegrityError):
        _on(db, insert_twice)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # SQLite has one writer
async def test_writers_starting_together_migrate_once(db: Database) -> None:
    settings = Settings(database_url=db.url, persistence_writers=4)
    writers = [Persistence(settings, writer=i) for i in range(4)]
    try:
        await asyncio.gather(*(writer.start() for writer in writers))
        await writers[2].begin_turn("carol", "s", "r", "hi", None)
    finally:
        await asyncio.gather(*(writer.close() for writer in writers))
    assert _on(db, current_revision) == head_revision()
    assert db.rows("SELECT COUNT(*) FROM messages") == [(2,)]


def test_indexes_cover_what_the_code_queries(db: Database) -> None:
    _on(db, upgrade_schema)
    if db.backend == "postgresql":
        sql = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ?"
    else:
        sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
    indexes = {name: (text or "").lower() for name, text in db.rows(sql, "messages")}
    # Per-session history reads, by-run lookups (unique), and recovery's streaming scan,
    # which is partial: only rows still streaming are in it.
    assert "(user_id, session_id, id)" in indexes["ix_messages_session"]
    assert "unique" in indexes["uq_messages_run_role"]
    assert "(run_id, role)" in indexes["uq_messages_run_role"]
    assert "where" in indexes["ix_messages_streaming"]
    assert "streaming" in indexes["ix_messages_streaming"]
    todo_indexes = {name for name, _ in db.rows(sql, "todos")}
    assert "ix_todos_user_id" in todo_indexes
