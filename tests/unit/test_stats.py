"""percentiles (nearest rank) and LatencyWindow."""

from __future__ import annotations

import random

import pytest

from actors.stats import LatencyWindow, percentiles


def test_empty_gives_zeros() -> None:
    assert percentiles([]) == {"p50": 0.0, "p99": 0.0}


def test_single_sample() -> None:
    assert percentiles([42.0]) == {"p50": 42.0, "p99": 42.0}


def test_one_to_hundred() -> None:
    assert percentiles([float(i) for i in range(1, 101)]) == {"p50": 50.0, "p99": 99.0}


def test_one_to_ten_uses_nearest_rank() -> None:
    # rank = ceil(q * n): p50 -> 5th, p99 -> ceil(9.9) = 10th.
    assert percentiles([float(i) for i in range(1, 11)]) == {"p50": 5.0, "p99": 10.0}


def test_two_samples() -> None:
    assert percentiles([10.0, 20.0]) == {"p50": 10.0, "p99": 20.0}


def test_order_of_samples_does_not_matter() -> None:
    samples = [float(i) for i in range(1, 201)]
    shuffled = samples[:]
    random.Random(7).shuffle(shuffled)
    assert percentiles(shuffled) == percentiles(samples) == {"p50": 100.0, "p99": 198.0}


def test_input_is_not_modified() -> None:
    samples = [3.0, 1.0, 2.0]
    percentiles(samples)
    assert samples == [3.0, 1.0, 2.0]


def test_values_are_rounded_to_two_decimals() -> None:
    assert percentiles([1.23456]) == {"p50": 1.23, "p99": 1.23}


def test_result_is_always_a_sample() -> None:
    samples = [random.Random(i).uniform(0, 1000) for i in range(37)]
    result = percentiles(samples)
    rounded = {round(s, 2) for s in samples}
    assert result["p50"] in rounded
    assert result["p99"] in rounded
    assert result["p50"] <= result["p99"]


def test_latency_window_keeps_the_last_samples() -> None:
    window = LatencyWindow(size=3)
    for ms in (1.0, 2.0, 3.0, 4.0):
        window.add(ms)
    assert window.samples() == [2.0, 3.0, 4.0]


def test_latency_window_samples_is_a_copy() -> None:
    window = LatencyWindow()
    window.add(1.0)
    window.samples().append(99.0)
    assert window.samples() == [1.0]


@pytest.mark.parametrize("n", [1, 99, 100, 101, 1000])
def test_p99_is_at_least_p50(n: int) -> None:
    result = percentiles([float(i) for i in range(n)])
    assert result["p50"] <= result["p99"]
