"""Each run gets its own shallow copy of the shared agents: nothing rebuilt, no shared identity."""

from __future__ import annotations

import asyncio

from agents.run_internal import agent_tool_configuration

from actors.agent_manager import AgentManager, RunSpec
from actors.sim_model import SimulatedModel
from config import Settings
from tests.unit.fakes import FakeObserver, FakeServices, FakeStore

RUNS = 20


def manager(model: SimulatedModel) -> AgentManager:
    return AgentManager(
        Settings(), services=FakeServices(), store=FakeStore(), observer=FakeObserver(), model=model
    )


def test_a_run_agent_is_a_copy_sharing_tools_model_and_instructions() -> None:
    agents = manager(SimulatedModel(ttft_s=0, tokens_per_s=100, reply_tokens=2))
    built = agents.instances_created
    shared, organizer = agents.agent("assistant"), agents.agent("organizer")
    one, two = agents.run_agent("assistant"), agents.run_agent("assistant")
    assert one is not two and one is not shared
    assert (one.name, one.model, one.instructions) == (
        shared.name,
        shared.model,
        shared.instructions,
    )
    (handed,) = one.handoffs
    assert handed is not organizer and handed.name == organizer.name
    assert handed.tools is organizer.tools
    assert shared.handoffs == [organizer]  # the shared agents are untouched
    assert agents.instances_created == built


async def test_concurrent_runs_do_not_share_an_agent_in_the_sdks_tool_checks() -> None:
    gate, all_in = asyncio.Event(), asyncio.Event()
    waiting: list[float] = []

    async def held(delay: float) -> None:  # the model's sleep: every run waits on the gate
        waiting.append(delay)
        if len(waiting) == RUNS:
            all_in.set()
        await gate.wait()

    model = SimulatedModel(ttft_s=0.01, tokens_per_s=100, reply_tokens=3, sleep=held)
    agents = manager(model)
    specs = [
        RunSpec(run_id=f"r{i}", user_id=f"u{i}", session_id="s", text="hi", reply_message_id=i)
        for i in range(RUNS)
    ]
    runs = [asyncio.ensure_future(agents.run_turn(spec)) for spec in specs]
    try:
        await asyncio.wait_for(all_in.wait(), 30)  # every run is inside the SDK now
        watched = agent_tool_configuration._resolutions
        assert len(watched) >= len(specs)
        assert max(len(active) for active in watched.values()) == 1
    finally:
        gate.set()
        outcomes = await asyncio.gather(*runs)
    assert {outcome.status for outcome in outcomes} == {"completed"}
