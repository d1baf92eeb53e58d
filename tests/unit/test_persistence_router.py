"""Which writer each persistence call goes to, and one stats object from several writers."""

from __future__ import annotations

from typing import Any

import pytest
from ray.exceptions import RayActorError

from actors.persistence_router import PersistenceRouter
from actors.sharding import writer_for, writer_for_row
from actors.stats_report import merge_persistence


class _Method:
    def __init__(self, writer: FakeWriter, name: str) -> None:
        self._writer, self._name = writer, name

    async def remote(self, *args: Any) -> Any:
        self._writer.calls.append((self._name, args))
        if self._name == "ping":
            return True
        if self._name == "stats":
            return {"writer": self._writer.index}
        return self._writer.index


class FakeWriter:
    """A handle whose every method records the call and answers the writer's index."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)


USERS = [f"user-{i}" for i in range(40)]


@pytest.fixture
def writers() -> list[FakeWriter]:
    return [FakeWriter(i) for i in range(3)]


async def test_a_users_calls_go_to_the_users_writer(writers: list[FakeWriter]) -> None:
    router = PersistenceRouter(writers)
    for user in USERS:
        owner = writer_for(user, 3)
        assert await router.begin_turn(user, "s", "r", "hi", None) == owner
        assert await router.load_context(user) == owner
        assert await router.add_todo(user, "milk") == owner
        assert await router.history(user, "s", 10, None) == owner
        assert await router.run_record(user, "r") == owner
    assert {writer_for(user, 3) for user in USERS} == {0, 1, 2}  # every writer gets users


async def test_row_updates_go_to_the_rows_writer(writers: list[FakeWriter]) -> None:
    router = PersistenceRouter(writers)
    for row_id in range(1, 10):
        await router.finish_reply(row_id, "text", "completed", 3, None)
        await router.fail_if_streaming(row_id, "internal")
    for writer in writers:
        rows = {args[0] for _, args in writer.calls}
        assert rows == {r for r in range(1, 10) if writer_for_row(r, 3) == writer.index}


async def test_pings_reach_every_writer_and_one_writer_is_the_old_single_one(
    writers: list[FakeWriter],
) -> None:
    assert await PersistenceRouter(writers).ping() is True
    assert all(w.calls == [("ping", ())] for w in writers)
    single = PersistenceRouter(writers[:1])
    assert {await single.load_context(user) for user in USERS} == {0}


def test_no_writers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PersistenceRouter([])


def _stats(writer: int, depth: int, p99: float) -> dict[str, Any]:
    return {
        "writer": writer,
        "queue_depth": depth,
        "written": 10 * depth,
        "batches": depth,
        "failed": 0,
        "reads": 1,
        "lag_ms": {"p50": p99 / 2, "p99": p99},
    }


def test_writer_stats_add_up_and_lag_is_the_worst_writers() -> None:
    merged = merge_persistence([_stats(0, 2, 8.0), _stats(1, 3, 20.0)])
    assert merged["queue_depth"] == 5
    assert merged["written"] == 50
    assert merged["reads"] == 2
    assert merged["lag_ms"] == {"p50": 10.0, "p99": 20.0}
    assert [w["writer"] for w in merged["writers"]] == [0, 1]


def test_one_writers_stats_keep_protocol_shape() -> None:
    merged = merge_persistence([_stats(0, 2, 8.0)])
    assert merged["queue_depth"] == 2
    assert merged["lag_ms"] == {"p50": 4.0, "p99": 8.0}


class FlakyWriter(FakeWriter):
    """A writer whose first `down` calls fail as a restarting actor's do."""

    def __init__(self, index: int, down: int) -> None:
        super().__init__(index)
        self.down = down

    def __getattr__(self, name: str) -> Any:
        writer = self

        class _Failing(_Method):
            async def remote(self, *args: Any) -> Any:
                if writer.down > 0:
                    writer.down -= 1
                    writer.calls.append(("died", args))
                    raise RayActorError()
                return await super().remote(*args)

        return _Failing(self, name)


async def test_repeatable_calls_wait_for_a_restarting_writer() -> None:
    writer = FlakyWriter(0, down=3)
    router = PersistenceRouter([writer], retry_s=30)
    await router.finish_reply(7, "text", "completed", 4, None)
    assert [name for name, _ in writer.calls] == ["died", "died", "died", "finish_reply"]
    assert router.retries == 3


async def test_tool_writes_are_not_repeated_and_retries_end() -> None:
    writer = FlakyWriter(0, down=1)
    with pytest.raises(RayActorError):
        await PersistenceRouter([writer]).add_todo("alice", "milk")  # might have committed
    assert [name for name, _ in writer.calls] == ["died"]
    gone = FlakyWriter(0, down=10**6)
    with pytest.raises(RayActorError):
        await PersistenceRouter([gone], retry_s=0.5).load_context("alice")
    assert 2 <= len(gone.calls) < 10
