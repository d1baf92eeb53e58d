"""The replica's health check and socket admission, on a plain `IngressCore` without Ray."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from actors.factory import ActorHandles
from actors.ingress import IngressCore
from config import Settings


def core(**settings: Any) -> IngressCore:
    shard = SimpleNamespace(chats=SimpleNamespace(remote=None))
    handles = ActorHandles(writers=[], agents=[], shards=[shard])
    return IngressCore(Settings(shards=1, agent_actors=1, **settings), handles)


async def test_health_fails_once_a_background_task_died() -> None:
    ingress = core()

    async def crash() -> None:
        raise ValueError("dispatch broke")

    async def finished() -> None:
        return None

    tasks = [asyncio.ensure_future(finished()), asyncio.ensure_future(crash())]
    await asyncio.wait(tasks)
    ingress._pollers.append(tasks[0])
    ingress.check_health()  # a task that ended normally (the drain watcher) is fine
    ingress._pollers.append(tasks[1])
    with pytest.raises(RuntimeError, match="task stopped") as failed:
        ingress.check_health()
    assert isinstance(failed.value.__cause__, ValueError)


async def test_sockets_are_counted_at_admission_up_to_the_limit() -> None:
    ingress = core(max_sockets_per_replica=2)
    first, second, third = object(), object(), object()
    assert ingress.admit(first) and ingress.admit(second)
    assert not ingress.admit(third)
    ingress.release(first)
    ingress.release(first)  # idempotent
    assert ingress.admit(third)
