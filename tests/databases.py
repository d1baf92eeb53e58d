"""Real databases for tests: a SQLite file, or a fresh database on the test PostgreSQL server.

`.ci/run` starts a PostgreSQL server and exports `RAYCHAT_TEST_POSTGRES_URL`
(`postgresql+asyncpg://postgres@127.0.0.1:PORT/postgres`). Without it the
PostgreSQL variants are skipped, except under CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

POSTGRES_ENV = "RAYCHAT_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


def postgres_admin_url() -> str:
    """The test server's URL; skips the test (fails it under CI) when there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        message = f"{POSTGRES_ENV} is not set (.ci/start-postgres starts a server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (for reading it behind the code's back)."""
    parsed = make_url(url)
    driver = "sqlite" if parsed.drivername.startswith("sqlite") else "postgresql+psycopg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _admin_execute(admin_url: str, sql: str) -> None:
    engine = create_engine(sync_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


@dataclass
class Database:
    """One empty database of a backend, read directly with `rows`."""

    backend: str
    url: str

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run `sql` (`?` placeholders) on the database directly; its rows."""
        if self.backend == "postgresql":
            sql = sql.replace("?", "%s")
        engine = create_engine(sync_url(self.url))
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.exec_driver_sql(sql, tuple(args)).all()]
        finally:
            engine.dispose()

    def drop(self) -> None:
        """Remove the database (PostgreSQL; a SQLite file goes with its folder)."""
        if self.backend == "postgresql":
            name = make_url(self.url).database
            admin = make_url(self.url).set(database="postgres").render_as_string(False)
            _admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_database(backend: str, folder: Path) -> Database:
    """A new empty database: a file in `folder`, or a new database on the test server."""
    if backend == "sqlite":
        return Database(backend, f"sqlite+aiosqlite:///{folder / 'raychat.db'}")
    admin = postgres_admin_url()
    name = "raychat_test_" + uuid.uuid4().hex[:12]
    _admin_execute(admin, f'CREATE DATABASE "{name}"')
    return Database(backend, make_url(admin).set(database=name).render_as_string(False))
