"""The ingress fan-in without Ray: `dispatch` to a user's connections, kept ends, the poll loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.ingress.fan_in import ENDS_KEPT_PER_USER, FanIn


class Conn:
    """Records what `dispatch` delivers to it."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.delivered: list[tuple[str, int, list[str]]] = []

    def deliver(self, run_id: str, first_seq: int, texts: list[str]) -> None:
        self.delivered.append((run_id, first_seq, texts))


def fan_in(sleep: Any = None) -> FanIn:
    if sleep is None:
        return FanIn("replica-1", 1.0, {"batches": 0})
    return FanIn("replica-1", 1.0, {"batches": 0}, sleep=sleep)


def test_dispatch_reaches_every_connection_of_the_user_and_no_one_else() -> None:
    hub = fan_in()
    a1, a2, b = Conn("a"), Conn("a"), Conn("b")
    for conn in (a1, a2, b):
        hub.register(conn)
    hub.dispatch(
        [
            ("a", "ra", 1, ["e1", "e2"], None),
            ("b", "rb", 3, ["e3"], None),
            ("c", "rc", 1, ["e4"], None),  # a user with no socket here
        ]
    )
    assert a1.delivered == a2.delivered == [("ra", 1, ["e1", "e2"])]
    assert b.delivered == [("rb", 3, ["e3"])]

    hub.unregister(a1)
    hub.dispatch([("a", "ra", 3, ["e5"], None)])
    assert a1.delivered == [("ra", 1, ["e1", "e2"])]
    assert a2.delivered[-1] == ("ra", 3, ["e5"])
    assert sorted(hub.users) == ["a", "b"]


def test_ends_are_kept_per_connected_user_and_bounded() -> None:
    hub = fan_in()
    a, b = Conn("a"), Conn("b")
    hub.register(a)
    hub.register(b)
    runs = ENDS_KEPT_PER_USER + 5
    hub.dispatch([("a", f"r{i}", 1, ["x"], ("completed", f"t{i}")) for i in range(runs)])
    hub.dispatch([("b", "rb", 1, ["x"], ("failed", "")), ("c", "rc", 1, ["x"], ("failed", ""))])

    ended = hub.take_ended("a")
    assert len(ended) == ENDS_KEPT_PER_USER  # the oldest are left to the shard's watchdog
    assert ended[0] == ("r5", "completed", "t5")
    assert ended[-1] == (f"r{runs - 1}", "completed", f"t{runs - 1}")
    assert hub.take_ended("a") == ()  # handed to the shard once
    assert hub.take_ended("c") == ()  # no connection here: not kept

    hub.unregister(b)
    assert hub.take_ended("b") == ()  # forgotten with the user's last connection


def test_ends_stay_while_the_user_keeps_a_connection() -> None:
    hub = fan_in()
    first, second = Conn("a"), Conn("a")
    hub.register(first)
    hub.register(second)
    hub.dispatch([("a", "r1", 1, ["x"], ("cancelled", "so far"))])
    hub.unregister(first)
    assert hub.take_ended("a") == (("r1", "cancelled", "so far"),)


class FlakyAgent:
    """An agent actor whose polls answer from a script: an exception is raised, a batch returned.

    When the script runs out, the poll sets `drained` and waits forever.
    """

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, float]] = []
        self.drained = asyncio.Event()
        self.poll = self

    def remote(self, replica_id: str, timeout_s: float) -> Any:
        self.calls.append((replica_id, timeout_s))
        return self._answer()

    async def _answer(self) -> Any:
        if not self.script:
            self.drained.set()
            await asyncio.get_running_loop().create_future()  # never answers
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


async def test_a_failing_poll_is_retried_with_backoff_reset_by_a_success() -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    hub = fan_in(sleep=fake_sleep)
    conn = Conn("a")
    hub.register(conn)
    boom = RuntimeError("actor restarting")
    agent = FlakyAgent(
        [boom] * 8 + [[("a", "r1", 1, ["e1"], None)], [], boom, [("a", "r1", 2, ["e2"], None)]]
    )
    task = asyncio.ensure_future(hub.poll_loop(agent))
    await asyncio.wait_for(agent.drained.wait(), 10)

    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 0.05]
    assert conn.delivered == [("r1", 1, ["e1"]), ("r1", 2, ["e2"])]
    assert hub.counters["batches"] == 2  # the empty answer is no batch
    assert agent.calls[0] == ("replica-1", 1.0)
    assert not task.done()  # still polling
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
