"""TokenBucket on a fake clock."""

from __future__ import annotations

import pytest

from actors.rate_limit import TokenBucket, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 3, clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # the next token in half a second
    clock.now += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_refill_is_capped_at_the_burst_and_full_says_so() -> None:
    clock = Clock()
    bucket = TokenBucket(1.0, 2, clock)
    bucket.take()
    assert not bucket.full
    clock.now += 100
    assert bucket.full
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_bad_parameters_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_retry_after_is_rounded_up_and_never_zero() -> None:
    assert retry_after(0.0001) == 0.001  # round() would have said 0.0: "retry now"
    assert retry_after(0.0012) == 0.002
    assert retry_after(0.25) == 0.25
