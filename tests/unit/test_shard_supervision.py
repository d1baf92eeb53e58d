"""The shard's background work has an owner: a failed watchdog is restarted, a failed
recovery is tried again (and refuses calls meanwhile), and both show in stats and `ping`."""

from __future__ import annotations

import pytest

from actors.errors import Unavailable
from actors.events import RUN_ACCEPTED, RUN_FAILED
from tests.unit.fakes import BrokenAgent, ShardRig, flaky_rig

CHECK_S = 1.0


async def running(rig: ShardRig, run_id: str) -> None:
    """Chat `run_id`, wait until its agent has it and the watchdog sleeps."""
    assert await rig.chat(run_id) == []
    await rig.started(run_id)
    await rig.clock.sleeping()


async def test_a_failed_watchdog_is_restarted_counted_and_unhealthy_until_then() -> None:
    rig, _ = flaky_rig(agent_check_s=CHECK_S)
    agent = rig.agents[0]
    assert isinstance(agent, BrokenAgent)
    await running(rig, "a")
    assert rig.shard.healthy()
    agent.broken = True
    rig.clock.advance(CHECK_S)  # the check fails
    await rig.clock.sleeping()  # the supervisor's backoff before the restart
    assert not rig.shard.healthy()
    loop = rig.shard.stats()["loops"]["watchdog"]
    assert (loop["up"], loop["restarts"]) == (False, 1)
    assert loop["last_error"].startswith("TypeError")
    agent.broken = False
    agent.restart()  # and it lost the run: the restarted watchdog must find that
    rig.clock.advance(1.0)  # the backoff ends: restarted
    await rig.clock.sleeping()
    assert rig.shard.healthy() and rig.shard.stats()["loops"]["watchdog"]["up"]
    for _ in range(2):  # two checks: lost
        rig.clock.advance(CHECK_S)
        await rig.clock.sleeping()
    assert rig.shard.runs["a"].status == "failed"
    assert [e["type"] for _, _, events in agent.announced for e in events][-1] == RUN_FAILED
    await rig.shard.stop()


async def test_a_failed_recovery_refuses_calls_and_is_tried_again() -> None:
    rig, store = flaky_rig()
    lost = store.add_streaming("v", "s", "lost")
    store.fails["streaming_replies"] = 1
    with pytest.raises(Unavailable):
        await rig.shard.ensure_ready()
    with pytest.raises(Unavailable):  # tried again, and failing again: nothing acts
        store.fails["streaming_replies"] = 1
        await rig.chat("new")
    assert "new" not in rig.shard.runs and store.row_of("new") is None
    assert rig.shard.stats()["recovery"] == {"done": False, "failures": 2}
    assert store.rows[lost]["status"] == "streaming" and rig.agents[0].announced == []
    assert await rig.shard.ensure_ready() is True  # the store is back: recovered
    assert store.rows[lost]["status"] == "failed"
    (_, _, events), *_ = rig.agents[0].announced
    assert [e["type"] for e in events] == [RUN_ACCEPTED, RUN_FAILED]
    assert rig.shard.stats()["recovery"] == {"done": True, "failures": 2}
    assert await rig.chat("new") == []
    await rig.shard.stop()
