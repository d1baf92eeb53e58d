"""One user row and one reply row per run, and an index of the replies still streaming.

`UNIQUE (run_id, role)` makes a turn stored twice (a write batch re-run after
an ambiguous commit failure) impossible; it also serves the by-run lookups the
old `ix_messages_run` did. Duplicates already stored are removed first (the
oldest row of each run and role is kept). `ix_messages_streaming` is partial:
it holds only rows whose status is `streaming`, which recovery scans read.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STREAMING = sa.text("status = 'streaming'")


def upgrade() -> None:
    op.execute(
        "DELETE FROM messages WHERE id NOT IN "
        "(SELECT keep FROM (SELECT MIN(id) AS keep FROM messages GROUP BY run_id, role) AS kept)"
    )
    op.create_index("uq_messages_run_role", "messages", ["run_id", "role"], unique=True)
    op.drop_index("ix_messages_run", table_name="messages")
    op.create_index(
        "ix_messages_streaming",
        "messages",
        ["run_id"],
        sqlite_where=STREAMING,
        postgresql_where=STREAMING,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_streaming", table_name="messages")
    op.create_index("ix_messages_run", "messages", ["run_id"])
    op.drop_index("uq_messages_run_role", table_name="messages")
