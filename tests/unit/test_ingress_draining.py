"""Going away without Ray: drain watcher, shard keeper and `stop` close sockets 1001 once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.auth import Identity
from actors.factory import ActorHandles
from actors.ingress import CLOSE_GOING_AWAY, IngressCore
from actors.ingress.draining import STOPPING_CHECK_S, Draining
from actors.ingress.sockets import SocketTable
from actors.shard.presence import REJOIN
from config import Settings


class FakeSocket:
    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.closes: list[tuple[int, str | None]] = []
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        pass

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes.append((code, reason))
        if self.fails:
            raise RuntimeError("the client is gone")
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": code})


class Stop(Exception):
    """Ends a loop that otherwise runs until cancelled."""


def table(*sockets: FakeSocket) -> SocketTable:
    sockets_ = SocketTable(10, {"going_away_closed": 0})
    for ws in sockets:
        assert sockets_.admit(ws)
    return sockets_


GOING_AWAY = (CLOSE_GOING_AWAY, "server shutting down")


async def test_stopping_closes_every_socket_1001_once() -> None:
    sockets = [FakeSocket(), FakeSocket(), FakeSocket(fails=True)]
    open_ = table(*sockets)
    sleeps: list[float] = []
    answers = iter([False, None, False, True])

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    drain = Draining(open_, [], 1.0, dict, sleep=fake_sleep)
    await asyncio.wait_for(drain.close_when_stopping(lambda: next(answers)), 10)

    assert sleeps == [STOPPING_CHECK_S] * 3  # checked until Serve says it is stopping
    assert [ws.closes for ws in sockets] == [[GOING_AWAY]] * 3
    assert open_.going_away and open_.counters["going_away_closed"] == 2  # one close failed
    await open_.close_all()  # stop() closes again: nobody twice
    assert [ws.closes for ws in sockets] == [[GOING_AWAY]] * 3
    assert all(open_.close_code(ws) == CLOSE_GOING_AWAY for ws in sockets)


class KeptShard:
    """A shard whose `ensure_ready` answers from a script (an exception is raised)."""

    def __init__(self, answers: list[Any], sockets: list[FakeSocket]) -> None:
        self.answers = answers
        self.sockets = sockets
        self.reports: list[dict[str, Any]] = []
        self.closed_when_asked: list[bool] = []
        self.ensure_ready = self

    def remote(self, report: dict[str, Any]) -> Any:
        self.reports.append(report)
        self.closed_when_asked.append(any(ws.closes for ws in self.sockets))
        return self._answer()

    async def _answer(self) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_the_shard_keeper_closes_every_socket_once_the_service_is_drained() -> None:
    sockets = [FakeSocket(), FakeSocket()]
    open_ = table(*sockets)
    shards = [
        KeptShard([True, True, False, False], sockets),
        KeptShard([RuntimeError("restarting"), False, True, True], sockets),
    ]
    rounds = 4
    sleeps: list[float] = []
    seq = iter(range(1, 100))

    async def fake_sleep(seconds: float) -> None:
        if len(sleeps) == rounds:
            raise Stop
        sleeps.append(seconds)

    drain = Draining(open_, shards, 0.5, lambda: {"seq": next(seq)}, sleep=fake_sleep)
    with pytest.raises(Stop):
        await asyncio.wait_for(drain.keep_shards_ready(), 10)

    assert sleeps == [0.5] * rounds
    assert [r["seq"] for r in shards[0].reports] == [1, 2, 3, 4]  # one report per round
    assert shards[0].reports == shards[1].reports
    # A failed answer is no drain; the second round's False is: closed after it, once.
    assert shards[0].closed_when_asked == [False, False, True, True]
    assert [ws.closes for ws in sockets] == [[GOING_AWAY]] * 2
    assert open_.going_away


async def test_a_shard_that_asks_is_sent_this_replicas_sockets_of_its_users() -> None:
    class RejoinedShard(KeptShard):
        def __init__(self, answers: list[Any], fails: int = 0) -> None:
            super().__init__(answers, [])
            self.told: list[tuple[str, dict[str, int]]] = []
            self.fails = fails
            self.rejoin = type("Method", (), {"remote": self._rejoin})()

        async def _rejoin(self, replica_id: str, users: dict[str, int]) -> None:
            if self.fails:
                self.fails -= 1
                raise RuntimeError("restarting")
            self.told.append((replica_id, users))

    shards = [RejoinedShard([REJOIN, True, True]), RejoinedShard([True, REJOIN, REJOIN], fails=1)]
    rounds = 3
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        if len(sleeps) == rounds:
            raise Stop
        sleeps.append(seconds)

    drain = Draining(
        table(),
        shards,
        1.0,
        lambda: {"replica_id": "r1", "seq": len(sleeps)},
        sleep=fake_sleep,
        present=lambda index: {f"user-of-{index}": index + 1},
    )
    with pytest.raises(Stop):
        await asyncio.wait_for(drain.keep_shards_ready(), 10)
    assert shards[0].told == [("r1", {"user-of-0": 1})]
    assert shards[1].told == [("r1", {"user-of-1": 2})]  # its first rejoin failed: asked again
    assert drain.rejoins == 2 and not drain.sockets.going_away


async def test_stop_closes_served_sockets_1001_and_their_sessions_end() -> None:
    class Method:
        def __init__(self, answer: Any = None) -> None:
            self.answer = answer

        def remote(self, *args: Any) -> Any:
            async def answer() -> Any:
                return self.answer

            return answer()

    shard = type("Shard", (), {})()
    shard.connect, shard.disconnect, shard.chats = Method(True), Method(), Method([])
    ingress = IngressCore(
        Settings(shards=1, agent_actors=1), ActorHandles(writers=[], agents=[], shards=[shard])
    )
    sockets = [FakeSocket(), FakeSocket()]
    sessions = []
    for index, ws in enumerate(sockets):
        assert ingress.admit(ws)
        sessions.append(asyncio.ensure_future(ingress.serve_socket(ws, Identity(f"u{index}"))))
    deadline = asyncio.get_running_loop().time() + 10
    while len(ingress.fan_in.users) < 2:  # both sessions registered
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    # What the replica would tell a shard that lost count (one shard here: every user).
    assert ingress.sessions.present_of(0) == {"u0": 1, "u1": 1}

    await ingress.stop()
    await asyncio.wait_for(asyncio.gather(*sessions), 10)
    assert ingress.sessions.present == {}
    assert ingress.going_away
    assert [ws.closes for ws in sockets] == [[GOING_AWAY]] * 2
    assert ingress.counters["going_away_closed"] == 2 and ingress.counters["closed"] == 2
    assert len(ingress.sockets) == 0
