"""The metrics table, the record calls, the shard's count export and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors import metrics
from actors.metrics import METRICS, SPECS, CountExporter, MetricSpec

ROOT = Path(__file__).resolve().parents[2]
# Ids of users, sessions, runs, sockets or replicas have no bound: never a label.
UNBOUNDED = {"user", "user_id", "session", "session_id", "run_id", "replica", "replica_id"}


@dataclass
class FakeMetric:
    """Records what each call recorded, as (value, tags)."""

    spec: MetricSpec
    calls: list[tuple[str, float, dict[str, str]]] = field(default_factory=list)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("inc", value, tags or {}))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("set", value, tags or {}))

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("observe", value, tags or {}))


@pytest.fixture
def recorded() -> Any:
    """Record into fakes; yields name -> list of calls."""
    made: dict[str, FakeMetric] = {}

    def factory(spec: MetricSpec) -> FakeMetric:
        made[spec.name] = FakeMetric(spec)
        return made[spec.name]

    with metrics.recording_to(factory):
        yield lambda name: made[name].calls if name in made else []


def test_the_table_is_well_formed() -> None:
    assert len(SPECS) == len(METRICS)
    for spec in METRICS:
        assert re.fullmatch(r"raychat_[a-z_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds"), spec.name
            assert list(spec.boundaries) == sorted(set(spec.boundaries)) and spec.boundaries
        else:
            assert spec.boundaries == ()
        assert not set(spec.tags) & UNBOUNDED, spec
        assert spec.description


@pytest.mark.parametrize("spec", METRICS, ids=lambda spec: spec.name)
def test_ray_accepts_each_metric(spec: MetricSpec) -> None:
    """Ray validates names, tag keys and boundaries when the object is made (no cluster)."""
    made = metrics.ray_metric(spec)
    assert made._name == spec.name


def test_the_readme_documents_every_metric_with_its_labels() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`ray_(raychat_[a-z_]+)`", cells[0]) if line.startswith("|") else None
        if match:
            labels = re.findall(r"`([a-z_]+)`", cells[2])
            rows[match.group(1)] = (cells[1], tuple(labels))
    assert rows == {spec.name: (spec.kind, spec.tags) for spec in METRICS}


def test_a_run_records_status_turn_time_ttft_and_failure_code(recorded: Any) -> None:
    metrics.run_ended("completed", "assistant", 1.5, 0.2, None)
    metrics.run_ended("failed", "assistant", 0.7, None, "timeout")
    assert recorded("raychat_runs_total") == [
        ("inc", 1.0, {"status": "completed"}),
        ("inc", 1.0, {"status": "failed"}),
    ]
    assert recorded("raychat_turn_seconds") == [
        ("observe", 1.5, {"status": "completed"}),
        ("observe", 0.7, {"status": "failed"}),
    ]
    assert recorded("raychat_ttft_seconds") == [("observe", 0.2, {"agent": "assistant"})]
    assert recorded("raychat_run_failures_total") == [("inc", 1.0, {"code": "timeout"})]


def test_socket_calls_count_and_set_the_open_gauge(recorded: Any) -> None:
    metrics.socket_opened(3)
    metrics.socket_closed(1000, 2)
    metrics.socket_closed(4401)
    metrics.socket_closed(4123)  # a client's own application code
    assert recorded("raychat_sockets_opened_total") == [("inc", 1.0, {})]
    assert recorded("raychat_open_sockets") == [("set", 3, {}), ("set", 2, {})]
    codes = [tags["code"] for _, _, tags in recorded("raychat_socket_closes_total")]
    assert codes == ["1000", "4401", "other"]


def test_errors_resumes_cancels_and_commits(recorded: Any) -> None:
    metrics.error_sent("bad_json")
    metrics.resumed()
    metrics.cancelled()
    metrics.delta_gap(-0.001)  # a clock step back records 0, never a negative gap
    metrics.committed(0.004, [0.01, 0.02], queue_depth=5)
    assert recorded("raychat_errors_total") == [("inc", 1.0, {"code": "bad_json"})]
    assert recorded("raychat_resumes_total") == [("inc", 1.0, {})]
    assert recorded("raychat_cancels_total") == [("inc", 1.0, {})]
    assert recorded("raychat_delta_gap_seconds") == [("observe", 0.0, {})]
    assert recorded("raychat_persistence_commit_seconds") == [("observe", 0.004, {})]
    assert [value for _, value, _ in recorded("raychat_persistence_lag_seconds")] == [0.01, 0.02]
    assert recorded("raychat_persistence_queue_depth") == [("set", 5, {})]


def test_an_unknown_name_is_refused(recorded: Any) -> None:
    with pytest.raises(KeyError):
        metrics._inc("raychat_not_documented_total")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_count_exporter_adds_what_each_total_grew_at_most_once_per_interval(
    recorded: Any,
) -> None:
    clock = Clock()
    exporter = CountExporter(interval_s=1.0, clock=clock)
    assert exporter.due()
    assert not exporter.due()  # within the interval
    clock.now += 1.0
    assert exporter.due()

    def export(hits: int, misses: int) -> None:
        metrics.export_shard(
            exporter, queued=hits % 3, caches={"session": (hits, misses)}, lost=1, drained=0
        )

    export(5, 2)
    export(9, 2)  # misses did not grow: no call at all
    export(4, 3)  # hits went down (a restarted count): counts from zero
    hits = [
        value
        for _, value, tags in recorded("raychat_cache_lookups_total")
        if tags == {"cache": "session", "result": "hit"}
    ]
    misses = [
        value
        for _, value, tags in recorded("raychat_cache_lookups_total")
        if tags["result"] == "miss"
    ]
    assert hits == [5, 4, 4] and misses == [2, 1]
    assert recorded("raychat_runs_queued") == [("set", 2, {}), ("set", 0, {}), ("set", 1, {})]
    assert recorded("raychat_runs_total") == [("inc", 1.0, {"status": "failed"})]
    assert recorded("raychat_run_failures_total") == [("inc", 1.0, {"code": "internal"})]


def test_the_grafana_dashboard_charts_every_metric_from_a_prometheus_variable() -> None:
    dashboard = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    charted: set[str] = set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            names = re.findall(r"\bray_(raychat_[a-z_]+)", target["expr"])
            assert names, target
            for name in names:
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert base in SPECS, name  # only documented metrics
                charted.add(base)
    assert charted == set(SPECS)
