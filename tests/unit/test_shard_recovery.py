"""A (re)started shard rebuilds its runs from the rows still `streaming` in the store."""

from __future__ import annotations

import pytest

from actors.errors import Busy
from actors.events import RUN_ACCEPTED, RUN_FAILED
from actors.sharding import shard_for
from tests.unit.fakes import shard_rig


async def test_a_run_an_agent_holds_is_kept_and_a_run_nobody_holds_is_failed() -> None:
    rig = shard_rig(agents=2)
    held = rig.store.add_streaming("u", "s1", "held")
    lost = rig.store.add_streaming("v", "s2", "lost")
    rig.agents[1].held.add("held")
    assert await rig.shard.ensure_ready() is True
    assert rig.store.rows[held]["status"] == "streaming"
    assert rig.store.failed == [(lost, "internal")]
    assert rig.store.rows[lost]["status"] == "failed"
    kept = rig.shard.runs["held"]
    assert (kept.status, kept.agent_index, kept.on_agent) == ("running", 1, True)
    assert "lost" not in rig.shard.runs
    (run_id, user_id, events), *more = rig.agents[1].announced  # agent after the hint (0)
    assert (run_id, user_id, more) == ("lost", "v", [])
    assert [e["type"] for e in events] == [RUN_ACCEPTED, RUN_FAILED]
    assert events[1]["error"]["code"] == "internal"
    assert rig.shard.counts["lost"] == 1
    await rig.shard.stop()


async def test_a_kept_run_holds_its_session_until_it_ends() -> None:
    rig = shard_rig()
    rig.store.add_streaming("u", "s", "held")
    rig.agents[0].held.add("held")
    with pytest.raises(Busy):
        await rig.chat("next", on_busy="reject")  # the first call recovers
    await rig.end("held")
    assert await rig.chat("next", on_busy="reject") == []
    await rig.shard.stop()


async def test_recovery_runs_once_and_leaves_other_shards_rows_alone() -> None:
    rig = shard_rig(shards=2)
    mine = next(u for u in (f"user{i}" for i in range(100)) if shard_for(u, 2) == 0)
    theirs = next(u for u in (f"user{i}" for i in range(100)) if shard_for(u, 2) == 1)
    ours = rig.store.add_streaming(mine, "s", "a")
    rig.store.add_streaming(theirs, "s", "b")
    await rig.shard.ensure_ready()
    assert rig.store.failed == [(ours, "internal")]
    rig.store.add_streaming(mine, "s", "c")  # after the recovery: not this shard's to fail
    await rig.shard.ensure_ready()
    assert rig.store.failed == [(ours, "internal")]
    await rig.shard.stop()


async def test_a_run_already_finished_in_the_store_is_not_failed_again() -> None:
    rig = shard_rig()
    reply = rig.store.add_streaming("u", "s", "a")
    rows = await rig.store.streaming_replies()
    await rig.store.finish_reply(reply, "all of it", "completed", 5)
    rig.store.streaming_replies = lambda: _answer(rows)  # type: ignore[method-assign]
    await rig.shard.ensure_ready()
    assert rig.store.rows[reply]["status"] == "completed"  # fail_if_streaming kept it
    (_, _, events), *_ = rig.agents[0].announced
    assert events[-1]["type"] == "run.completed" and events[-1]["text"] == "all of it"
    await rig.shard.stop()


async def _answer(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return rows
