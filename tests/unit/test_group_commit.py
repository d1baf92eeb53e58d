"""GroupCommitter on a fake transactional store: batching, failure isolation, close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from actors.group_commit import GroupCommitter, WriterClosed

GUARD = 5.0  # upper bound for something that must happen


async def settle(turns: int = 100) -> None:
    """Let every task that can run, run (event-loop turns, not time)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class FakeTx:
    """What one transaction wrote; only kept if the transaction commits."""

    def __init__(self) -> None:
        self.writes: list[Any] = []


class FakeStore:
    """A store whose transactions commit on a clean exit and roll back on an exception."""

    def __init__(self) -> None:
        self.committed: list[Any] = []
        self.commits = 0
        self.rollbacks = 0
        self.batch_sizes: list[int] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTx]:
        tx = FakeTx()
        try:
            yield tx
        except BaseException:
            self.rollbacks += 1
            raise
        self.committed.extend(tx.writes)
        self.commits += 1
        self.batch_sizes.append(len(tx.writes))


Op = Callable[[FakeTx], Awaitable[Any]]


def write(value: Any) -> Op:
    async def op(tx: FakeTx) -> Any:
        tx.writes.append(value)
        return value

    return op


def failing(message: str) -> Op:
    async def op(tx: FakeTx) -> Any:
        tx.writes.append("poison")
        raise RuntimeError(message)

    return op


def committer(
    store: FakeStore, *, batch_max: int = 100, flush_s: float = 0.0, queue_max: int = 1000
) -> GroupCommitter[FakeTx]:
    return GroupCommitter(
        store.transaction, queue_max=queue_max, batch_max=batch_max, flush_s=flush_s
    )


async def test_submit_returns_the_result_after_commit() -> None:
    store = FakeStore()
    gc = committer(store)
    try:
        assert await gc.submit(write("a")) == "a"
        assert store.committed == ["a"]
        assert (gc.written, gc.batches, gc.failed) == (1, 1, 0)
    finally:
        await gc.close()


async def test_concurrent_submits_share_batches() -> None:
    store = FakeStore()
    gc = committer(store, flush_s=0.02)
    try:
        results = await asyncio.gather(*(gc.submit(write(i)) for i in range(50)))
        assert results == list(range(50))
        assert sorted(store.committed) == list(range(50))
        assert gc.written == 50
        assert gc.batches < 50
        assert gc.batches == store.commits
    finally:
        await gc.close()


async def test_batch_max_is_respected() -> None:
    store = FakeStore()
    gc = committer(store, batch_max=4, flush_s=0.02)
    try:
        await asyncio.gather(*(gc.submit(write(i)) for i in range(10)))
        assert max(store.batch_sizes) <= 4
        assert sum(store.batch_sizes) == 10
    finally:
        await gc.close()


async def test_failing_op_fails_only_its_own_caller() -> None:
    store = FakeStore()
    gc = committer(store, flush_s=0.02)
    try:
        ops = [write("a"), write("b"), failing("boom"), write("c"), write("d")]
        results = await asyncio.gather(*(gc.submit(op) for op in ops), return_exceptions=True)
        assert results[:2] == ["a", "b"]
        assert isinstance(results[2], RuntimeError)
        assert str(results[2]) == "boom"
        assert results[3:] == ["c", "d"]
        # Each good write is committed exactly once; the poison never is.
        assert sorted(store.committed) == ["a", "b", "c", "d"]
        assert gc.failed == 1
        assert gc.written == 4
        assert store.rollbacks >= 2  # the shared batch, then the bad op alone
    finally:
        await gc.close()


async def test_writer_keeps_going_after_a_failure() -> None:
    store = FakeStore()
    gc = committer(store)
    try:
        with pytest.raises(RuntimeError):
            await gc.submit(failing("first"))
        assert await gc.submit(write("after")) == "after"
        assert store.committed == ["after"]
    finally:
        await gc.close()


async def test_a_bug_outside_the_transaction_fails_its_batch_and_the_writer_restarts() -> None:
    store = FakeStore()
    broken = [True]

    def on_rollback() -> None:
        if broken.pop():
            raise KeyError("bookkeeping broke")  # a bug of ours, outside any transaction

    gc = GroupCommitter(
        store.transaction, queue_max=10, batch_max=10, flush_s=0.0, on_rollback=on_rollback
    )
    try:
        with pytest.raises(KeyError):  # told, not left waiting
            await asyncio.wait_for(gc.submit(failing("first")), GUARD)
        assert await asyncio.wait_for(gc.submit(write("after")), GUARD) == "after"
        assert store.committed == ["after"]
        assert gc.restarts == 1 and gc.failed == 1
    finally:
        await gc.close()


async def test_close_commits_everything_queued_before_returning() -> None:
    store = FakeStore()
    gc = committer(store)
    entered, release = asyncio.Event(), asyncio.Event()

    async def gate(tx: FakeTx) -> str:
        entered.set()
        await release.wait()
        tx.writes.append("gate")
        return "gate"

    gate_task = asyncio.create_task(gc.submit(gate))
    await asyncio.wait_for(entered.wait(), GUARD)  # the writer is now busy with the gate
    queued = [asyncio.create_task(gc.submit(write(i))) for i in range(5)]
    await settle()  # the writer is held in the gate: nothing queued can commit
    assert not any(task.done() for task in queued)
    assert gc.queue_depth == 5

    closer = asyncio.create_task(gc.close())
    await settle()
    assert not closer.done()  # close waits for the queued writes
    release.set()
    await asyncio.wait_for(closer, GUARD)

    assert gate_task.done()
    assert all(task.done() for task in queued)
    assert [task.result() for task in queued] == [0, 1, 2, 3, 4]
    assert store.committed == ["gate", 0, 1, 2, 3, 4]


async def test_submit_after_close_is_refused() -> None:
    store = FakeStore()
    gc = committer(store)
    await gc.submit(write("x"))
    await gc.close()
    with pytest.raises(WriterClosed):
        await gc.submit(write("y"))
    assert store.committed == ["x"]


async def test_close_without_any_write() -> None:
    gc = committer(FakeStore())
    await gc.close()
    with pytest.raises(WriterClosed):
        await gc.submit(write("y"))


async def test_commit_lag_is_recorded() -> None:
    store = FakeStore()
    gc = committer(store)
    try:
        await asyncio.gather(*(gc.submit(write(i)) for i in range(3)))
        samples = gc.lag_ms.samples()
        assert len(samples) == 3
        assert all(sample >= 0 for sample in samples)
    finally:
        await gc.close()
