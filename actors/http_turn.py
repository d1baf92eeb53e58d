"""One chat turn taken over HTTP: a socket-like subscriber that keeps one run's events.

The ingress registers the turn's `Connection` for its user like a socket's, so
`IngressCore.dispatch` delivers live events to it and `resume` replays to it,
with the same seq bookkeeping and flow control. Its sender hands this run's
events to a small bounded queue that the HTTP response reads; events of the
user's other runs are dropped. A response that stops reading for `stuck_s`
(or whose client went away without closing it) abandons the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import orjson

from actors.connection import Connection
from actors.events import FINAL_TYPES, Event

logger = logging.getLogger(__name__)

# Events waiting for the HTTP response to take them; beyond this the Connection's own
# bounded queue and its catch-up replay take over (see `actors.connection`).
EVENTS_MAX = 16

Resume = Callable[[Connection, str, int], Awaitable[None]]
Finish = Callable[["HttpTurn", bool], Awaitable[None]]


class TurnBroken(Exception):
    """The turn's events stopped before its final one (the response stopped reading)."""


class HttpTurn:
    """The events of one run, for one HTTP response; iterate it, then `aclose` it."""

    def __init__(
        self,
        user_id: str,
        run_id: str,
        *,
        queue_max: int,
        stuck_s: float,
        resume: Resume,
        finish: Finish,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`finish(turn, cancel)` unregisters the turn (and cancels its run if `cancel`)."""
        self.run_id = run_id
        self.conn = Connection(user_id, self._take, queue_max=queue_max, stuck_s=stuck_s)
        self._events: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=EVENTS_MAX)
        self._stuck_s = stuck_s
        self._resume = resume
        self._finish = finish
        self._clock = clock
        self._read_at = clock()
        self._tasks: list[asyncio.Task[None]] = []
        self.ended = False  # the final event was handed out
        self.broken: str | None = None
        self._finished = False

    @property
    def user_id(self) -> str:
        """The user whose turn this is."""
        return self.conn.user_id

    def start(self) -> None:
        """Start the sender and the supervisor (stopped by `aclose`)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.conn.run_sender(), name=f"http-sender-{self.run_id}"),
            loop.create_task(self._supervise(), name=f"http-supervisor-{self.run_id}"),
        ]

    async def _take(self, text: str) -> None:
        event = orjson.loads(text)
        if event.get("run_id") == self.run_id:
            await self._events.put(event)  # waits while the response is not reading

    def __aiter__(self) -> HttpTurn:
        return self

    async def __anext__(self) -> Event:
        """The run's next event, up to and including its final one."""
        if self.ended:
            raise StopAsyncIteration
        if self.broken is not None:
            raise TurnBroken(self.broken)
        event = await self._events.get()
        self._read_at = self._clock()
        if event is None:
            raise TurnBroken(self.broken or "the turn was closed")
        if event["type"] in FINAL_TYPES:
            self.ended = True
        return event

    def _break(self, reason: str) -> None:
        self.broken = reason
        # Wakes a waiting reader; a full queue means the reader is not waiting.
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    async def _supervise(self) -> None:
        """Replay the run after the reader caught up; abandon the turn if nobody reads."""
        conn = self.conn
        while True:
            try:
                await asyncio.wait_for(conn.wakeup.wait(), self._stuck_s)
            except TimeoutError:
                idle = self._clock() - self._read_at >= self._stuck_s
                if idle and (self._events.qsize() or conn.queued):
                    break
                continue
            conn.wakeup.clear()
            if conn.overflowed.is_set():
                break
            for run_id, after_seq in conn.take_behind().items():
                if run_id != self.run_id:
                    continue  # another run of the user: not this response's
                try:
                    await self._resume(conn, run_id, after_seq)
                except Exception:
                    logger.exception("could not replay run %s to an HTTP response", run_id)
                    self._break("the run's events could not be replayed")
                    await self._close_once(cancel=False)
                    return
        logger.warning("run %s: its HTTP response stopped reading; abandoning it", self.run_id)
        self._break("the response stopped reading")
        self._tasks[0].cancel()  # the sender, waiting for a reader that is gone (see `aclose`)
        await self._close_once(cancel=True)

    async def _close_once(self, *, cancel: bool) -> None:
        if self._finished:
            return
        self._finished = True
        await self._finish(self, cancel)

    async def aclose(self, *, cancel: bool = True) -> None:
        """Stop the tasks and unregister (idempotent).

        A turn closed before its final event has its run cancelled (unless
        `cancel` is False: the chat was refused, there is no run): the client
        went away or stopped reading, nobody can resume an HTTP response, so
        the run stops and its partial reply is stored as `cancelled`, about as
        the client saw it.
        """
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.warning("a task of HTTP turn %s failed", self.run_id, exc_info=result)
        self._tasks.clear()
        await self._close_once(cancel=cancel and not self.ended)
