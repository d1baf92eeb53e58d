"""Ingress replicas' counters, reported to the shards, merged into one service-wide view.

Every `agent_check_s` each ingress replica sends its counters (sockets, frames,
closes, ...) with the `ensure_ready` call it makes to every shard anyway. A
shard keeps the latest report of each replica heard from within `live_s`
(`ReplicaReports`); the replica answering `/api/websocket/performance/stats`
merges those of every shard with its own live counters (`merge_ingress`).
Pure logic: the clock is a parameter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Kept from the answering replica: the same on every replica of the service.
# (`seq` numbers a replica's reports.)
OWN_KEYS = ("replica_id", "seq", "proxy", "shards", "agent_actors", "persistence_writers")
# The largest over the replicas; every other number adds up.
MAX_KEYS = ("outbound_queued_max",)
REPLICAS_KEPT = 1024  # a bound on what a shard keeps, far above any real replica count


class ReplicaReports:
    """The latest report of each ingress replica heard from within `live_s`."""

    def __init__(self, live_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._live_s = live_s
        self._clock = clock
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}

    def put(self, report: dict[str, Any]) -> None:
        """Keep `report` (it names its `replica_id`) as that replica's latest."""
        now = self._clock()
        self._reports.pop(report["replica_id"], None)
        self._reports[report["replica_id"]] = (now, report)  # newest last
        while self._reports:
            oldest = next(iter(self._reports))
            at, _ = self._reports[oldest]
            if now - at < self._live_s and len(self._reports) <= REPLICAS_KEPT:
                break
            del self._reports[oldest]

    def live(self) -> dict[str, dict[str, Any]]:
        """Replica id -> latest report, of the replicas heard from within `live_s`."""
        now = self._clock()
        return {
            replica_id: report
            for replica_id, (at, report) in self._reports.items()
            if now - at < self._live_s
        }


def merge_ingress(
    own: dict[str, Any], reported: Iterable[Mapping[str, dict[str, Any]]]
) -> dict[str, Any]:
    """The ingress section for the whole service: `own` plus every other live replica's.

    `reported` holds each shard's live reports; a replica's newest (highest
    `seq`) counts. Numbers add up over the replicas (`users` counts a user once
    per replica it is connected to), `MAX_KEYS` take the largest, `OWN_KEYS`
    are the answering replica's. `replica` is the answering replica's own
    counters and `replicas` every live replica's, by id.
    """
    latest: dict[str, dict[str, Any]] = {}
    for reports in reported:
        for replica_id, report in reports.items():
            known = latest.get(replica_id)
            if known is None or report.get("seq", 0) > known.get("seq", 0):
                latest[replica_id] = report
    latest[own["replica_id"]] = own
    replicas = [latest[replica_id] for replica_id in sorted(latest)]
    merged: dict[str, Any] = {}
    for key, value in own.items():
        if key in OWN_KEYS or not _number(value):
            merged[key] = value
            continue
        values = [r[key] for r in replicas if _number(r.get(key))]
        merged[key] = max(values) if key in MAX_KEYS else sum(values)
    merged["replica_count"] = len(replicas)
    merged["replica"] = own
    merged["replicas"] = replicas
    return merged


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
