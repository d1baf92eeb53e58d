"""What a shard keeps is bounded: presence by replica liveness, lanes, cached histories."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.errors import Unavailable
from actors.records import TurnRecord
from actors.shard.sessions import SessionCache, history_bytes
from tests.unit.fakes import ShardRig, shard_rig

LIVE_S = 5.0  # the liveness window at agent_check_s=1: five missed reports


@pytest.fixture
async def rig() -> AsyncIterator[ShardRig]:
    rig = shard_rig(agent_check_s=1.0)
    yield rig
    await rig.shard.stop()


def report(replica_id: str) -> dict[str, Any]:
    return {"replica_id": replica_id, "seq": 1}


# -- presence -------------------------------------------------------------------------------


async def test_a_silent_replicas_sockets_are_dropped_after_the_window_not_before(
    rig: ShardRig,
) -> None:
    shard = rig.shard
    for _ in range(3):
        assert await shard.connect("dead-user", "dead")
    assert await shard.connect("live-user", "live")
    assert await shard.connect("both", "dead") and await shard.connect("both", "live")
    for _ in range(int(LIVE_S) - 1):  # only "live" goes on reporting, every check
        rig.clock.advance(1.0)
        assert await shard.ensure_ready(report("live"))
    assert shard.stats()["connections"]["active"] == 6  # within the window: kept
    rig.clock.advance(1.0)
    assert await shard.ensure_ready(report("live"))
    stats = shard.stats()
    assert stats["connections"]["active"] == 2  # "live"'s two sockets
    assert shard.presence.users() == {"live-user", "both"}
    assert shard.presence.listeners("both", "live") == {"live": 0}
    assert stats["presence"] == {
        "users": 2,
        "replicas": 1,
        "replicas_with_sockets": 1,
        "dropped_sockets": 4,
        "rejoined": 0,
    }


async def test_a_users_sockets_on_a_dead_replica_stop_counting_against_the_limit() -> None:
    rig = shard_rig(max_sockets_per_user=2)
    shard = rig.shard
    assert await shard.connect("u", "dead") and await shard.connect("u", "dead")
    assert not await shard.connect("u", "new")  # at the limit
    rig.clock.advance(LIVE_S)
    assert await shard.connect("u", "new")  # the dead replica's sockets are forgotten
    assert shard.stats()["connections"]["active"] == 1


async def test_a_replica_that_reports_keeps_its_sockets_however_long(rig: ShardRig) -> None:
    shard = rig.shard
    assert await shard.connect("u", "r")
    for _ in range(20):
        rig.clock.advance(1.0)
        await shard.ensure_ready(report("r"))
    assert shard.stats()["connections"]["active"] == 1


async def test_a_late_close_from_a_forgotten_replica_is_harmless(rig: ShardRig) -> None:
    shard = rig.shard
    assert await shard.connect("u", "dead")
    rig.clock.advance(LIVE_S)
    await shard.ensure_ready(report("live"))
    await shard.disconnect("u", "dead")
    assert shard.stats()["connections"]["active"] == 0
    assert shard.presence.users() == set()


# -- lanes ----------------------------------------------------------------------------------


async def test_a_duplicate_first_chat_leaves_no_lane(rig: ShardRig) -> None:
    rig.store.add_streaming("u", "s", "a")  # stored before, by a shard that was lost
    events = await rig.chat("a")
    assert events[0]["duplicate"] is True
    assert len(rig.shard.lanes) == 0 and rig.shard.stats()["lanes"] == 0
    assert "a" not in rig.shard.runs


async def test_a_failed_first_chat_leaves_no_lane(rig: ShardRig) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> TurnRecord:
        raise Unavailable("the database is away")

    rig.store.begin_turn = refuse  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await rig.chat("a")
    assert len(rig.shard.lanes) == 0 and "a" not in rig.shard.runs


async def test_a_lane_goes_once_its_runs_end(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.started("a")
    await rig.chat("b")
    assert rig.shard.stats()["lanes"] == 1
    await rig.end("a")
    await rig.started("b")
    await rig.end("b")
    assert rig.shard.stats()["lanes"] == 0


# -- ended runs -----------------------------------------------------------------------------


async def test_an_ended_run_keeps_only_what_answers_for_it(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.started("a")
    run = rig.shard.runs["a"]
    assert run.spec is not None and run.prelude and run.subscribers
    await rig.end("a")
    assert run.status == "completed" and run.ended_at is not None
    assert (run.spec, run.context, run.history, run.prelude, run.subscribers, run.task) == (
        None,
        None,
        None,
        [],
        {},
        None,
    )


async def test_a_run_ending_while_its_start_is_awaited_lets_go_of_the_task_after(
    rig: ShardRig,
) -> None:
    on_agent, release = asyncio.Event(), asyncio.Event()
    agent = rig.agents[0]
    start_run = agent.start_run

    async def slow_start(spec: Any) -> None:
        await start_run(spec)
        on_agent.set()
        await release.wait()  # the agent started it, its answer is still on the way

    agent.start_run = slow_start  # type: ignore[method-assign]
    await rig.chat("a")
    run = rig.shard.runs["a"]
    task = run.task
    await on_agent.wait()
    await rig.end("a")  # the agent reports its end before `start_run` answered
    assert task is not None and not task.done() and run.task is task  # owned while running
    release.set()
    await task
    assert run.task is None


async def test_ended_runs_past_the_bound_are_forgotten_oldest_first() -> None:
    rig = shard_rig(ended_runs_max=2, run_grace_s=300)
    for name in ("a", "b", "c"):  # one session each: all run at once
        await rig.chat(name, session=name)
        await rig.started(name)
    for name in ("b", "a", "c"):  # ended in this order, well within the grace period
        await rig.end(name)
    assert set(rig.shard.runs) == {"a", "c"}  # "b" ended first
    assert rig.shard.stats()["ended_runs_evicted"] == 1
    # A forgotten run is answered from the store.
    row = rig.store.row_of("b")
    assert row is not None
    row.update(status="completed", text="done", final_seq=4)
    resumed = await rig.shard.resume("u", "b", 2, "r1")
    assert [(e["type"], e["seq"]) for e in resumed] == [("run.completed", 4)]
    await rig.shard.stop()


async def test_ended_runs_go_after_their_grace_oldest_first_and_running_ones_stay() -> None:
    rig = shard_rig(run_grace_s=30)
    for name in ("a", "b", "c"):
        await rig.chat(name, session=name)
        await rig.started(name)
    await rig.end("a")
    rig.clock.advance(10)
    await rig.end("b")
    rig.clock.advance(20)  # "a" ended 30 s ago, "b" 20 s ago, "c" is running
    assert rig.shard.housekeeping.drop_finished_runs(rig.clock()) == 1
    assert set(rig.shard.runs) == {"b", "c"}
    rig.clock.advance(10)
    assert rig.shard.housekeeping.cleanup()["runs"] == 1
    assert set(rig.shard.runs) == {"c"}
    assert rig.shard.stats()["ended_runs_evicted"] == 0  # gone by their grace, not the bound
    await rig.shard.stop()


# -- the session cache ---------------------------------------------------------------------


def history(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_history_bytes_counts_utf8_text() -> None:
    assert history_bytes(history("é" * 10)) == len("role") + len("user") + len("content") + 20


def test_the_session_cache_is_bounded_in_bytes_dropping_least_recently_used() -> None:
    one = history_bytes(history("x" * 1000))
    cache = SessionCache(max_size=100, history_messages=20, max_bytes=3 * one)
    for name in ("a", "b", "c"):
        cache.put("u", name, history("x" * 1000))
    assert cache.get("u", "a") is not None  # "a" is now the most recently used
    cache.put("u", "d", history("x" * 1000))  # past the bound: "b" goes
    assert cache.get("u", "b") is None
    assert all(cache.get("u", s) is not None for s in ("a", "c", "d"))
    stats = cache.stats()
    assert stats["size"] == 3 and stats["bytes"] == 3 * one and stats["evicted"] == 1


def test_a_growing_history_counts_and_evicts_others() -> None:
    small = history_bytes(history("x"))
    turn = [{"role": "user", "content": "y" * 1000}, {"role": "assistant", "content": "z" * 1000}]
    grown = history_bytes(history("x") + turn + turn)
    cache = SessionCache(max_size=100, history_messages=20, max_bytes=grown + small - 1)
    cache.put("u", "old", history("x"))
    cache.put("u", "s", history("x"))
    cache.remember_turn("u", "s", "y" * 1000, "z" * 1000)
    assert cache.bytes == small + history_bytes(history("x") + turn)
    assert len(cache) == 2  # (a lookup would make "old" the most recently used)
    cache.remember_turn("u", "s", "y" * 1000, "z" * 1000)  # now past the bound
    assert cache.bytes == grown and len(cache) == 1
    assert cache.get("u", "old") is None and cache.get("u", "s") is not None


def test_a_history_trimmed_to_its_message_limit_shrinks_in_bytes() -> None:
    cache = SessionCache(max_size=10, history_messages=2, max_bytes=1 << 20)
    cache.put("u", "s", history("x" * 500))
    cache.remember_turn("u", "s", "a", "b")  # the 500-byte message is trimmed away
    assert cache.bytes == history_bytes(cache.get("u", "s") or []) < 500


def test_the_session_cache_is_still_bounded_by_count() -> None:
    cache = SessionCache(max_size=2, history_messages=20, max_bytes=1 << 20)
    for name in ("a", "b", "c"):
        cache.put("u", name, history("x"))
    assert len(cache) == 2 and cache.get("u", "a") is None


async def test_shard_stats_show_session_cache_sizes(rig: ShardRig) -> None:
    await rig.chat("a")
    await rig.started("a")
    stats = rig.shard.stats()["session_cache"]
    assert stats["size"] == 1 and stats["bytes"] == 0  # an empty history, cached
    assert stats["max_bytes"] == 64 * 1024 * 1024
    await rig.end("a")
    assert rig.shard.stats()["session_cache"]["bytes"] > 0
