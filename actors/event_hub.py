"""Run buffers of one agent actor and the long-poll that carries them to ingress replicas.

Each ingress replica keeps one `poll` call open per agent actor. A poll returns
the new events of every run that replica subscribes to, in one batch: at once
when a run's first delta or final event is waiting (or the replica has been
idle for a coalescing interval), otherwise after the interval has passed since
its previous batch. This is the "batch across runs" design of DESIGN.md: the
number of Ray calls per second is set by the replicas, not by users or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.errors import Unavailable
from actors.events import (
    FINAL_TYPES,
    MESSAGE_DELTA,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    Event,
    encode,
)
from actors.run_buffer import RunBuffer

Clock = Callable[[], float]
# How a run ended, as the final event of a poll entry says: (status, reply text).
RunEnd = tuple[str, str]
# One poll answer: (user_id, run_id, seq of the first event, [encoded events], end) per
# run with news; the events of one entry have contiguous seqs, and `end` is set when
# they include the run's final event. A first seq of 0 marks a relative entry (see
# `broadcast`): the receiver numbers it after what it has sent (its `end` is None).
PollEntry = tuple[str, str, int, list[str], RunEnd | None]
PollBatch = list[PollEntry]
MAX_BYTES = 256 * 1024 * 1024  # text all run buffers of one actor may hold
_STATUS = {RUN_COMPLETED: "completed", RUN_CANCELLED: "cancelled", RUN_FAILED: "failed"}


@dataclass
class _Subscriber:
    """What one ingress replica has been sent, and what waits for it."""

    cursors: dict[str, int] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    urgent: asyncio.Event = field(default_factory=asyncio.Event)
    last_return: float = float("-inf")
    last_seen: float = 0.0


class EventHub:
    """Owns the run buffers of one actor and serves them to subscribed replicas."""

    def __init__(
        self,
        *,
        coalesce_s: float,
        grace_s: float = 300.0,
        max_finished: int = 20_000,
        max_bytes: int = MAX_BYTES,
        replica_expiry_s: float = 120.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._coalesce_s = coalesce_s
        self._grace_s = grace_s
        self._max_finished = max_finished
        self.max_bytes = max_bytes
        self.nbytes = 0  # text held by every buffer (`RunBuffer.nbytes`)
        self.refused = 0  # runs not opened: live runs alone held `max_bytes`
        self._finished: dict[str, None] = {}  # finished run ids, oldest first
        self._replica_expiry_s = replica_expiry_s
        self._clock = clock
        self._runs: dict[str, RunBuffer] = {}
        self._subs: dict[str, _Subscriber] = {}
        self.polls = 0
        self.events_sent = 0
        self.evicted = 0

    # -- runs -------------------------------------------------------------
    def open_run(
        self, run_id: str, user_id: str, prelude: list[Event], *, relative: bool = False
    ) -> RunBuffer:
        """Create the buffer of a new run, seeded with events already sent elsewhere.

        Finished runs are evicted (oldest first) to make room; when the live runs
        alone hold `max_bytes`, the run is refused (`Unavailable`): its owner
        starts it on another actor. A live run is never evicted.
        """
        if run_id in self._runs:
            raise ValueError(f"run {run_id} is already open")
        self._evict()
        if self.nbytes >= self.max_bytes:
            self.refused += 1
            raise Unavailable(
                f"this agent actor's live runs hold {self.nbytes} bytes of text"
                f" (limit {self.max_bytes}); it takes no new run"
            )
        buffer = RunBuffer(run_id, user_id, prelude, relative=relative)
        self._runs[run_id] = buffer
        self.nbytes += buffer.nbytes
        return buffer

    def _drop(self, run_id: str) -> None:
        """Forget a run: its buffer, its bytes and every replica's cursor on it."""
        buffer = self._runs.pop(run_id, None)
        if buffer is not None:
            self.nbytes -= buffer.nbytes
        self._finished.pop(run_id, None)
        for sub in self._subs.values():
            sub.cursors.pop(run_id, None)
            sub.pending.discard(run_id)

    def _evict(self) -> None:
        """Drop finished runs, oldest first, while over `max_finished` or `max_bytes`.

        A finished run whose final event some replica has not been sent yet is kept
        (like a live run) until that replica polls it or stops polling.
        """
        excess_runs = len(self._finished) - self._max_finished
        excess_bytes = self.nbytes - self.max_bytes
        victims: list[str] = []
        for run_id in self._finished:  # oldest first
            if excess_runs <= 0 and excess_bytes <= 0:
                break
            if any(run_id in sub.cursors for sub in self._subs.values()):
                continue
            victims.append(run_id)
            excess_runs -= 1
            excess_bytes -= self._runs[run_id].nbytes
        for run_id in victims:
            self._drop(run_id)
        self.evicted += len(victims)

    def broadcast(self, run_id: str, user_id: str, events: list[Event]) -> bool:
        """Publish the last events of a run lost elsewhere to every replica.

        `events` is the run's prelude (for sockets that saw none of it) and its
        final event; sockets number them after what they have sent. Replicas
        that start polling later (within the grace period) get them too. False
        when this actor already holds the run.
        """
        if run_id in self._runs:
            return False
        self.open_run(run_id, user_id, [], relative=True)
        for sub in self._subs.values():
            sub.cursors[run_id] = 0
        for event in events:
            self.emit(run_id, {k: v for k, v in event.items() if k not in ("run_id", "seq")})
        return True

    def get(self, run_id: str) -> RunBuffer | None:
        """The buffer of a run this actor holds, if any."""
        return self._runs.get(run_id)

    def emit(self, run_id: str, event: Event) -> Event:
        """Append an event to a run and wake every replica subscribed to it."""
        buffer = self._runs[run_id]
        first_delta = event["type"] == MESSAGE_DELTA and not buffer.text_parts
        held = buffer.nbytes
        stored = buffer.append(event)
        self.nbytes += buffer.nbytes - held
        if buffer.finished:
            buffer.finished_at = self._clock()
            self._finished[run_id] = None
        if self.nbytes > self.max_bytes or len(self._finished) > self._max_finished:
            self._evict()
        urgent = first_delta or event["type"] in FINAL_TYPES
        for sub in self._subs.values():
            if run_id in sub.cursors:
                sub.pending.add(run_id)
                sub.wake.set()
                if urgent:
                    sub.urgent.set()
        return stored

    # -- subscriptions ----------------------------------------------------
    def subscribe(self, replica_id: str, run_id: str, after_seq: int) -> bool:
        """Send `replica_id` the events of `run_id` after `after_seq`; False if unknown."""
        buffer = self._runs.get(run_id)
        if buffer is None:
            return False
        sub = self._subs.setdefault(replica_id, _Subscriber(last_seen=self._clock()))
        current = sub.cursors.get(run_id)
        sub.cursors[run_id] = after_seq if current is None else min(current, after_seq)
        if buffer.finished and sub.cursors[run_id] >= buffer.last_seq:
            del sub.cursors[run_id]  # it has seen the whole finished run: nothing to follow
        elif buffer.last_seq > sub.cursors[run_id]:
            sub.pending.add(run_id)
            sub.wake.set()
            sub.urgent.set()
        return True

    async def poll(self, replica_id: str, timeout_s: float) -> PollBatch:
        """Wait up to `timeout_s` for news for `replica_id`; return it as one batch."""
        sub = self._subs.get(replica_id)
        if sub is None:
            sub = self._subs[replica_id] = _Subscriber()
            for buffer in self._runs.values():
                if buffer.relative:
                    sub.cursors[buffer.run_id] = 0
                    sub.pending.add(buffer.run_id)
        sub.last_seen = self._clock()
        self.polls += 1
        if not sub.pending:
            sub.wake.clear()
            try:
                await asyncio.wait_for(sub.wake.wait(), timeout_s)
            except TimeoutError:
                return []
        hold_s = sub.last_return + self._coalesce_s - self._clock()
        if hold_s > 0 and not sub.urgent.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.urgent.wait(), hold_s)
        return self._collect(sub)

    def _collect(self, sub: _Subscriber) -> PollBatch:
        batch: PollBatch = []
        for run_id in sub.pending:
            buffer = self._runs.get(run_id)
            if buffer is None:
                sub.cursors.pop(run_id, None)
                continue
            events = buffer.after(sub.cursors[run_id])
            if events:
                sub.cursors[run_id] = events[-1]["seq"]
                encoded = [encode(e) for e in events]
                first = 0 if buffer.relative else events[0]["seq"]
                end: RunEnd | None = None
                if not buffer.relative and events[-1]["type"] in FINAL_TYPES:
                    end = (_STATUS[events[-1]["type"]], buffer.text)
                batch.append((buffer.user_id, run_id, first, encoded, end))
                self.events_sent += len(events)
            if buffer.finished and sub.cursors[run_id] >= buffer.last_seq:
                del sub.cursors[run_id]
        sub.pending.clear()
        sub.wake.clear()
        sub.urgent.clear()
        sub.last_return = self._clock()
        return batch

    def replay(self, run_id: str, after_seq: int) -> list[Event] | None:
        """Events of a run after `after_seq` (None when this actor does not hold it)."""
        buffer = self._runs.get(run_id)
        return None if buffer is None or buffer.relative else buffer.after(after_seq)

    # -- housekeeping -----------------------------------------------------
    def cleanup(self) -> int:
        """Drop finished runs past their grace period and replicas that stopped polling."""
        now = self._clock()
        expired = [
            run_id
            for run_id, buffer in self._runs.items()
            if buffer.finished_at is not None and now - buffer.finished_at >= self._grace_s
        ]
        for run_id in expired:
            self._drop(run_id)
        for replica_id in [
            r for r, s in self._subs.items() if now - s.last_seen >= self._replica_expiry_s
        ]:
            del self._subs[replica_id]
        return len(expired)

    @property
    def active_runs(self) -> int:
        """Runs that have not yet reached a final event."""
        return sum(1 for buffer in self._runs.values() if not buffer.finished)

    @property
    def buffered_runs(self) -> int:
        """All run buffers held, finished ones included."""
        return len(self._runs)

    @property
    def cursors(self) -> int:
        """Cursors held for subscribed replicas, over all runs."""
        return sum(len(sub.cursors) for sub in self._subs.values())

    def sizes(self) -> dict[str, int]:
        """Counts and bytes of what this hub holds (for stats)."""
        return {
            "buffered_runs": len(self._runs),
            "finished_runs": len(self._finished),
            "buffer_bytes": self.nbytes,
            "buffer_bytes_max": self.max_bytes,
            "buffers_refused": self.refused,
            "subscribers": len(self._subs),
            "cursors": self.cursors,
        }
