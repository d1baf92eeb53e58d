"""Bring a database to the newest schema with the Alembic migrations in `actors/migrations`.

`upgrade_schema` runs on an open connection inside the caller's transaction:
the persistence actors call it when they start, so a fresh database is created
and an older one upgraded without a separate step. A database made before
migrations existed (tables, no `alembic_version`) is first stamped with the
first revision, whose tables it already has. On PostgreSQL a transaction-scoped
advisory lock lets several writers start at once and only one migrate.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
# pg_advisory_xact_lock key: "raychat schema" (any fixed 64-bit number).
_PG_LOCK_KEY = 7_261_001_812


def alembic_config(connection: Connection) -> Config:
    """An Alembic configuration that migrates `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision in `actors/migrations`."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    revision: str | None = MigrationContext.configure(connection).get_current_revision()
    return revision


def upgrade_schema(connection: Connection) -> str:
    """Migrate the database to the newest revision; return it."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    config = alembic_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "messages" in tables:
        command.stamp(config, BASELINE)  # made by create_all before migrations existed
    command.upgrade(config, "head")
    return head_revision()
