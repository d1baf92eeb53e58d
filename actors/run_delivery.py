"""Event delivery of an agent actor: its run buffers, long polls, replays and announcements."""

from __future__ import annotations

from collections.abc import Callable

from actors.event_hub import EventHub, PollBatch
from actors.events import Event
from config import Settings


class RunDelivery:
    """The `EventHub` of one agent actor and the calls replicas and shards make on it."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.hub = EventHub(
            coalesce_s=settings.coalesce_ms / 1000,
            grace_s=settings.run_grace_s,
            max_finished=settings.run_buffers_max,
            max_bytes=settings.run_buffers_max_bytes,
            clock=clock,
        )
        self.housekeeping_s = max(0.5, min(10.0, settings.run_grace_s / 2))
        self._last_housekeeping = clock()
        self.buffers_expired = 0

    async def poll(self, replica_id: str, timeout_s: float) -> PollBatch:
        """The new events of every run `replica_id` subscribes to, in one batch.

        Polls also drive housekeeping: finished run buffers past their grace
        period are dropped every `housekeeping_s`, so memory stays bounded
        without a timer task of its own.
        """
        now = self._clock()
        if now - self._last_housekeeping >= self.housekeeping_s:
            self._last_housekeeping = now
            self.buffers_expired += self.hub.cleanup()
        return await self.hub.poll(replica_id, timeout_s)

    async def replay_and_subscribe(
        self, run_id: str, after_seq: int, replica_id: str
    ) -> list[Event] | None:
        """A run's buffered events after `after_seq`, and its live tail to `replica_id`.

        None when this actor does not hold the run (its buffer expired).
        """
        events = self.hub.replay(run_id, after_seq)
        if events is not None and replica_id:
            last = events[-1]["seq"] if events else after_seq
            self.hub.subscribe(replica_id, run_id, last)
        return events

    async def announce_final(self, run_id: str, user_id: str, events: list[Event]) -> bool:
        """Publish the last events of a run lost with another actor (`EventHub.broadcast`)."""
        return self.hub.broadcast(run_id, user_id, events)

    async def final_event(self, run_id: str) -> Event | None:
        """The final event of a finished run still buffered here."""
        buffer = self.hub.get(run_id)
        return None if buffer is None else buffer.final_event()

    async def texts(self, run_ids: list[str]) -> dict[str, str]:
        """The reply text so far of each listed run held here."""
        found = ((run_id, self.hub.get(run_id)) for run_id in run_ids)
        return {run_id: buffer.text for run_id, buffer in found if buffer is not None}

    async def cleanup(self) -> int:
        """Drop finished run buffers past their grace period; return how many."""
        removed = self.hub.cleanup()
        self.buffers_expired += removed
        return removed
