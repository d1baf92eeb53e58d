"""The replica's health check and socket admission, on a plain `IngressCore` without Ray."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from actors.factory import ActorHandles
from actors.ingress import IngressCore
from actors.supervise import Supervisor
from config import Settings
from tests.unit.fakes import GatedSleep


def core(**settings: Any) -> IngressCore:
    shard = SimpleNamespace(chats=SimpleNamespace(remote=None))
    handles = ActorHandles(writers=[], agents=[], shards=[shard])
    return IngressCore(Settings(shards=1, agent_actors=1, **settings), handles)


async def test_a_failing_dispatch_restarts_its_poll_loop_and_is_down_meanwhile() -> None:
    batches: asyncio.Queue[list[Any]] = asyncio.Queue()
    agent = SimpleNamespace(
        poll=SimpleNamespace(remote=lambda replica, timeout: batches.get()),
        ping=SimpleNamespace(remote=lambda: asyncio.sleep(0, result=True)),
    )
    handles = ActorHandles(writers=[], agents=[agent], shards=[])
    sleep = GatedSleep()
    ingress = IngressCore(
        Settings(shards=1, agent_actors=1), handles, loops=Supervisor("test", sleep=sleep)
    )
    dispatched: list[Any] = []

    def dispatch(batch: Any) -> None:
        if not dispatched:
            dispatched.append("failed")
            raise RuntimeError("dispatch broke")
        dispatched.append(batch)

    ingress.fan_in.dispatch = dispatch  # type: ignore[method-assign]
    ingress.start()
    ingress.check_health()
    assert await ingress.ready()
    batch = [("u1", "run-1", 1, ["{}"], None)]
    await batches.put(batch)
    await sleep.waiting.wait()  # the poll loop failed and waits to restart
    with pytest.raises(RuntimeError, match="poll-0 .RuntimeError: dispatch broke"):
        ingress.check_health()
    assert not await ingress.ready()
    report = ingress.admin.local_stats()
    assert report["loop_restarts"] == 1 and not report["loops"]["poll-0"]["up"]
    await sleep.release()
    await batches.put(batch)
    for _ in range(1000):  # event-loop turns, not time: the restarted loop takes it at once
        if len(dispatched) == 2:
            break
        await asyncio.sleep(0)
    assert dispatched[1] == batch
    ingress.check_health()
    assert await ingress.ready()
    await ingress.stop()
    assert ingress.loops.loops == {}


async def test_sockets_are_counted_at_admission_up_to_the_limit() -> None:
    ingress = core(max_sockets_per_replica=2)
    first, second, third = object(), object(), object()
    assert ingress.admit(first) and ingress.admit(second)
    assert not ingress.admit(third)
    ingress.release(first)
    ingress.release(first)  # idempotent
    assert ingress.admit(third)
