"""Actor counts: sized from the cluster's CPUs when unset, explicit ones win, running ones rule."""

from __future__ import annotations

import pytest

from actors.errors import ConfigurationError
from actors.factory import check_cluster_safe, counts_in_use, placement_node
from config import Settings

PG = "postgresql+asyncpg://raychat@db.internal/raychat"


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
    sized = counts_in_use(Settings(), running=(0, 0, 0), cpus=8)
    assert (sized.shards, sized.agent_actors) == (4, 8)


def test_running_actors_decide_the_counts_of_a_later_replica() -> None:
    # The cluster grew since the actors were created: the counts in use stay.
    sized = counts_in_use(Settings(), running=(1, 2, 1), cpus=64)
    assert (sized.shards, sized.agent_actors) == (1, 2)
    same = counts_in_use(Settings(shards=1, agent_actors=2), running=(1, 2, 1), cpus=64)
    assert (same.shards, same.agent_actors) == (1, 2)


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (Settings(shards=4), "RAYCHAT_SHARDS"),
        (Settings(agent_actors=3), "RAYCHAT_AGENT_ACTORS"),
        (Settings(database_url=PG, persistence_writers=3), "RAYCHAT_PERSISTENCE_WRITERS"),
    ],
)
def test_a_different_explicit_count_than_running_is_refused(
    settings: Settings, variable: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable}=.*but . run"):
        counts_in_use(settings, running=(2, 2, 1), cpus=2)


@pytest.mark.parametrize(("cpus", "writers"), [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 8)])
def test_postgresql_gets_a_writer_per_four_cpus_and_sqlite_one(cpus: float, writers: int) -> None:
    assert Settings(database_url=PG).sized(cpus).persistence_writer_count == writers
    assert Settings().sized(cpus).persistence_writer_count == 1


def test_sqlite_refuses_several_writers() -> None:
    with pytest.raises(ValueError, match="RAYCHAT_PERSISTENCE_WRITERS > 1 needs PostgreSQL"):
        Settings(persistence_writers=2)
    assert Settings(database_url=PG, persistence_writers=2).persistence_writer_count == 2


def test_running_writers_decide_the_writer_count() -> None:
    sized = counts_in_use(Settings(database_url=PG), running=(2, 2, 3), cpus=64)
    assert sized.persistence_writer_count == 3


SECRET = {"secret": "a-secret-shared-by-every-node"}


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),  # generated secret, relative SQLite: fine on one node
        Settings(database_url=PG, **SECRET),
    ],
)
def test_one_node_accepts_any_settings_and_a_cluster_safe_ones(settings: Settings) -> None:
    check_cluster_safe(settings, nodes=1)
    if settings.secret is not None:
        check_cluster_safe(settings, nodes=3)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (Settings(database_url=PG), "RAYCHAT_SECRET is unset"),
        (Settings(**SECRET), "SQLite at a relative path"),
        (Settings(database_url="sqlite+aiosqlite:///data/x.db", **SECRET), "relative path"),
    ],
)
def test_a_cluster_refuses_a_generated_secret_or_a_relative_sqlite_file(
    settings: Settings, complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"cluster of 2 nodes: .*{complaint}"):
        check_cluster_safe(settings, nodes=2)


def test_a_cluster_accepts_an_absolute_sqlite_file_on_the_head_node() -> None:
    check_cluster_safe(Settings(database_url="sqlite+aiosqlite:////srv/raychat.db", **SECRET), 2)


def test_each_kind_is_spread_round_robin_over_the_nodes() -> None:
    nodes = ["head", "w1", "w2"]
    assert [placement_node("shard", i, nodes) for i in range(4)] == ["head", "w1", "w2", "head"]
    assert [placement_node("agent", i, nodes) for i in range(3)] == ["w1", "w2", "head"]
    writers = [placement_node("persistence", i, nodes[:2]) for i in range(2)]
    assert writers == ["head", "w1"]
    assert {placement_node(kind, 0, ["only"]) for kind in ("shard", "agent")} == {"only"}
    with pytest.raises(ValueError):
        placement_node("shard", 0, [])
