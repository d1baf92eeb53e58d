"""The persistence actor: the service's single writer (no Agents SDK in this process)."""

from __future__ import annotations

from actors.persistence import Persistence


class PersistenceActor(Persistence):
    """The persistence logic as the service's single writer actor."""
