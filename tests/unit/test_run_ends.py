"""How an agent manager tells a run's owner that it ended: always, or only when asked."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from actors.agent_manager import AgentManager, RunSpec
from actors.errors import Unavailable
from actors.sim_model import SimulatedModel
from config import Settings
from tests.unit.fakes import FakeObserver, FakeServices, FakeStore


def manager(
    owner: FakeObserver,
    *,
    report_ends: bool,
    store: FakeStore | None = None,
    tokens_per_s: float = 1000,
) -> AgentManager:
    model = SimulatedModel(ttft_s=0.01, tokens_per_s=tokens_per_s, reply_tokens=5)
    return AgentManager(
        Settings(),
        services=FakeServices(),
        store=store or FakeStore(),
        observer=owner,
        model=model,
        report_ends=report_ends,
    )


def spec(run_id: str) -> RunSpec:
    return RunSpec(run_id=run_id, user_id="u", session_id="s", text="hi", reply_message_id=7)


async def test_by_default_every_end_is_reported() -> None:
    owner = FakeObserver()
    outcome = await manager(owner, report_ends=True).run_turn(spec("r1"))
    assert outcome.status == "completed" and [o.run_id for _, o in owner.ended] == ["r1"]


async def test_unasked_ends_are_not_reported_but_can_be_queried() -> None:
    owner = FakeObserver()
    agents = manager(owner, report_ends=False)
    outcome = await agents.run_turn(spec("r1"))
    assert owner.ended == []
    assert await agents.runs_status(["r1", "unknown"]) == {"r1": outcome}
    assert await agents.report_end("r1") == outcome
    assert owner.ended == []  # it had ended: the answer is the report


async def test_an_end_asked_for_while_running_is_reported_once() -> None:
    owner = FakeObserver()
    agents = manager(owner, report_ends=False)
    await agents.start_run(spec("r1"))
    await agents.start_run(spec("r2"))
    assert await agents.runs_status(["r1", "r2"]) == {"r1": None, "r2": None}
    assert await agents.report_end("r1") is None  # still running: armed
    assert await agents.report_end("r1") is None
    await agents.run_turn(spec("r1"))
    await agents.run_turn(spec("r2"))
    assert [o.run_id for _, o in owner.ended] == ["r1"]
    assert (await agents.runs_status(["r2"]))["r2"] is not None


async def test_drain_ends_runs_in_flight_as_failed_with_their_partial_reply() -> None:
    store = FakeStore()
    agents = manager(
        FakeObserver(), report_ends=False, store=store, tokens_per_s=20
    )  # 5 tokens: 250 ms
    run = RunSpec(
        run_id="r1",
        user_id="u",
        session_id="s",
        text="hi",
        reply_message_id=7,
        subscribers=[("replica", 0)],
    )
    await agents.start_run(run)
    seen: list[dict[str, object]] = []
    while not any(e["type"] == "message.delta" for e in seen):  # wait for streaming text
        for _, _, _, texts, _ in await asyncio.wait_for(agents.poll("replica", 5), 10):
            seen.extend(orjson.loads(text) for text in texts)
    assert await agents.drain() == 1
    [(_, text, status, _, code)] = store.finished
    assert (status, code) == ("failed", "shutdown")
    buffer = agents.hub.get("r1")
    assert buffer is not None and text == buffer.text != ""  # the partial reply, as streamed
    final = buffer.final_event()
    assert final is not None and final["error"]["code"] == "shutdown"
    with pytest.raises(Unavailable):
        await agents.start_run(spec("r2"))


async def test_stats_show_what_the_buffers_and_outcomes_hold() -> None:
    agents = manager(FakeObserver(), report_ends=False)
    outcome = await agents.run_turn(spec("r1"))
    stats = agents.stats()
    assert stats["buffered_runs"] == stats["finished_runs"] == 1
    assert stats["buffer_bytes"] >= 2 * len(outcome.text.encode()) > 0
    assert stats["buffer_bytes_max"] > stats["buffer_bytes"]
    assert (stats["outcomes"], stats["outcome_bytes"]) == (1, len(outcome.text))
    assert stats["cursors"] == 0 and stats["buffers_refused"] == 0
