"""Small, bounded statistics helpers shared by the actors."""

from __future__ import annotations

import math
from collections import deque


class LatencyWindow:
    """The last `size` samples of a latency, in milliseconds, with percentiles."""

    def __init__(self, size: int = 10_000) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        """Record one sample."""
        self._samples.append(ms)

    def samples(self) -> list[float]:
        """A copy of the recorded samples (to merge windows of several actors)."""
        return list(self._samples)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 (nearest rank) of `samples`, 0.0 when there are none."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered) - 1e-9) - 1))
        return round(float(ordered[index]), 2)

    return {"p50": rank(0.50), "p99": rank(0.99)}
