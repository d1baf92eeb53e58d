"""A socket's session on a plain `IngressCore` without Ray: frames in, events out, closes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from actors import metrics
from actors.auth import Identity
from actors.factory import ActorHandles
from actors.ingress import IngressCore
from actors.shard import ChatDeferred
from config import Settings

MAX_FRAME_BYTES = 256  # the smallest the settings allow


class Method:
    """An actor method: `.remote(*args)` records the call and returns an awaitable answer."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        return self._answer()

    async def _answer(self) -> Any:
        return self.answer


class FakeShard:
    def __init__(self) -> None:
        self.connect = Method(True)
        self.disconnect = Method()
        self.chats = Method([])


class FakeSocket:
    """The server side of a WebSocket: frames to receive, events sent, closes made."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closes: list[tuple[int, str | None]] = []

    def frame(self, text: str | None = None, data: bytes | None = None) -> None:
        message: dict[str, Any] = {"type": "websocket.receive"}
        message["text" if data is None else "bytes"] = text if data is None else data
        self.incoming.put_nowait(message)

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        self.sent.put_nowait(orjson.loads(text))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes.append((code, reason))
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": code})


class Closes:
    """Records `raychat_socket_closes_total` increments by code label."""

    def __init__(self) -> None:
        self.codes: list[str] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.codes.append((tags or {}).get("code", ""))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


@pytest.fixture
def closes() -> Iterator[Closes]:
    recorded = Closes()
    other = Closes()

    def factory(spec: metrics.MetricSpec) -> Closes:
        return recorded if spec.name == "raychat_socket_closes_total" else other

    with metrics.recording_to(factory):
        yield recorded


def core(shard: FakeShard) -> IngressCore:
    settings = Settings(shards=1, agent_actors=1, max_frame_bytes=MAX_FRAME_BYTES)
    return IngressCore(settings, ActorHandles(writers=[], agents=[], shards=[shard]))


async def next_sent(ws: FakeSocket) -> dict[str, Any]:
    return await asyncio.wait_for(ws.sent.get(), 10)


async def test_bad_frames_get_error_events_and_the_loop_goes_on(closes: Closes) -> None:
    shard = FakeShard()
    ingress = core(shard)
    ws = FakeSocket()
    assert ingress.admit(ws)
    session = asyncio.ensure_future(ingress.serve_socket(ws, Identity("u1")))
    ws.frame("not json")
    ws.frame(data=b"\x00")
    ws.frame('{"type": "dance"}')
    ws.frame('{"type": "ping"}')

    sent = [await next_sent(ws) for _ in range(4)]
    assert [(e["type"], e.get("code")) for e in sent] == [
        ("error", "bad_json"),
        ("error", "bad_request"),
        ("error", "unknown_type"),
        ("pong", None),
    ]
    assert not session.done() and ws.closes == []
    assert (ingress.counters["frames"], ingress.counters["errors"]) == (4, 3)

    ws.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(session, 10)
    assert shard.connect.calls == [("u1", ingress.replica_id, 16)]
    assert shard.disconnect.calls == [("u1", ingress.replica_id)]
    assert len(ingress.sockets) == 0 and ingress.fan_in.users == {}
    assert ingress.counters["opened"] == ingress.counters["closed"] == 1
    assert closes.codes == ["1000"]


@pytest.mark.parametrize(
    "text",
    ["x" * (MAX_FRAME_BYTES + 1), "\u00e9" * (MAX_FRAME_BYTES // 2 + 1)],
    ids=["characters", "utf8-bytes"],
)
async def test_a_too_large_frame_closes_the_socket_1009(text: str, closes: Closes) -> None:
    shard = FakeShard()
    ingress = core(shard)
    ws = FakeSocket()
    assert ingress.admit(ws)
    session = asyncio.ensure_future(ingress.serve_socket(ws, Identity("u1")))
    ws.frame('{"type": "ping"}')
    assert (await next_sent(ws))["type"] == "pong"
    ws.frame(text)
    ws.frame('{"type": "ping"}')

    await asyncio.wait_for(session, 10)
    assert ws.closes == [(1009, "frame too large")]
    assert ws.incoming.qsize() == 2  # nothing more taken: the next ping and the disconnect
    assert ws.sent.empty()
    assert closes.codes == ["1009"]
    assert shard.disconnect.calls == [("u1", ingress.replica_id)]


async def test_a_socket_the_shard_refuses_is_closed_1008_unregistered(closes: Closes) -> None:
    shard = FakeShard()
    shard.connect.answer = False  # the user has too many sockets open
    ingress = core(shard)
    ws = FakeSocket()
    assert ingress.admit(ws)
    await asyncio.wait_for(ingress.serve_socket(ws, Identity("u1")), 10)
    assert ws.closes == [(1008, "too many open sockets for this user")]
    assert shard.disconnect.calls == [] and ingress.counters["opened"] == 0
    assert closes.codes == ["1008"]
    assert ingress.sessions.present == {}  # not counted: nothing to tell a shard that asks


async def test_a_deferred_chat_is_answered_by_its_own_result(closes: Closes) -> None:
    shard = FakeShard()
    queued = {"type": "run.queued", "run_id": "r1", "seq": 2}
    shard.chats = Method([ChatDeferred("r1")])  # the batch answered without waiting on it
    shard.chat_result = Method([queued])  # type: ignore[attr-defined]
    ingress = core(shard)
    ws = FakeSocket()
    assert ingress.admit(ws)
    session = asyncio.ensure_future(ingress.serve_socket(ws, Identity("u1")))
    ws.frame('{"type": "chat", "text": "hi"}')
    assert await next_sent(ws) == queued
    (run_id,) = shard.chat_result.calls[0]  # type: ignore[attr-defined]
    assert run_id == "r1"
    await ws.close(1000)
    await asyncio.wait_for(session, 10)
