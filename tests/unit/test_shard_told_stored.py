"""Told equals stored, shard side: a run the shard fails is announced only once the store
holds its failure; the store call is retried, and a run it could not store is left
(untold) for the next pass."""

from __future__ import annotations

import asyncio

import pytest

from actors.errors import Unavailable
from actors.events import RUN_FAILED
from tests.unit.fakes import flaky_rig

CHECK_S = 1.0
GIVE_UP_AFTER = 9  # `fail_if_streaming` attempts within the shard's retry window (10 s)


async def test_a_lost_run_is_announced_only_once_its_failure_is_stored() -> None:
    rig, store = flaky_rig(agent_check_s=CHECK_S)
    assert await rig.chat("a") == []
    await rig.started("a")
    await rig.clock.sleeping()
    reply = store.row_of("a")["id"]  # type: ignore[index]
    rig.agents[0].restart()  # the run is lost with its agent
    store.fails["fail_if_streaming"] = GIVE_UP_AFTER  # ... and the store is down meanwhile
    rig.clock.advance(CHECK_S)  # first check: a suspect
    await rig.clock.sleeping()
    rig.clock.advance(CHECK_S)  # second check: lost; storing it fails, retried
    await rig.drive(lambda: store.attempts("fail_if_streaming") >= GIVE_UP_AFTER)
    # Given up for now: nothing told, the run still holds its session.
    assert rig.agents[0].announced == []
    assert store.rows[reply]["status"] == "streaming"
    assert rig.shard.runs["a"].ended_at is None
    assert rig.shard.counts["unsettled"] == 1 and rig.shard.counts["lost"] == 0
    await rig.drive(lambda: bool(rig.agents[0].announced), step_s=CHECK_S)  # later passes
    assert store.rows[reply]["status"] == "failed"
    (run_id, _, events), *more = rig.agents[0].announced
    assert (run_id, more, events[-1]["type"]) == ("a", [], RUN_FAILED)
    assert rig.shard.runs["a"].status == "failed" and rig.shard.counts["lost"] == 1
    await rig.shard.stop()


async def test_a_brief_store_failure_is_retried_before_anything_is_told() -> None:
    rig, store = flaky_rig()
    lost = store.add_streaming("v", "s", "lost")
    store.fails["fail_if_streaming"] = 2
    ready = asyncio.ensure_future(rig.shard.ensure_ready())
    await rig.drive(ready.done, task=ready)
    assert ready.result() is True
    assert store.attempts("fail_if_streaming") == 3
    assert store.rows[lost]["status"] == "failed" and len(rig.agents[0].announced) == 1
    await rig.shard.stop()


async def test_a_recovered_run_whose_failure_cannot_be_stored_is_not_told() -> None:
    rig, store = flaky_rig()
    lost = store.add_streaming("v", "s", "lost")
    store.fails["fail_if_streaming"] = GIVE_UP_AFTER
    ready = asyncio.ensure_future(rig.shard.ensure_ready())
    await rig.drive(ready.done, task=ready)
    with pytest.raises(Unavailable):
        ready.result()
    assert rig.agents[0].announced == [] and store.rows[lost]["status"] == "streaming"
    assert await rig.shard.ensure_ready() is True  # the next recovery stores and tells it
    assert store.rows[lost]["status"] == "failed" and len(rig.agents[0].announced) == 1
    await rig.shard.stop()


async def test_a_drained_run_whose_failure_cannot_be_stored_is_not_ended_or_told() -> None:
    rig, store = flaky_rig()
    assert await rig.chat("a") == []
    await rig.started("a")
    await rig.chat("b")  # queued behind it
    store.fails["fail_if_streaming"] = GIVE_UP_AFTER
    drained = asyncio.ensure_future(rig.shard.drain())
    await rig.drive(drained.done, task=drained)
    assert drained.result() == 0
    assert rig.agents[0].announced == [] and rig.shard.runs["b"].ended_at is None
    assert store.row_of("b")["status"] == "streaming"  # type: ignore[index]
    await rig.shard.stop()
