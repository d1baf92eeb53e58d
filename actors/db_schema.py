"""The database tables (SQLAlchemy Core): users, sessions, messages, todos, preferences.

This is the schema at the newest migration (`actors/migrations`); a change
here needs a new revision there (`tests/unit/test_schema.py` compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("created_at", Float, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("user_id", String(128), ForeignKey("users.id"), primary_key=True),
    Column("session_id", String(128), primary_key=True),
    Column("created_at", Float, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(128), ForeignKey("users.id"), nullable=False),
    Column("session_id", String(128), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("role", String(16), nullable=False),  # "user" | "assistant"
    Column("text", Text, nullable=False),
    # user: "stored"; assistant: "streaming" | "completed" | "cancelled" | "failed"
    Column("status", String(16), nullable=False),
    Column("client_msg_id", String(128), nullable=True),
    Column("final_seq", Integer, nullable=True),  # seq of the run's final event (assistant)
    Column("error_code", String(32), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("user_id", "client_msg_id", name="uq_messages_client_msg"),
    Index("ix_messages_session", "user_id", "session_id", "id"),
    # One user row and one reply row per run: a turn cannot be stored twice.
    Index("uq_messages_run_role", "run_id", "role", unique=True),
    # Only the replies still streaming (what recovery scans read).
    Index(
        "ix_messages_streaming",
        "run_id",
        sqlite_where=text("status = 'streaming'"),
        postgresql_where=text("status = 'streaming'"),
    ),
)

todos = Table(
    "todos",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(128), ForeignKey("users.id"), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("done", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
)

preferences = Table(
    "preferences",
    metadata,
    Column("user_id", String(128), ForeignKey("users.id"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)
