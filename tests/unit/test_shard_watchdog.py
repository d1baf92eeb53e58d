"""The watchdog: a run whose agent no longer holds it is failed after two checks, not before."""

from __future__ import annotations

from actors.events import RUN_FAILED
from actors.runs import RunOutcome
from tests.unit.fakes import ShardRig, shard_rig

CHECK_S = 1.0


async def running(rig: ShardRig, run_id: str) -> int:
    """Chat `run_id`, wait until its agent has it and the watchdog sleeps; its reply row id."""
    assert await rig.chat(run_id) == []
    await rig.started(run_id)
    await rig.clock.sleeping()  # the watchdog, started with the run
    row = rig.store.row_of(run_id)
    assert row is not None
    return int(row["id"])


async def check(rig: ShardRig, seconds: float = CHECK_S) -> None:
    """Let `seconds` pass and wait until the watchdog has checked and sleeps again."""
    rig.clock.advance(seconds)
    await rig.clock.sleeping()


async def test_a_run_its_agent_lost_is_failed_after_the_second_check_not_before() -> None:
    rig = shard_rig(agent_check_s=CHECK_S)
    reply = await running(rig, "a")
    await rig.chat("b")  # queued behind it
    rig.agents[0].restart()  # the agent stops reporting the run
    await check(rig, CHECK_S / 2)  # not yet time for a check
    await check(rig, CHECK_S / 2)  # first check: a suspect
    assert rig.store.failed == [] and rig.shard.runs["a"].ended_at is None
    assert rig.agents[0].announced == []
    await check(rig)  # second check: lost
    assert rig.store.failed == [(reply, "internal")]
    assert rig.shard.runs["a"].status == "failed"
    (run_id, _, events), *_ = rig.agents[0].announced
    assert run_id == "a" and events[-1]["type"] == RUN_FAILED
    await rig.started("b")  # the lost run freed its session
    assert rig.agents[0].started_ids() == ["a", "b"]
    assert rig.shard.counts["lost"] == 1
    await rig.shard.stop()


async def test_a_run_its_agent_holds_is_never_failed() -> None:
    rig = shard_rig(agent_check_s=CHECK_S)
    await running(rig, "a")
    for _ in range(5):
        await check(rig)
    assert rig.store.failed == [] and rig.shard.runs["a"].status == "running"
    await rig.shard.stop()


async def test_the_watchdog_ends_a_run_its_agent_reports_ended() -> None:
    rig = shard_rig(agent_check_s=CHECK_S)
    reply = await running(rig, "a")
    await rig.chat("b")
    rig.agents[0].finish(RunOutcome("a", "completed", "done", reply))  # nobody told the shard
    await check(rig)
    assert rig.shard.runs["a"].status == "completed" and rig.store.failed == []
    await rig.started("b")
    await rig.shard.stop()


async def test_the_watchdog_stops_when_no_run_is_on_an_agent_and_comes_back() -> None:
    rig = shard_rig(agent_check_s=CHECK_S)
    await running(rig, "a")
    await rig.end("a")
    rig.clock.advance(CHECK_S)  # its next check finds nothing to watch and ends
    watchdog = rig.shard.supervision._watchdog
    assert watchdog is not None
    await watchdog
    await running(rig, "b")  # a new run on an agent starts it again
    assert rig.shard.supervision._watchdog is not watchdog
    await rig.shard.stop()
