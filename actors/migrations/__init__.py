"""Alembic migrations of the raychat schema (applied by `actors.schema.upgrade_schema`)."""
