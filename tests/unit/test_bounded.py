"""BoundedLRU: the most recently used entries, within a count and a byte budget."""

from __future__ import annotations

import pytest

from actors.bounded import BoundedLRU


def test_the_least_recently_used_entry_goes_first() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.touch("a")
    lru.put("c", 3)
    assert "b" not in lru and lru.get("a") == 1 and lru.get("c") == 3
    assert len(lru) == 2 and lru.evicted == 1
    assert not lru.touch("b") and lru.get("b") is None


def test_bytes_bound_evicts_oldest_and_keeps_the_newest() -> None:
    lru: BoundedLRU[str, str] = BoundedLRU(100, max_bytes=10, size=len)
    lru.put("a", "xxxx")
    lru.put("b", "yyyy")
    assert lru.nbytes == 8
    lru.put("c", "zzzz")
    assert "a" not in lru and lru.nbytes == 8
    lru.put("b", "y")  # replacing a value counts its new size only
    assert lru.nbytes == 5
    lru.put("big", "w" * 50)  # larger than the budget alone: kept, everything else goes
    assert [k for k in ("b", "c", "big") if k in lru] == ["big"] and lru.nbytes == 50
    lru.clear()
    assert len(lru) == 0 and lru.nbytes == 0


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedLRU(0)
