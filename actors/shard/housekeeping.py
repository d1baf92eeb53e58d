"""Forgetting what a shard no longer needs: runs ended long ago, expired contexts, full buckets."""

from __future__ import annotations

from collections.abc import Callable

from actors.records import UserContext
from actors.shard.admission import RateLimits
from actors.shard.model import Run
from actors.ttl_cache import TTLCache


class Housekeeping:
    """Drops ended runs after `grace_s`; at most every `interval_s` when done on the way."""

    def __init__(
        self,
        *,
        runs: dict[str, Run],
        contexts: TTLCache[str, UserContext],
        rate_limits: RateLimits,
        grace_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._runs = runs
        self._contexts = contexts
        self._rate_limits = rate_limits
        self._grace_s = grace_s
        self._clock = clock
        self._interval_s = max(0.5, min(10.0, grace_s / 2))
        self._last = clock()

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
        old = [
            run_id
            for run_id, run in self._runs.items()
            if run.ended_at is not None and now - run.ended_at >= self._grace_s
        ]
        for run_id in old:
            del self._runs[run_id]
        return len(old)

    def cleanup(self) -> dict[str, int]:
        """Drop expired contexts and the records of runs finished long ago, now."""
        runs = self.drop_finished_runs(self._clock())
        return {"contexts": self._contexts.cleanup(), "runs": runs}
