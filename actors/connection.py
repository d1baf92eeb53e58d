"""One client socket's outbound side: a bounded queue, a sender task and seq bookkeeping.

Events of a run reach a connection at most once and in `seq` order: live
events with a seq it has already sent are dropped, and while a `resume` is
replaying a run, live events of that run wait until the replay is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from actors.events import Event, encode

logger = logging.getLogger(__name__)

Send = Callable[[str], Awaitable[None]]
SEEN_RUNS_MAX = 1024  # runs whose last seq a connection remembers (oldest forgotten first)


class SlowConsumer(Exception):
    """The client stopped reading and its outbound queue is full."""


class Connection:
    """The server side of one open WebSocket of one user."""

    def __init__(self, user_id: str, send: Send, *, queue_max: int) -> None:
        self.user_id = user_id
        self._send = send
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_max)
        self.seen: OrderedDict[str, int] = OrderedDict()
        self._replaying: dict[str, list[tuple[int, str]]] = {}
        self.overflowed = asyncio.Event()
        self.sent = 0

    def _note(self, run_id: str, seq: int) -> None:
        self.seen[run_id] = seq
        self.seen.move_to_end(run_id)
        if len(self.seen) > SEEN_RUNS_MAX:
            self.seen.popitem(last=False)

    # -- producing ------------------------------------------------------------
    def _push(self, text: str) -> None:
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            # No backpressure is possible towards the run (other users share it):
            # a client this far behind is told to go away by the socket's owner.
            self.overflowed.set()

    def send_event(self, event: Event) -> None:
        """Queue an event as is (errors, pong, direct answers), noting its run seq."""
        run_id, seq = event.get("run_id"), event.get("seq")
        if isinstance(run_id, str) and isinstance(seq, int):
            self._note(run_id, max(self.seen.get(run_id, 0), seq))
        self._push(encode(event))

    def deliver(self, run_id: str, first_seq: int, texts: list[str]) -> None:
        """Queue the live events of a run with contiguous seqs from `first_seq`."""
        held = self._replaying.get(run_id)
        if held is not None:
            held.extend((first_seq + i, text) for i, text in enumerate(texts))
            return
        seen = self.seen.get(run_id, 0)
        skip = max(0, seen + 1 - first_seq)
        if skip >= len(texts):
            return
        for text in texts[skip:]:
            self._push(text)
        self._note(run_id, first_seq + len(texts) - 1)

    def begin_replay(self, run_id: str) -> None:
        """Hold live events of `run_id` until `finish_replay`."""
        self._replaying.setdefault(run_id, [])

    def finish_replay(self, run_id: str, after_seq: int, events: list[Event]) -> None:
        """Send a run's replayed events after `after_seq`, then the live events held meanwhile."""
        held = self._replaying.pop(run_id, [])
        last = after_seq
        for event in events:
            if event["seq"] > last:
                self._push(encode(event))
                last = event["seq"]
        for seq, text in held:
            if seq > last:
                self._push(text)
                last = seq
        self._note(run_id, last)

    def abandon_replay(self, run_id: str) -> None:
        """Drop a replay that failed, with the live events held for it."""
        self._replaying.pop(run_id, None)

    # -- sending -------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Frames waiting to be written to the socket."""
        return self._queue.qsize()

    async def run_sender(self) -> None:
        """Write queued frames to the socket until cancelled."""
        while True:
            text = await self._queue.get()
            await self._send(text)
            self.sent += 1
