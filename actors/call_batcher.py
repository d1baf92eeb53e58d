"""Coalesce concurrent calls to one actor method into calls of its batch twin.

An actor call costs about 0.9 ms of CPU on this machine whatever it carries
(`python -m benchmarks.call_cost ray`). When many users send at once, the same
hop (replica -> shard `chat`, shard -> persistence `begin_turn`, shard -> agent
`start_run`, agent -> persistence `finish_reply`) is made hundreds of times in
a few milliseconds. A `CallBatcher` sends the first call at once; calls made
while `max_in_flight` batches are on their way wait and leave together in the
next one. Under light load nothing waits; under a herd one call carries many.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from actors.errors import RaychatError

logger = logging.getLogger(__name__)
ItemT = TypeVar("ItemT")

# Sends one batch; answers one result per item, in order. An item that failed
# is answered by its exception (returned, not raised); raising fails them all.
BatchSend = Callable[[list[ItemT]], Awaitable[Sequence[Any]]]


async def settle_each(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await every call concurrently; each one's result, or the exception it raised.

    The body of a batch method: the items run as they would as separate calls.
    """
    results = list(await asyncio.gather(*calls, return_exceptions=True))
    for index, result in enumerate(results):
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancellation or exit: not an answer for one item
        if isinstance(result, Exception) and not isinstance(result, RaychatError):
            # Returned, its traceback does not travel: log it here, where it happened,
            # and answer an error any process can unpickle (the item alone fails).
            logger.error("item %d of a batch of %d failed", index, len(results), exc_info=result)
            results[index] = BatchItemFailed(f"{type(result).__name__}: {result}")
    return results


class BatchItemFailed(RuntimeError):
    """An unexpected error of one item of a batch (logged with its traceback where it
    happened)."""


class CallBatcher(Generic[ItemT]):
    """Send items through `send` in batches, at most `max_in_flight` batches at a time.

    Items wait only while that many batches are on their way, so the queue is
    bounded by the callers themselves (each awaits its item). Owns the tasks
    that send batches; `close` cancels them.
    """

    def __init__(
        self, send: BatchSend[ItemT], *, max_in_flight: int = 2, max_batch: int = 128
    ) -> None:
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("max_in_flight and max_batch must be at least 1")
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._waiting: deque[tuple[ItemT, asyncio.Future[Any]]] = deque()
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        self.items = 0

    async def call(self, item: ItemT) -> Any:
        """Send `item` with the next batch; its result, or raise its exception."""
        if self._closed:
            raise RuntimeError("the call batcher is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._waiting and len(self._sending) < self._max_in_flight:
            batch: list[tuple[ItemT, asyncio.Future[Any]]] = []
            while self._waiting and len(batch) < self._max_batch:
                item, future = self._waiting.popleft()
                if not future.cancelled():  # its caller has gone: nothing was sent
                    batch.append((item, future))
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            task = asyncio.get_running_loop().create_task(self._send_batch(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not self._closed:
            self._dispatch()

    async def _send_batch(self, batch: list[tuple[ItemT, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} answers")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except BaseException as exc:
            # Every caller in the batch fails with it; an exit that is not an
            # Exception still reaches each caller as an error, then goes on.
            error = exc if isinstance(exc, Exception) else RuntimeError(f"interrupted: {exc!r}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if error is not exc:
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Cancel the batches on their way and every waiting call."""
        self._closed = True
        while self._waiting:
            self._waiting.popleft()[1].cancel()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
