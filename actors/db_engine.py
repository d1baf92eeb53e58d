"""The database engine: SQLite (WAL, its folder created) or PostgreSQL, and an upsert helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


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


def new_id(result: Any) -> int:
    """The primary key an INSERT just created."""
    return int(result.inserted_primary_key[0])


async def insert_if_missing(conn: AsyncConnection, table: Table, row: dict[str, Any]) -> bool:
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
