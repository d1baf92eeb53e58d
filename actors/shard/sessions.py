"""The session cache: each (user, session)'s recent conversation, used as model input."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from actors.shard.model import History, LaneKey


class SessionCache:
    """Recent messages per (user, session), least recently used dropped past `max_size`."""

    def __init__(self, max_size: int, history_messages: int) -> None:
        self._max_size = max_size
        self._limit = history_messages
        self._histories: OrderedDict[LaneKey, History] = OrderedDict()
        self.hits = 0
        self.misses = 0

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
        self._histories.setdefault((user_id, session_id), history)
        while len(self._histories) > self._max_size:
            self._histories.popitem(last=False)

    def remember_turn(self, user_id: str, session_id: str, user_text: str, reply: str) -> None:
        """Append a finished turn to the session's cached history, if it is cached."""
        history = self._histories.get((user_id, session_id))
        if history is None:
            return
        history.append({"role": "user", "content": user_text})
        if reply:
            history.append({"role": "assistant", "content": reply})
        del history[: max(0, len(history) - self._limit)]

    def __len__(self) -> int:
        return len(self._histories)

    def stats(self) -> dict[str, Any]:
        """Size, hits, misses and hit rate."""
        total = self.hits + self.misses
        return {
            "size": len(self._histories),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / total, 4) if total else 0.0,
        }
