"""A shard's context cache: a tool's write always wins over a load that started before it."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.records import TurnRecord, UserContext
from actors.shard import UserShard
from tests.unit.fakes import FakeShardStore, shard_rig


class HeldContextStore(FakeShardStore):
    """`load_context` answers only once released, with the context current at its start."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.started = asyncio.Event()
        self.started_again = asyncio.Event()
        self.release = asyncio.Event()
        self.todos = ["old"]

    async def load_context(self, user_id: str) -> UserContext:
        self.loads += 1
        seen = list(self.todos)  # what the database held when the read began
        (self.started_again if self.started.is_set() else self.started).set()
        await self.release.wait()
        return UserContext(todos=[{"id": 1, "text": t} for t in seen])


def held_rig() -> tuple[HeldContextStore, UserShard]:
    rig = shard_rig()
    store = HeldContextStore()
    rig.shard._store = store  # the shard reads contexts through its store
    return store, rig.shard


async def test_an_invalidation_during_a_load_keeps_the_stale_value_out_of_the_cache() -> None:
    store, shard = held_rig()
    loading = asyncio.create_task(shard.context("u"))
    await store.started.wait()
    store.todos = ["new"]  # a tool writes ...
    assert not await shard.invalidate_context("u")  # ... and invalidates
    store.release.set()
    stale = await loading
    assert [t["text"] for t in stale.todos] == ["old"]  # the caller gets what it read
    assert "u" not in shard.contexts
    fresh = await shard.context("u")
    assert store.loads == 2
    assert [t["text"] for t in fresh.todos] == ["new"]
    assert await shard.context("u") is fresh  # cached now
    assert store.loads == 2


async def test_a_load_without_an_invalidation_is_cached() -> None:
    store, shard = held_rig()
    store.release.set()
    first = await shard.context("u")
    assert await shard.context("u") is first
    assert store.loads == 1


async def test_another_users_invalidation_does_not_stop_caching() -> None:
    store, shard = held_rig()
    loading = asyncio.create_task(shard.context("u"))
    await store.started.wait()
    await shard.invalidate_context("v")
    store.release.set()
    await loading
    assert "u" in shard.contexts


async def test_a_refresh_wins_over_an_older_load_still_running() -> None:
    store, shard = held_rig()
    older = asyncio.create_task(shard.context("u"))
    await store.started.wait()
    store.todos = ["new"]
    refresh = asyncio.create_task(shard.context("u", refresh=True))
    async with asyncio.timeout(5):
        await store.started_again.wait()  # the refresh has begun its load
    store.release.set()
    await older
    fresh = await refresh
    assert shard.contexts.get("u") is fresh


class HeldTurnStore(FakeShardStore):
    """`begin_turn` (which loads the context with the first chat) answers once released."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def begin_turn(self, *args: Any, **kwargs: Any) -> TurnRecord:
        self.started.set()
        await self.release.wait()
        return await super().begin_turn(*args, **kwargs)


async def test_an_invalidation_during_a_first_chat_keeps_its_context_out_of_the_cache() -> None:
    rig = shard_rig()
    store = HeldTurnStore()
    rig.shard._store = store
    rig.shard.admission._store = store  # type: ignore[attr-defined]
    chatting = asyncio.create_task(rig.chat("r1"))
    await store.started.wait()  # the turn's context is being read
    assert not await rig.shard.invalidate_context("u")  # a tool wrote meanwhile
    store.release.set()
    await chatting
    assert "u" not in rig.shard.contexts  # the read that began before the write is not kept
