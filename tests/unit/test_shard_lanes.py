"""A shard's lanes: one run active per session, the rest queued, rejected or put first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.errors import Busy
from actors.events import RUN_ACCEPTED, RUN_QUEUED
from actors.shard.lanes import Lanes
from actors.shard.model import Run
from actors.shard.sessions import SessionCache
from tests.unit.fakes import ShardRig, shard_rig


@pytest.fixture
async def rig() -> AsyncIterator[ShardRig]:
    rig = shard_rig()
    yield rig
    await rig.shard.stop()


async def test_runs_of_a_session_start_one_after_another_in_order(rig: ShardRig) -> None:
    assert await rig.chat("a") == []  # starts at once: its events come from its agent
    await rig.started("a")
    queued_b = await rig.chat("b")
    queued_c = await rig.chat("c")
    assert [e["type"] for e in queued_b] == [RUN_ACCEPTED, RUN_QUEUED]
    assert queued_b[1]["position"] == 1 and queued_c[1]["position"] == 2
    agent = rig.agents[0]
    assert agent.started_ids() == ["a"]
    await rig.end("a")
    await rig.started("b")
    assert agent.started_ids() == ["a", "b"]
    await rig.end("b")
    await rig.started("c")
    assert agent.started_ids() == ["a", "b", "c"]
    assert rig.shard.counts["queued"] == 2


async def test_other_sessions_do_not_wait(rig: ShardRig) -> None:
    await rig.chat("a", session="s1")
    assert await rig.chat("b", session="s2") == []
    await rig.started("b")
    assert rig.agents[0].started_ids() == ["a", "b"]


async def test_a_busy_session_rejects_when_asked_to_and_keeps_its_run(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.started("a")
    with pytest.raises(Busy):
        await rig.chat("b", on_busy="reject")
    assert rig.shard.counts["rejected"] == 1
    assert "b" not in rig.shard.runs and rig.store.row_of("b") is None  # nothing stored
    await rig.end("a")
    assert await rig.chat("c", on_busy="reject") == []


async def test_a_full_queue_rejects() -> None:
    rig = shard_rig(max_queued_per_session=1)
    await rig.chat("a")
    await rig.chat("b")
    with pytest.raises(Busy, match="too many queued"):
        await rig.chat("c")
    await rig.shard.stop()


async def test_interrupt_cancels_the_active_run_and_goes_before_the_queue(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.started("a")
    await rig.chat("b")
    events = await rig.chat("c", on_busy="interrupt")
    assert [e["type"] for e in events] == [RUN_ACCEPTED]  # not queued: it is next
    agent = rig.agents[0]
    assert agent.cancelled == ["a"]
    assert rig.shard.counts["interrupted"] == 1
    await rig.end("a", "cancelled")
    await rig.started("c")
    assert agent.started_ids() == ["a", "c"]
    await rig.end("c")
    await rig.started("b")
    assert agent.started_ids() == ["a", "c", "b"]


async def test_a_queued_run_cancelled_leaves_the_queue_and_starts_cancelled(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.started("a")
    await rig.chat("b")
    await rig.chat("c")
    assert await rig.shard.cancel("u", "b") == []
    await rig.started("b")
    started = rig.agents[0].started
    assert [(s.run_id, s.cancelled) for s in started] == [("a", False), ("b", True)]
    await rig.end("a")
    await rig.started("c")
    assert rig.agents[0].started_ids() == ["a", "b", "c"]


async def test_a_lane_is_gone_once_its_last_run_ended(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.chat("b")
    await rig.started("a")
    assert rig.shard.lanes.get(("u", "s")) is not None
    await rig.end("a")
    await rig.started("b")
    assert len(rig.shard.lanes) == 1
    await rig.end("b")
    assert rig.shard.lanes.get(("u", "s")) is None and len(rig.shard.lanes) == 0
    assert rig.shard.stats()["queued"] == 0


async def test_an_end_reported_twice_counts_once(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.chat("b")
    await rig.started("a")
    await rig.end("a")
    await rig.end("a")  # again (the replica and the agent both report it)
    await rig.started("b")
    assert rig.shard.runs["b"].status == "running"
    assert rig.shard.lanes.get(("u", "s")) is not None  # b still holds it


async def test_a_duplicate_chat_gives_back_its_place(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.started("a")
    await rig.end("a")
    events = await rig.chat("a")  # the same run id again: stored already
    assert events[0]["duplicate"] is True and rig.shard.counts["duplicates"] == 1
    assert rig.shard.lanes.active_run(("u", "s")) is None and rig.shard.lanes.queued() == 0
    assert await rig.chat("b", on_busy="reject") == []  # the session is free


def test_lanes_skip_runs_forgotten_while_queued() -> None:
    runs: dict[str, Run] = {}
    launched: list[str] = []
    lanes = Lanes(runs, launch=lambda run: launched.append(run.run_id))
    for run_id in ("a", "b", "c"):
        runs[run_id] = Run(run_id, "u", "s", 0)
        lane, busy = lanes.admit(("u", "s"), "enqueue", 10)
        lanes.reserve(lane, run_id, "enqueue", busy)
        runs[run_id].spec = object()  # type: ignore[assignment]  # stored: launchable
    del runs["b"]  # forgotten (e.g. its turn was a duplicate)
    lanes.release(runs["a"])
    assert launched == ["c"] and lanes.queued() == 0


def test_the_session_cache_keeps_the_latest_turns_and_counts_hits() -> None:
    sessions = SessionCache(max_size=1, history_messages=3)
    assert sessions.get("u", "s") is None
    sessions.put("u", "s", [])
    sessions.remember_turn("u", "s", "q1", "a1")
    sessions.remember_turn("u", "s", "q2", "a2")
    assert sessions.get("u", "s") == [
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    sessions.put("u", "other", [])  # over max_size: the least recently used goes
    assert sessions.get("u", "s") is None
    assert (sessions.hits, sessions.misses) == (1, 2)
