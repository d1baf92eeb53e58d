"""CallBatcher: concurrent calls share batches, each caller gets its own answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.call_batcher import BatchItemFailed, CallBatcher, settle_each
from actors.errors import BadRequest


class Remote:
    """A batch method whose calls stay open until the test releases them."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.fail_all: Exception | None = None

    async def send(self, items: list[int]) -> list[Any]:
        self.batches.append(items)
        self.arrived.set()
        await self.release.wait()
        if self.fail_all is not None:
            raise self.fail_all
        return [BadRequest(f"odd {i}") if i % 2 else i * 10 for i in items]


async def started(*calls: Any) -> list[asyncio.Task[Any]]:
    tasks = [asyncio.ensure_future(call) for call in calls]
    for _ in range(3):  # let each task reach its await
        await asyncio.sleep(0)
    return tasks


async def test_first_call_goes_at_once_and_later_ones_wait_for_a_free_slot() -> None:
    remote = Remote()
    batcher: CallBatcher[int] = CallBatcher(remote.send, max_in_flight=1)
    first = await started(batcher.call(0))
    assert remote.batches == [[0]]  # sent without waiting for company
    rest = await started(*(batcher.call(i) for i in (2, 4, 6)))
    assert remote.batches == [[0]]  # the slot is taken: they wait together
    remote.release.set()
    assert await asyncio.gather(*first, *rest) == [0, 20, 40, 60]
    assert remote.batches == [[0], [2, 4, 6]]
    assert (batcher.batches, batcher.items) == (2, 4)


async def test_each_caller_gets_its_own_error() -> None:
    remote = Remote()
    remote.release.set()
    batcher: CallBatcher[int] = CallBatcher(remote.send, max_in_flight=1)
    results = await asyncio.gather(*(batcher.call(i) for i in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], BadRequest) and "odd 1" in str(results[1])
    assert isinstance(results[3], BadRequest)


async def test_a_failed_batch_fails_every_caller_in_it() -> None:
    remote = Remote()
    remote.fail_all = ConnectionError("actor died")
    remote.release.set()
    batcher: CallBatcher[int] = CallBatcher(remote.send)
    results = await asyncio.gather(*(batcher.call(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    remote.fail_all = None
    assert await batcher.call(4) == 40  # the next batch goes out as usual


async def test_batches_respect_max_batch_and_max_in_flight() -> None:
    remote = Remote()
    batcher: CallBatcher[int] = CallBatcher(remote.send, max_in_flight=2, max_batch=3)
    tasks = await started(*(batcher.call(i * 2) for i in range(8)))
    assert remote.batches == [[0], [2]]  # two on their way, the rest waiting
    remote.release.set()
    assert await asyncio.gather(*tasks) == [i * 20 for i in range(8)]
    assert remote.batches == [[0], [2], [4, 6, 8], [10, 12, 14]]


async def test_a_caller_gone_before_sending_is_not_sent() -> None:
    remote = Remote()
    batcher: CallBatcher[int] = CallBatcher(remote.send, max_in_flight=1)
    first, gone, kept = await started(batcher.call(0), batcher.call(2), batcher.call(4))
    gone.cancel()
    remote.release.set()
    assert await first == 0 and await kept == 40
    assert remote.batches == [[0], [4]]


async def test_close_cancels_waiting_and_sending_calls() -> None:
    remote = Remote()
    batcher: CallBatcher[int] = CallBatcher(remote.send, max_in_flight=1)
    sending, waiting = await started(batcher.call(0), batcher.call(2))
    await batcher.close()
    for task in (sending, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(RuntimeError):
        await batcher.call(4)


async def test_settle_each_answers_results_and_errors_in_order() -> None:
    async def ok(value: int) -> int:
        return value

    async def bad() -> int:
        raise BadRequest("no")

    results = await settle_each([ok(1), bad(), ok(3)])
    assert results[0] == 1 and results[2] == 3 and isinstance(results[1], BadRequest)


async def test_settle_each_logs_an_unexpected_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> int:
        raise KeyError("lost")

    async def refused() -> int:
        raise BadRequest("a client's mistake, answered, not logged")

    with caplog.at_level("ERROR", logger="actors.call_batcher"):
        results = await settle_each([broken(), refused()])
    # The unexpected error becomes one any process can unpickle; a client's stays as is.
    assert isinstance(results[0], BatchItemFailed) and "KeyError" in str(results[0])
    assert isinstance(results[1], BadRequest)
    [record] = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


class _FakeMethod:
    """An actor method as a handle shows it: `.remote(...)` answers an awaitable."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.fn(*args)


async def test_remote_caller_sends_a_batched_method_through_its_twin() -> None:
    from actors.remote import RemoteCaller

    async def sums(calls: list[tuple[int, int]]) -> list[Any]:
        return [a + b if b else BadRequest("no b") for a, b in calls]

    async def ping() -> bool:
        return True

    handle = type("Handle", (), {})()
    handle.add_pairs = _FakeMethod(sums)
    handle.ping = _FakeMethod(ping)
    caller = RemoteCaller(handle, batched={"add": "add_pairs"})
    calls = (caller.add(1, 2), caller.add(3, 4), caller.add(5, 0), caller.add(6, 1))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:2] == [3, 7] and isinstance(results[2], BadRequest) and results[3] == 7
    # Two calls go at once (two may be on their way); the two made meanwhile share one.
    assert handle.add_pairs.calls == [([(1, 2)],), ([(3, 4)],), ([(5, 0), (6, 1)],)]
    assert await caller.ping() is True  # other methods are plain calls
    assert (caller.batchers["add"].items, caller.batchers["add"].batches) == (4, 3)
