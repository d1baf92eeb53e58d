"""Actor counts: sized from the cluster's CPUs when unset, explicit ones win, running ones rule."""

from __future__ import annotations

import pytest

from actors.errors import ConfigurationError
from actors.factory import counts_in_use
from config import Settings


@pytest.mark.parametrize(
    ("cpus", "shards", "agents"),
    [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 4), (8, 4, 8), (16, 8, 16), (64, 16, 32), (0.5, 1, 1)],
)
def test_unset_counts_are_sized_from_cpus(cpus: float, shards: int, agents: int) -> None:
    sized = Settings().sized(cpus)
    assert (sized.shard_count, sized.agent_actor_count) == (shards, agents)


def test_explicit_counts_win_over_sizing() -> None:
    sized = Settings(shards=4, agent_actors=3).sized(2)
    assert (sized.shards, sized.agent_actors) == (4, 3)
    assert Settings(shards=5).sized(2).agent_actors == 2


def test_counts_must_be_sized_before_use() -> None:
    with pytest.raises(ValueError, match="sized"):
        _ = Settings().shard_count
    with pytest.raises(ValueError, match="sized"):
        _ = Settings().agent_actor_count


def test_nothing_running_sizes_for_the_cluster() -> None:
    sized = counts_in_use(Settings(), running=(0, 0), cpus=8)
    assert (sized.shards, sized.agent_actors) == (4, 8)


def test_running_actors_decide_the_counts_of_a_later_replica() -> None:
    # The cluster grew since the actors were created: the counts in use stay.
    sized = counts_in_use(Settings(), running=(1, 2), cpus=64)
    assert (sized.shards, sized.agent_actors) == (1, 2)
    same = counts_in_use(Settings(shards=1, agent_actors=2), running=(1, 2), cpus=64)
    assert (same.shards, same.agent_actors) == (1, 2)


@pytest.mark.parametrize(
    ("settings", "variable"),
    [(Settings(shards=4), "RAYCHAT_SHARDS"), (Settings(agent_actors=3), "RAYCHAT_AGENT_ACTORS")],
)
def test_a_different_explicit_count_than_running_is_refused(
    settings: Settings, variable: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable}=.*but . run"):
        counts_in_use(settings, running=(2, 2), cpus=2)
