"""Forgetting what a shard no longer needs: runs ended long ago, expired contexts, full buckets."""

from __future__ import annotations

from collections.abc import Callable

from actors.records import UserContext
from actors.shard.admission import RateLimits
from actors.shard.model import Run
from actors.ttl_cache import TTLCache


class Housekeeping:
    """Drops ended runs after `grace_s`; at most every `interval_s` when done on the way.

    Ended runs are also bounded by count: past `ended_max`, the run that ended
    first is forgotten at once (a forgotten run is answered from the store).
    """

    def __init__(
        self,
        *,
        runs: dict[str, Run],
        contexts: TTLCache[str, UserContext],
        rate_limits: RateLimits,
        grace_s: float,
        clock: Callable[[], float],
        ended_max: int = 50_000,
    ) -> None:
        self._runs = runs
        self._contexts = contexts
        self._rate_limits = rate_limits
        self._grace_s = grace_s
        self._clock = clock
        self._interval_s = max(0.5, min(10.0, grace_s / 2))
        self._last = clock()
        self._ended_max = ended_max
        self._ended: dict[str, None] = {}  # ended runs' ids, in the order they ended
        self.evicted = 0  # ended runs forgotten before their grace ran out (the count bound)

    def ended(self, run: Run) -> None:
        """`run` has ended: keep only what answers for it, and forget the oldest past the bound.

        What started it (its text, context, history, prelude and listeners) is
        dropped, and its starting task once done (`launch` lets go of one still
        running when it finishes); its id, owner, session, agent, status and end
        time stay.
        """
        if run.task is not None and run.task.done():
            run.task = None
        run.spec = None
        run.context = None
        run.history = None
        run.prelude = []
        run.subscribers = {}
        self._ended[run.run_id] = None
        while len(self._ended) > self._ended_max:
            oldest = next(iter(self._ended))
            del self._ended[oldest]
            if self._forget(oldest):
                self.evicted += 1

    def _forget(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.ended_at is None:
            return False
        del self._runs[run_id]
        return True

    def maybe(self) -> None:
        """Clean up if `interval_s` has passed since the last time (called with each chat)."""
        now = self._clock()
        if now - self._last >= self._interval_s:
            self._last = now
            self.drop_finished_runs(now)
            self._contexts.cleanup()
            self._rate_limits.prune()

    def drop_finished_runs(self, now: float) -> int:
        """Forget the runs that ended at least `grace_s` before `now`; how many."""
        dropped = 0
        while self._ended:  # oldest first: stop at the first one still in its grace
            run_id = next(iter(self._ended))
            run = self._runs.get(run_id)
            if run is not None and run.ended_at is not None and now - run.ended_at < self._grace_s:
                break
            del self._ended[run_id]
            dropped += self._forget(run_id)
        return dropped

    def cleanup(self) -> dict[str, int]:
        """Drop expired contexts and the records of runs finished long ago, now."""
        runs = self.drop_finished_runs(self._clock())
        return {"contexts": self._contexts.cleanup(), "runs": runs}
