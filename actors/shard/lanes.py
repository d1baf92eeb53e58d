"""One lane per chat session: at most one run active, the others queued in order (`on_busy`)."""

from __future__ import annotations

from collections.abc import Callable

from actors.errors import Busy
from actors.shard.model import Lane, LaneKey, Run


class Lanes:
    """The shard's lanes, over its registry of runs; `launch` starts a run that became active.

    A lane exists while it has an active or queued run and is dropped once both are gone.
    """

    def __init__(self, runs: dict[str, Run], launch: Callable[[Run], None]) -> None:
        self._runs = runs
        self._launch = launch
        self._lanes: dict[LaneKey, Lane] = {}

    def get(self, key: LaneKey) -> Lane | None:
        """The lane of (user, session), if it has one."""
        return self._lanes.get(key)

    def active_run(self, key: LaneKey) -> Run | None:
        """The run active in the lane of `key`, if any."""
        lane = self._lanes.get(key)
        return None if lane is None or lane.active is None else self._runs.get(lane.active)

    def admit(self, key: LaneKey, on_busy: str, max_queued: int) -> tuple[Lane, bool]:
        """The lane a new chat goes to and whether it is busy; `Busy` if the chat is refused."""
        lane = self._lanes.setdefault(key, Lane())
        busy = lane.active is not None
        if busy and on_busy == "reject":
            raise Busy(f"session {key[1]!r} has a run in progress")
        if busy and len(lane.queue) >= max_queued:
            raise Busy(f"session {key[1]!r} has too many queued runs")
        return lane, busy

    @staticmethod
    def reserve(lane: Lane, run_id: str, on_busy: str, busy: bool) -> None:
        """Take the lane (idle), queue behind it, or go first in its queue (`interrupt`)."""
        if busy and on_busy == "interrupt":
            lane.queue.appendleft(run_id)
        elif busy:
            lane.queue.append(run_id)
        else:
            lane.active = run_id

    def forget(self, lane: Lane, run: Run) -> None:
        """Undo a reservation (the turn was a duplicate or not stored): the run never existed."""
        self._runs.pop(run.run_id, None)
        if lane.active == run.run_id:
            lane.active = None
            self.advance(lane)
        elif run.run_id in lane.queue:
            lane.queue.remove(run.run_id)
        self._drop_if_empty(run.key, lane)

    def advance(self, lane: Lane) -> None:
        """Make the next known queued run active and launch it once it is stored."""
        while lane.active is None and lane.queue:
            run = self._runs.get(lane.queue.popleft())
            if run is None:
                continue
            lane.active = run.run_id
            if run.spec is not None:  # otherwise `chat` launches it once it is stored
                self._launch(run)

    def release(self, run: Run) -> None:
        """`run` ended: if it was its lane's active run, the next one goes; an empty lane goes."""
        lane = self._lanes.get(run.key)
        if lane is not None and lane.active == run.run_id:
            lane.active = None
            self.advance(lane)
            self._drop_if_empty(run.key, lane)

    def unqueue(self, run: Run) -> None:
        """Take a queued run out of its lane's queue (it was cancelled)."""
        lane = self._lanes.get(run.key)
        if lane is not None and run.run_id in lane.queue:
            lane.queue.remove(run.run_id)
            self._drop_if_empty(run.key, lane)

    def _drop_if_empty(self, key: LaneKey, lane: Lane) -> None:
        """Drop `lane` once it has neither an active nor a queued run."""
        if lane.active is None and not lane.queue and self._lanes.get(key) is lane:
            del self._lanes[key]

    def hold(self, run: Run) -> None:
        """A run found running on an agent (recovery): it holds its lane until it ends."""
        lane = self._lanes.setdefault(run.key, Lane())
        lane.active = lane.active or run.run_id

    def queued(self) -> int:
        """Runs waiting in all lanes."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    def __len__(self) -> int:
        return len(self._lanes)
