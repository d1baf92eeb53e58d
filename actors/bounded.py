"""An LRU map bounded by entry count and, optionally, by the bytes its values hold."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """Keeps the most recently used entries: at most `max_items`, and at most
    `max_bytes` of `size(value)` in total when both are given. The oldest go first."""

    def __init__(
        self,
        max_items: int,
        *,
        max_bytes: int | None = None,
        size: Callable[[V], int] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._size = size or (lambda _value: 0)
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.nbytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value of `key` (now the most recently used), or None."""
        entry = self._items.get(key)
        if entry is None:
            return None
        self._items.move_to_end(key)
        return entry[0]

    def touch(self, key: K) -> bool:
        """Mark `key` recently used; False if absent."""
        if key not in self._items:
            return False
        self._items.move_to_end(key)
        return True

    def put(self, key: K, value: V) -> None:
        """Store `value` under `key`, then drop the oldest entries beyond the bounds."""
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        nbytes = self._size(value)
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes
        while len(self._items) > self.max_items or (
            self.max_bytes is not None and self.nbytes > self.max_bytes and len(self._items) > 1
        ):
            _, (_, dropped) = self._items.popitem(last=False)
            self.nbytes -= dropped
            self.evicted += 1

    def clear(self) -> None:
        """Forget every entry."""
        self._items.clear()
        self.nbytes = 0
