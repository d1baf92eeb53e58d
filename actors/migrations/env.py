"""Alembic's environment: migrate the connection `actors.schema` hands over.

Runs only through `actors.schema.upgrade_schema` (and `raychat db ...`), which
passes an open connection in `config.attributes["connection"]`; there is no
`alembic.ini` and no URL here.
"""

from __future__ import annotations

from alembic import context

from actors.db_schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite changes most tables by copying them; batch mode does that for us.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
