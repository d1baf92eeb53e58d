"""The stopping-replica probe outside a Serve replica."""

from __future__ import annotations

from actors.replica_drain import serve_replica_stopping


def test_outside_a_replica_it_cannot_tell() -> None:
    assert serve_replica_stopping() is None
