"""TTLCache on a fake clock: hits, misses, expiry, LRU eviction and statistics."""

from __future__ import annotations

import pytest

from actors.ttl_cache import TTLCache

TTL = 10.0


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, max_size: int = 100) -> TTLCache[str, int]:
    return TTLCache(ttl_s=TTL, max_size=max_size, clock=clock)


def test_hit_returns_value_and_counts(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", 1)
    assert cache.get("a") == 1
    assert (cache.hits, cache.misses) == (1, 0)


def test_miss_returns_none_and_counts(clock: FakeClock) -> None:
    cache = make(clock)
    assert cache.get("nope") is None
    assert (cache.hits, cache.misses) == (0, 1)


def test_entry_is_live_just_before_ttl(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", 1)
    clock.now += TTL - 0.001
    assert cache.get("a") == 1


def test_entry_exactly_at_ttl_is_expired(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", 1)
    clock.now += TTL
    assert cache.get("a") is None
    assert cache.misses == 1
    assert cache.expired == 1
    assert "a" not in cache
    assert len(cache) == 0


def test_get_does_not_extend_lifetime(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", 1)
    clock.now += TTL / 2
    assert cache.get("a") == 1
    clock.now += TTL / 2
    assert cache.get("a") is None


def test_put_restarts_lifetime(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", 1)
    clock.now += TTL - 1
    cache.put("a", 2)
    clock.now += TTL - 1  # 2*TTL-2 after the first put, TTL-1 after the second
    assert cache.get("a") == 2
    clock.now += 1
    assert cache.get("a") is None


def test_invalidate(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", 1)
    assert cache.invalidate("a") is True
    assert cache.invalidate("a") is False
    assert cache.get("a") is None
    assert len(cache) == 0


def test_invalidate_of_falsy_value_reports_true(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("zero", 0)
    assert cache.invalidate("zero") is True


def test_cleanup_drops_expired_entries_and_counts_them(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("old1", 1)
    cache.put("old2", 2)
    clock.now += TTL / 2
    cache.put("young", 3)
    clock.now += TTL / 2  # old ones exactly at TTL, young at TTL/2
    assert cache.cleanup() == 2
    assert cache.expired == 2
    assert "young" in cache
    assert "old1" not in cache
    assert "old2" not in cache
    assert len(cache) == 1
    assert cache.cleanup() == 0
    assert cache.expired == 2


def test_cleanup_does_not_count_lookups(clock: FakeClock) -> None:
    cache = make(clock)
    cache.put("a", 1)
    clock.now += TTL
    cache.cleanup()
    assert (cache.hits, cache.misses) == (0, 0)


def test_lru_eviction_at_max_size(clock: FakeClock) -> None:
    cache = make(clock, max_size=3)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.put(key, value)
    cache.put("d", 4)
    assert len(cache) == 3
    assert "a" not in cache
    assert cache.evicted == 1
    assert [cache.get(k) for k in ("b", "c", "d")] == [2, 3, 4]


def test_get_marks_entry_recently_used(clock: FakeClock) -> None:
    cache = make(clock, max_size=3)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.put(key, value)
    assert cache.get("a") == 1  # now "b" is the least recently used
    cache.put("d", 4)
    assert "a" in cache
    assert "b" not in cache


def test_put_of_existing_key_marks_it_recently_used(clock: FakeClock) -> None:
    cache = make(clock, max_size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert "a" in cache
    assert "b" not in cache
    assert cache.evicted == 1


def test_hit_rate(clock: FakeClock) -> None:
    cache = make(clock)
    assert cache.hit_rate == 0.0
    cache.put("a", 1)
    cache.get("a")
    cache.get("a")
    cache.get("a")
    cache.get("b")
    assert cache.hit_rate == pytest.approx(0.75)


def test_stats_keys_and_values(clock: FakeClock) -> None:
    cache = make(clock, max_size=1)
    cache.put("a", 1)
    cache.get("a")
    cache.get("x")
    cache.put("b", 2)  # evicts "a"
    clock.now += TTL
    cache.get("b")  # expired
    stats = cache.stats()
    assert {"size", "hits", "misses", "hit_rate", "expired", "ttl_s"} <= stats.keys()
    assert stats == {
        "size": 0,
        "hits": 1,
        "misses": 2,
        "hit_rate": round(1 / 3, 4),
        "expired": 1,
        "evicted": 1,
        "stale_loads": 0,
        "ttl_s": TTL,
    }


@pytest.mark.parametrize(("ttl_s", "max_size"), [(0, 1), (-1, 1), (1, 0), (1, -5)])
def test_non_positive_limits_are_rejected(ttl_s: float, max_size: int) -> None:
    with pytest.raises(ValueError):
        TTLCache(ttl_s=ttl_s, max_size=max_size)


def test_put_if_fresh_stores_a_load_no_invalidation_overtook(clock: FakeClock) -> None:
    cache = make(clock)
    ticket = cache.ticket()
    cache.invalidate("other")  # another key's invalidation does not matter
    assert cache.put_if_fresh("a", 1, ticket)
    assert cache.get("a") == 1


def test_put_if_fresh_refuses_a_load_begun_before_an_invalidation(clock: FakeClock) -> None:
    cache = make(clock)
    ticket = cache.ticket()
    cache.invalidate("a")  # lands while the load is in flight
    assert not cache.put_if_fresh("a", 1, ticket)
    assert "a" not in cache and cache.stats()["stale_loads"] == 1
    assert cache.put_if_fresh("a", 2, cache.ticket())  # a load begun after it is cached


def test_put_if_fresh_refuses_when_the_invalidation_was_forgotten(clock: FakeClock) -> None:
    from actors.ttl_cache import TOMBSTONES_KEPT

    cache = make(clock)
    ticket = cache.ticket()
    cache.invalidate("a")
    for i in range(TOMBSTONES_KEPT):  # push the tombstone of "a" out
        cache.invalidate(f"k{i}")
    assert not cache.put_if_fresh("a", 1, ticket)  # unsure, so not cached
    assert cache.put_if_fresh("a", 1, cache.ticket())
