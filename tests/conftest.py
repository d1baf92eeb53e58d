"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import BACKENDS, Database, new_database


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database of each backend (SQLite file, PostgreSQL database)."""
    database = new_database(request.param, tmp_path)
    try:
        yield database
    finally:
        database.drop()
