"""A batch is answered when its slowest item is: no chat waits on another user's store retry."""

from __future__ import annotations

import asyncio

from actors.shard import ChatRequest
from actors.shard.admission import ChatDeferred
from tests.unit.fakes import flaky_rig


def request(user: str, run_id: str) -> tuple[ChatRequest]:
    return (ChatRequest(user, run_id, "hi", session_id="s", replica_id="r1"),)


async def test_other_users_are_answered_before_one_users_store_retries_end() -> None:
    rig, store = flaky_rig()
    store.fails[("begin_turn", "slow")] = 2  # its persistence writer restarting
    answers = await rig.shard.chats(
        [request("u1", "a"), request("slow", "b"), request("u2", "c")], defer=True
    )
    # Answered while "slow" still waits to retry (the fake clock has not moved).
    assert answers == [[], ChatDeferred("b"), []]
    assert store.attempts("begin_turn") == 3 and store.row_of("b") is None
    await rig.started("a")
    await rig.started("c")
    assert sorted(rig.agents[0].started_ids()) == ["a", "c"]
    result = asyncio.ensure_future(rig.shard.chat_result("b"))
    await rig.drive(result.done, step_s=1.0, task=result)  # its retries, on the fake clock
    assert result.result() == []
    assert store.attempts("begin_turn") == 5 and store.row_of("b") is not None
    await rig.started("b")
    assert rig.agents[0].started_ids()[-1] == "b"
    assert len(rig.shard.batch_chats) == 0  # fetched: forgotten
    await rig.shard.stop()


async def test_a_deferred_chats_error_is_its_answer() -> None:
    rig, store = flaky_rig()
    store.fails[("begin_turn", "slow")] = 1000  # never stored
    answers = await rig.shard.chats([request("slow", "b"), request("u1", "a")], defer=True)
    assert answers == [ChatDeferred("b"), []]
    result = asyncio.ensure_future(rig.shard.chat_result("b"))
    await rig.drive(result.done, task=result)
    assert isinstance(result.exception(), ConnectionError)
    assert "b" not in rig.shard.runs  # refused: its place in the lane is given back
    await rig.shard.stop()


async def test_without_retries_a_batch_is_answered_in_full() -> None:
    rig, _ = flaky_rig()
    answers = await rig.shard.chats([request("u1", "a"), request("u2", "b")], defer=True)
    assert answers == [[], []] and len(rig.shard.batch_chats) == 0
    await rig.shard.stop()
