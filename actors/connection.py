"""One client socket's outbound side: a bounded queue, a sender task and seq bookkeeping.

Events of a run reach a connection at most once and in `seq` order: live
events with a seq it has already sent are dropped, and while a `resume` is
replaying a run, live events of that run wait until the replay is sent.

Flow control: a run's live events are not queued past the high watermark.
The connection notes the run as *behind* and drops its live events; once the
client has read the queue down to the low watermark, its owner replays the
run from the last seq sent (`take_behind`), so memory stays bounded and the
client still sees every seq once, in order. A client that reads nothing for
`stuck_s` while frames wait, or that lets the queue fill up, is marked
`overflowed` for its owner to close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import orjson

from actors.events import FINAL_TYPES, Event, encode

logger = logging.getLogger(__name__)

Send = Callable[[str], Awaitable[None]]
SEEN_RUNS_MAX = 1024  # runs whose last seq a connection remembers (oldest forgotten first)
# Encoded events start with their type (events are built type first).
_FINAL_PREFIXES = tuple(f'{{"type":"{kind}"' for kind in sorted(FINAL_TYPES))


class Connection:
    """The server side of one open WebSocket of one user."""

    def __init__(
        self,
        user_id: str,
        send: Send,
        *,
        queue_max: int,
        stuck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user_id = user_id
        self._send = send
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_max)
        self._high = max(1, queue_max * 3 // 4)
        self._low = queue_max // 4
        self._stuck_s = stuck_s
        self._clock = clock
        self.seen: OrderedDict[str, int] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()  # runs whose final event was sent
        self._replaying: dict[str, list[tuple[int, str]]] = {}
        # Runs whose replay a lost run's end cut short (`_deliver_relative`).
        self._ended_in_replay: set[str] = set()
        self._behind: set[str] = set()
        self.overflowed = asyncio.Event()
        self.wakeup = asyncio.Event()  # overflowed, or behind runs can catch up
        self.sent = 0
        self.last_progress = clock()

    def _note(self, run_id: str, seq: int, *, final: bool = False) -> None:
        self.seen[run_id] = seq
        self.seen.move_to_end(run_id)
        if len(self.seen) > SEEN_RUNS_MAX:
            self.seen.popitem(last=False)
        if final:
            self._ended[run_id] = None
            if len(self._ended) > SEEN_RUNS_MAX:
                self._ended.popitem(last=False)

    # -- producing ------------------------------------------------------------
    def _push(self, text: str) -> None:
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            self._overflow()

    def _overflow(self) -> None:
        self.overflowed.set()
        self.wakeup.set()

    def _check_stuck(self) -> None:
        if self._queue.qsize() and self._clock() - self.last_progress > self._stuck_s:
            self._overflow()

    def send_event(self, event: Event) -> None:
        """Queue an event as is (errors, pong, direct answers), noting its run seq."""
        run_id, seq = event.get("run_id"), event.get("seq")
        if isinstance(run_id, str) and isinstance(seq, int):
            final = event["type"] in FINAL_TYPES
            self._note(run_id, max(self.seen.get(run_id, 0), seq), final=final)
        self._push(encode(event))

    def deliver(self, run_id: str, first_seq: int, texts: list[str]) -> None:
        """Queue the live events of a run with contiguous seqs from `first_seq`.

        `first_seq` 0 marks events of a run lost with its actor: they are numbered
        after the last seq this socket sent, and dropped if it already sent the
        run's final event.
        """
        self._check_stuck()
        if first_seq == 0:
            self._deliver_relative(run_id, texts)
            return
        held = self._replaying.get(run_id)
        if held is not None:
            held.extend((first_seq + i, text) for i, text in enumerate(texts))
            return
        if run_id in self._behind:
            return  # replayed from `seen` when the client has caught up
        seen = self.seen.get(run_id, 0)
        skip = max(0, seen + 1 - first_seq)
        if skip >= len(texts):
            return
        if self._queue.qsize() + len(texts) - skip > self._high:
            self._behind.add(run_id)  # replay from `seen` once the client catches up
            return
        for text in texts[skip:]:
            self._push(text)
        self._note(run_id, first_seq + len(texts) - 1, final=texts[-1].startswith(_FINAL_PREFIXES))

    def _deliver_relative(self, run_id: str, texts: list[str]) -> None:
        """The prelude and final event of a lost run: all if this socket saw none of it."""
        if run_id in self._ended:
            return
        if self._replaying.pop(run_id, None) is not None:
            self._ended_in_replay.add(run_id)
        self._behind.discard(run_id)
        if self.seen.get(run_id, 0):
            texts = texts[-1:]
        for text in texts:
            event = orjson.loads(text)
            event["seq"] = self.seen.get(run_id, 0) + 1
            self.send_event(event)

    def take_behind(self) -> dict[str, int]:
        """Runs to replay now that the client caught up: run id -> last seq sent."""
        if not self._behind or self._queue.qsize() > self._low:
            return {}
        runs = {run_id: self.seen.get(run_id, 0) for run_id in self._behind}
        self._behind.clear()
        return runs

    def begin_replay(self, run_id: str, after_seq: int = 0) -> None:
        """Hold live events of `run_id` until `finish_replay`.

        The client has seen the run up to `after_seq` (on an earlier socket,
        perhaps): the events of a run lost meanwhile are numbered after it.
        """
        self._replaying.setdefault(run_id, [])
        if after_seq > self.seen.get(run_id, 0):
            self._note(run_id, after_seq)

    def finish_replay(self, run_id: str, after_seq: int, events: list[Event]) -> None:
        """Send a run's replayed events after `after_seq`, then the live events held meanwhile.

        Nothing is sent if the run's end came meanwhile as a lost run's
        (`_deliver_relative` ends the replay: it was numbered after what this
        socket had sent, and the replay would repeat it with another seq).
        """
        held = self._replaying.pop(run_id, [])
        if run_id in self._ended_in_replay:
            self._ended_in_replay.discard(run_id)
            return
        pending = [(e["seq"], e) for e in events] + [(seq, text) for seq, text in held]
        last = after_seq
        for seq, item in pending:
            if seq <= last:
                continue
            if self._queue.qsize() >= self._high:
                self._behind.add(run_id)  # the rest comes by a later replay
                break
            text = item if isinstance(item, str) else encode(item)
            self._push(text)
            last = seq
            if text.startswith(_FINAL_PREFIXES):
                self._note(run_id, last, final=True)
        self._note(run_id, last)

    def has_ended(self, run_id: str) -> bool:
        """Whether this socket has sent the run's final event."""
        return run_id in self._ended

    def abandon_replay(self, run_id: str) -> None:
        """Drop a replay that failed, with the live events held for it."""
        self._replaying.pop(run_id, None)
        self._ended_in_replay.discard(run_id)

    # -- sending -------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Frames waiting to be written to the socket."""
        return self._queue.qsize()

    @property
    def behind(self) -> int:
        """Runs whose live events are dropped until the client catches up."""
        return len(self._behind)

    async def run_sender(self) -> None:
        """Write queued frames to the socket until cancelled."""
        while True:
            text = await self._queue.get()
            await self._send(text)
            self.sent += 1
            self.last_progress = self._clock()
            if self._behind and self._queue.qsize() <= self._low:
                self.wakeup.set()
