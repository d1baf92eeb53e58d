"""Presence: sockets counted per user and replica, the per-user limit, who hears a new run."""

from __future__ import annotations

from actors.shard.presence import REJOIN, Presence
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


# -- rejoin: a shard that lost count of a replica's sockets is told them again ---------------


def test_rejoin_replaces_what_was_counted_for_the_replica_only() -> None:
    presence = Presence()
    assert presence.needs_rejoin("r1")  # a replica the shard has not heard in full
    assert presence.connect("u", "r1", 16) and presence.connect("v", "r2", 16)
    presence.rejoin("r1", {"w": 2, "x": 1, "gone": 0})
    assert not presence.needs_rejoin("r1") and presence.needs_rejoin("r2")
    assert presence.users() == {"v", "w", "x"}  # r1's "u" was not in its list
    assert presence.listeners("w", "r3") == {"r1": 0, "r3": 0}
    assert presence.sockets() == 4
    presence.disconnect("w", "r1")
    assert presence.listeners("w", "r3") == {"r1": 0, "r3": 0}  # one of two left
    assert presence.stats()["rejoined"] == 1


def test_a_forgotten_replica_must_rejoin() -> None:
    clock = [0.0]
    presence = Presence(live_s=5.0, clock=lambda: clock[0])
    presence.rejoin("r1", {"u": 1})
    clock[0] = 5.0  # silent for the whole window (its event loop stalled)
    assert presence.prune() == 1 and presence.users() == set()
    presence.heard("r1")  # it reports again, or opens a socket
    assert presence.needs_rejoin("r1")


async def test_a_stalled_replica_reports_again_and_its_users_hear_new_runs_after_rejoin() -> None:
    rig = shard_rig(agent_check_s=1.0)
    shard = rig.shard
    report = {"replica_id": "r1", "seq": 1}
    assert await shard.ensure_ready(report) == REJOIN  # new: tell me your sockets
    await shard.rejoin("r1", {})
    assert await shard.ensure_ready(report) is True
    assert await shard.connect("u", "r1")
    rig.clock.advance(5.0)  # r1 is silent for five checks: its sockets are forgotten
    assert await shard.ensure_ready({"replica_id": "r2", "seq": 1}) == REJOIN
    assert shard.presence.users() == set()
    assert await shard.ensure_ready(report) == REJOIN  # r1 is back
    await shard.rejoin("r1", {"u": 1})
    assert await shard.ensure_ready(report) is True
    # A run "u" starts from another replica: its events go to r1 as well.
    await rig.chat("a", user="u", replica_id="r2")
    await rig.started("a")
    assert dict(rig.agents[0].started[0].subscribers) == {"r1": 0, "r2": 0}
    await shard.stop()


async def test_a_restarted_shard_asks_every_replica_for_its_sockets() -> None:
    rig = shard_rig()  # a shard just (re)started knows no replica's sockets
    assert await rig.shard.ensure_ready({"replica_id": "r1", "seq": 7}) == REJOIN
    assert await rig.shard.ensure_ready() is True  # not asked of callers that are no replica
