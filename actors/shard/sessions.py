"""The session cache: each (user, session)'s recent conversation, used as model input."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from actors.shard.model import History, LaneKey


def history_bytes(history: History) -> int:
    """The UTF-8 size of a history's text (roles and contents)."""
    return sum(len(k) + len(v.encode()) for message in history for k, v in message.items())


class SessionCache:
    """Recent messages per (user, session), bounded by count (`max_size`) and text bytes.

    The least recently used history goes first once either bound is passed.
    """

    def __init__(self, max_size: int, history_messages: int, max_bytes: int = 64 << 20) -> None:
        self._max_size = max_size
        self._max_bytes = max_bytes
        self._limit = history_messages
        self._histories: OrderedDict[LaneKey, History] = OrderedDict()
        self._sizes: dict[LaneKey, int] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    def get(self, user_id: str, session_id: str) -> History | None:
        """A copy of the session's cached history (counting a hit), or None (a miss)."""
        key = (user_id, session_id)
        cached = self._histories.get(key)
        if cached is None:
            self.misses += 1
            return None
        self.hits += 1
        self._histories.move_to_end(key)
        return list(cached)

    def put(self, user_id: str, session_id: str, history: History) -> None:
        """Cache a loaded history unless one is cached already."""
        key = (user_id, session_id)
        if key in self._histories:
            return
        self._histories[key] = history
        self._resized(key)

    def remember_turn(self, user_id: str, session_id: str, user_text: str, reply: str) -> None:
        """Append a finished turn to the session's cached history, if it is cached."""
        key = (user_id, session_id)
        history = self._histories.get(key)
        if history is None:
            return
        history.append({"role": "user", "content": user_text})
        if reply:
            history.append({"role": "assistant", "content": reply})
        del history[: max(0, len(history) - self._limit)]
        self._resized(key)

    def _resized(self, key: LaneKey) -> None:
        """Account the new size of `key`'s history, then evict down to both bounds."""
        size = history_bytes(self._histories[key])
        self.bytes += size - self._sizes.get(key, 0)
        self._sizes[key] = size
        while self._histories and (
            len(self._histories) > self._max_size or self.bytes > self._max_bytes
        ):
            oldest, _ = self._histories.popitem(last=False)
            self.bytes -= self._sizes.pop(oldest)
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._histories)

    def stats(self) -> dict[str, Any]:
        """Size (entries and bytes), hits, misses, hit rate and evictions."""
        total = self.hits + self.misses
        return {
            "size": len(self._histories),
            "bytes": self.bytes,
            "max_bytes": self._max_bytes,
            "evicted": self.evicted,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / total, 4) if total else 0.0,
        }
