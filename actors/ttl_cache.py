"""A bounded TTL cache on an injected clock, with the statistics PROTOCOL.md reports.

Pure logic: the clock is a parameter so expiry is tested with a fake clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

TOMBSTONES_KEPT = 4096  # keys whose latest invalidation is remembered for `put_if_fresh`

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Least-recently-used map whose entries expire `ttl_s` after they were stored."""

    def __init__(
        self, *, ttl_s: float, max_size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0 or max_size <= 0:
            raise ValueError("ttl_s and max_size must be positive")
        self.ttl_s = ttl_s
        self.max_size = max_size
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.expired = 0
        self.evicted = 0
        # Invalidations, for `put_if_fresh`: a global counter, the latest per key (the
        # newest `TOMBSTONES_KEPT`), and the newest one forgotten (older loads are refused).
        self._version = 0
        self._tombstones: OrderedDict[K, int] = OrderedDict()
        self._forgotten = 0
        self.stale_loads = 0

    def get(self, key: K) -> V | None:
        """The live value for `key`, counting a hit, or None counting a miss."""
        entry = self._data.get(key)
        if entry is not None:
            stored_at, value = entry
            if self._clock() - stored_at < self.ttl_s:
                self._data.move_to_end(key)
                self.hits += 1
                return value
            del self._data[key]
            self.expired += 1
        self.misses += 1
        return None

    def put(self, key: K, value: V) -> None:
        """Store `value`, restarting its lifetime and evicting the oldest entry when full."""
        self._data[key] = (self._clock(), value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)
            self.evicted += 1

    def invalidate(self, key: K) -> bool:
        """Forget `key`; True if it was cached. A load begun before it will not be cached."""
        self._version += 1
        self._tombstones.pop(key, None)
        self._tombstones[key] = self._version
        while len(self._tombstones) > TOMBSTONES_KEPT:
            _, version = self._tombstones.popitem(last=False)
            self._forgotten = max(self._forgotten, version)
        return self._data.pop(key, None) is not None

    def ticket(self) -> int:
        """Taken before a load: `put_if_fresh` stores its value unless invalidated since."""
        return self._version

    def put_if_fresh(self, key: K, value: V, ticket: int) -> bool:
        """`put` a value loaded since `ticket`, unless `key` was invalidated meanwhile.

        True if stored. When the invalidation is too old to be told apart (more
        than `TOMBSTONES_KEPT` keys invalidated since), the value is not stored.
        """
        if ticket < self._forgotten or self._tombstones.get(key, 0) > ticket:
            self.stale_loads += 1
            return False
        self.put(key, value)
        return True

    def cleanup(self) -> int:
        """Drop every expired entry; return how many were dropped."""
        now = self._clock()
        dead = [k for k, (stored_at, _) in self._data.items() if now - stored_at >= self.ttl_s]
        for key in dead:
            del self._data[key]
        self.expired += len(dead)
        return len(dead)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> dict[str, float | int]:
        """Size, hits, misses, hit rate, expired and TTL, as PROTOCOL.md names them."""
        return {
            "size": len(self._data),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
            "expired": self.expired,
            "evicted": self.evicted,
            "stale_loads": self.stale_loads,
            "ttl_s": self.ttl_s,
        }
