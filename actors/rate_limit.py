"""Token buckets on an injected clock (pure logic)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up; one token per action."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate_per_s")

    def __init__(
        self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def take(self) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one is available."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate_per_s

    @property
    def full(self) -> bool:
        """True when the bucket has refilled completely (it can be forgotten)."""
        self._refill()
        return self._tokens >= self.burst


def retry_after(wait_s: float) -> float:
    """A refusal's `retry_after`: the wait in seconds, rounded up to the millisecond (> 0)."""
    return max(0.001, math.ceil(wait_s * 1000) / 1000)
