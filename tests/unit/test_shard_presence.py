"""Presence: sockets counted per user and replica, the per-user limit, who hears a new run."""

from __future__ import annotations

from actors.shard.presence import Presence
from tests.unit.fakes import shard_rig


async def test_sockets_are_counted_per_user_over_replicas() -> None:
    rig = shard_rig()
    shard = rig.shard
    assert await shard.connect("u", "r1") and await shard.connect("u", "r1")
    assert await shard.connect("u", "r2") and await shard.connect("v", "r1")
    stats = shard.stats()
    assert stats["connected_users"] == 2
    assert stats["connections"] == {"active": 4, "opened": 4, "closed": 0}
    await shard.disconnect("u", "r1")
    await shard.disconnect("u", "r1")
    await shard.disconnect("u", "r2")
    stats = shard.stats()
    assert stats["connected_users"] == 1
    assert stats["connections"] == {"active": 1, "opened": 4, "closed": 3}


async def test_the_per_user_socket_limit_refuses_and_frees_on_disconnect() -> None:
    shard = shard_rig(max_sockets_per_user=2).shard
    assert await shard.connect("u", "r1") and await shard.connect("u", "r2")
    assert not await shard.connect("u", "r3")
    assert await shard.connect("v", "r3")  # another user has sockets of their own
    assert shard.counts["sockets_refused"] == 1
    assert shard.stats()["connections"]["active"] == 3  # the refused one is not counted
    await shard.disconnect("u", "r1")
    assert await shard.connect("u", "r3")


async def test_the_calling_replicas_limit_wins_over_the_shards() -> None:
    shard = shard_rig(max_sockets_per_user=16).shard
    assert await shard.connect("u", "r1", limit=1)
    assert not await shard.connect("u", "r1", limit=1)
    assert await shard.connect("u", "r1")


async def test_a_new_run_is_sent_to_every_replica_with_a_socket_of_its_user() -> None:
    rig = shard_rig()
    await rig.shard.connect("u", "r2")
    await rig.shard.connect("v", "r3")
    await rig.chat("a", replica_id="r1")
    await rig.started("a")
    (spec,) = rig.agents[0].started
    assert dict(spec.subscribers) == {"r1": 0, "r2": 0}
    await rig.shard.stop()


def test_listeners_always_include_the_origin() -> None:
    presence = Presence()
    assert presence.listeners("u", "r1") == {"r1": 0}
    presence.connect("u", "r2", limit=1)
    presence.disconnect("u", "r2")
    assert presence.listeners("u", "r1") == {"r1": 0} and presence.users() == set()
