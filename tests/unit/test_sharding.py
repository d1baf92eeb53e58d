"""shard_for: stable across processes, in range, and even."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from actors.sharding import shard_for

USER_IDS = [f"user-{i}" for i in range(200)] + ["", "ü", "a@b.c", "x" * 128]


def _shards_in_subprocess(user_ids: list[str], shards: int, hash_seed: str) -> list[int]:
    script = (
        "import json, sys\n"
        "from actors.sharding import shard_for\n"
        "ids = json.load(sys.stdin)\n"
        f"print(json.dumps([shard_for(u, {shards}) for u in ids]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(user_ids),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    result: list[int] = json.loads(done.stdout)
    return result


def test_stable_across_processes_with_different_hash_seeds() -> None:
    here = [shard_for(u, 16) for u in USER_IDS]
    first = _shards_in_subprocess(USER_IDS, 16, "1")
    second = _shards_in_subprocess(USER_IDS, 16, "4242")
    assert first == here
    assert second == here
    # The ids are not all on one shard (otherwise "equal" proves little).
    assert len(set(here)) > 1


def test_stable_within_a_process() -> None:
    assert [shard_for(u, 7) for u in USER_IDS] == [shard_for(u, 7) for u in USER_IDS]


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 16, 256])
def test_in_range(shards: int) -> None:
    for user_id in USER_IDS:
        assert 0 <= shard_for(user_id, shards) < shards


def test_one_shard_maps_everything_to_zero() -> None:
    assert {shard_for(u, 1) for u in USER_IDS} == {0}


@pytest.mark.parametrize("shards", [4, 16])
def test_even_over_ten_thousand_ids(shards: int) -> None:
    counts = Counter(shard_for(f"user-{i}", shards) for i in range(10_000))
    mean = 10_000 / shards
    assert set(counts) == set(range(shards))
    for shard, count in counts.items():
        assert abs(count - mean) <= 0.15 * mean, (shard, count, mean)


@pytest.mark.parametrize("shards", [0, -1, -16])
def test_non_positive_shards_raise(shards: int) -> None:
    with pytest.raises(ValueError):
        shard_for("alice", shards)
