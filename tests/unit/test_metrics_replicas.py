"""Service-wide ingress statistics: replica reports kept by the shards, merged per answer."""

from __future__ import annotations

from typing import Any

from actors.replica_reports import REPLICAS_KEPT, ReplicaReports, merge_ingress


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def report(replica_id: str, seq: int = 1, **counts: Any) -> dict[str, Any]:
    return {
        "replica_id": replica_id,
        "seq": seq,
        "proxy": "haproxy",
        "shards": 2,
        "sockets": 0,
        "opened": 0,
        "outbound_queued_max": 0,
        **counts,
    }


def test_a_shard_keeps_the_latest_report_of_each_live_replica() -> None:
    clock = Clock()
    reports = ReplicaReports(live_s=5.0, clock=clock)
    reports.put(report("a", seq=1, sockets=1))
    reports.put(report("b", seq=1, sockets=4))
    clock.now += 3
    reports.put(report("a", seq=2, sockets=2))
    assert {rid: r["sockets"] for rid, r in reports.live().items()} == {"a": 2, "b": 4}
    clock.now += 2.5  # b was last heard from 5.5 s ago: gone (stopped, or lost with its node)
    assert list(reports.live()) == ["a"]
    reports.put(report("c"))
    assert sorted(reports.live()) == ["a", "c"]


def test_a_shard_keeps_a_bounded_number_of_replicas() -> None:
    reports = ReplicaReports(live_s=5.0, clock=Clock())
    for index in range(REPLICAS_KEPT + 10):
        reports.put(report(f"r{index}"))
    live = reports.live()
    assert len(live) == REPLICAS_KEPT and f"r{REPLICAS_KEPT + 9}" in live and "r0" not in live


def test_merge_adds_every_replica_to_this_ones_own_live_counts() -> None:
    own = report("me", seq=7, sockets=3, opened=10, outbound_queued_max=2, frames=5)
    from_shard_0 = {
        "other": report("other", seq=4, sockets=2, opened=6, outbound_queued_max=9, frames=1),
        "me": report("me", seq=6, sockets=99, opened=99),  # older than the live counts
    }
    from_shard_1 = {
        "other": report("other", seq=3, sockets=50, opened=50),  # an older report
        "third": report("third", seq=1, sockets=1, opened=1, frames=2),
    }
    merged = merge_ingress(own, [from_shard_0, from_shard_1])
    assert merged["sockets"] == 3 + 2 + 1
    assert merged["opened"] == 10 + 6 + 1
    assert merged["frames"] == 5 + 1 + 2
    assert merged["outbound_queued_max"] == 9  # the largest, not a sum
    assert (merged["replica_id"], merged["seq"], merged["proxy"], merged["shards"]) == (
        "me",
        7,
        "haproxy",
        2,
    )
    assert merged["replica_count"] == 3
    assert merged["replica"] == own
    assert [r["replica_id"] for r in merged["replicas"]] == ["me", "other", "third"]


def test_merge_with_no_other_replica_is_this_replicas_counts() -> None:
    own = report("solo", sockets=2, opened=3)
    merged = merge_ingress(own, [{}, {}])
    assert {key: merged[key] for key in own} == own
    assert merged["replica_count"] == 1 and merged["replicas"] == [own]
