"""Group commit: one writer task drains a bounded queue into shared transactions.

Callers `await submit(op)`; the writer takes up to `batch_max` queued operations
(or what arrived within `flush_s` of the first), runs them in one transaction
and resolves each caller's future only after the commit. If the batch fails,
each operation is retried alone so one bad write cannot fail its neighbours.
A full queue makes `submit` wait: that is the backpressure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from actors import metrics
from actors.stats import LatencyWindow
from actors.supervise import Supervisor

logger = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")
Operation = Callable[[C], Awaitable[Any]]
TransactionFactory = Callable[[], AbstractAsyncContextManager[C]]


@dataclass
class _Pending(Generic[C]):
    op: Operation[C]
    future: asyncio.Future[Any]
    queued_at: float = field(default_factory=time.monotonic)


class WriterClosed(RuntimeError):
    """The writer is draining or stopped and takes no new operations."""


class GroupCommitter(Generic[C]):
    """A bounded write queue with one writer task that commits in batches."""

    def __init__(
        self,
        transaction: TransactionFactory[C],
        *,
        queue_max: int,
        batch_max: int,
        flush_s: float,
        on_rollback: Callable[[], None] | None = None,
    ) -> None:
        self._transaction = transaction
        self._on_rollback = on_rollback
        self._queue: asyncio.Queue[_Pending[C]] = asyncio.Queue(maxsize=queue_max)
        self._batch_max = batch_max
        self._flush_s = flush_s
        # The writer loop: if it fails outside a transaction (a bug of ours), the batch it
        # held is failed, not left waiting, and the loop is restarted with backoff.
        self.loops = Supervisor("group-commit")
        self._closing = False
        self.written = 0
        self.batches = 0
        self.failed = 0
        self.lag_ms = LatencyWindow()

    @property
    def queue_depth(self) -> int:
        """Operations waiting for the writer."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the writer loop (idempotent; needs a running loop)."""
        if not self.loops.loops:
            self.loops.start("writer", self._run)

    @property
    def restarts(self) -> int:
        """How often the writer loop failed and was restarted."""
        return sum(loop.restarts for loop in self.loops.loops.values())

    async def submit(self, op: Operation[C]) -> Any:
        """Queue `op`, wait until its batch is committed, return its result."""
        if self._closing:
            raise WriterClosed("the writer is shutting down")
        self.start()
        pending: _Pending[C] = _Pending(op, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        return await pending.future

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (or has failed)."""
        await self._queue.join()

    async def close(self) -> None:
        """Stop taking operations, commit everything queued, then stop the writer."""
        self._closing = True
        if not self.loops.loops:
            return
        await self._queue.join()
        await self.loops.stop()

    async def _take_batch(self) -> list[_Pending[C]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self._flush_s
        while len(batch) < self._batch_max:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._take_batch()
            try:
                await self._commit(batch)
            except Exception as exc:
                for item in batch:  # not committed, or not told: never leave a caller waiting
                    if not item.future.done():
                        self._fail(item, exc)
                raise  # the supervisor logs it and restarts the loop
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[_Pending[C]]) -> None:
        began = time.monotonic()
        try:
            async with self._transaction() as conn:
                results = [await item.op(conn) for item in batch]
        except Exception as exc:
            if self._on_rollback is not None:
                self._on_rollback()  # state derived from the rolled-back writes is void
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            logger.warning("batch of %d failed; retrying one by one", len(batch), exc_info=True)
            for item in batch:
                await self._commit([item])
            return
        self.batches += 1
        now = time.monotonic()
        lags_s = [now - item.queued_at for item in batch]
        for item, result, lag_s in zip(batch, results, lags_s, strict=True):
            self.written += 1
            self.lag_ms.add(lag_s * 1000)
            if not item.future.done():
                item.future.set_result(result)
        metrics.committed(now - began, lags_s, self.queue_depth)

    def _fail(self, item: _Pending[C], exc: BaseException) -> None:
        self.failed += 1
        logger.error("write failed", exc_info=exc)
        if not item.future.done():
            item.future.set_exception(exc)
