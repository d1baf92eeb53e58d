"""Prometheus metrics through Ray's metrics API: the table of names and the calls that record.

Every process (ingress replica, shard, agent, persistence writer) records into
its own `ray.util.metrics` objects, created on first use; each node's Ray
metrics agent exports them on its metrics export port (`ray start
--metrics-export-port`) with a `ray_` prefix and Ray's own labels (`WorkerId`,
`NodeAddress`, ...): sum over those for the service. No label carries a user,
session or run id. `METRICS` is the documented table (README "Metrics").

Hot paths call the functions below (a `ray.util.metrics` record costs about
1.5-3 us); counts an actor already keeps (cache hits and misses, lost runs)
are exported as increments by a `CountExporter`, at most once a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Kind = Literal["counter", "gauge", "histogram"]

_LATENCY_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TURN_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_GAP_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_COMMIT_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (before Ray's `ray_` prefix), kind, labels and meaning."""

    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "raychat_ttft_seconds",
        "histogram",
        "Run start to its first reply delta, per run",
        ("agent",),
        _LATENCY_S,
    ),
    MetricSpec(
        "raychat_turn_seconds",
        "histogram",
        "Run start to its final event, per run",
        ("status",),
        _TURN_S,
    ),
    MetricSpec(
        "raychat_delta_gap_seconds",
        "histogram",
        "Time between consecutive reply deltas of a run",
        (),
        _GAP_S,
    ),
    MetricSpec(
        "raychat_runs_total",
        "counter",
        "Runs ended, by final status (completed, cancelled, failed)",
        ("status",),
    ),
    MetricSpec("raychat_run_failures_total", "counter", "Failed runs, by error code", ("code",)),
    MetricSpec("raychat_runs_active", "gauge", "Runs executing on an agent actor", ()),
    MetricSpec(
        "raychat_runs_queued",
        "gauge",
        "Runs waiting behind another run of their session, per shard",
        (),
    ),
    MetricSpec("raychat_open_sockets", "gauge", "Open WebSockets, per ingress replica", ()),
    MetricSpec(
        "raychat_sockets_opened_total",
        "counter",
        "WebSockets admitted (authenticated, under the limits)",
        (),
    ),
    MetricSpec(
        "raychat_socket_closes_total",
        "counter",
        "WebSockets closed (or refused after the handshake), by close code",
        ("code",),
    ),
    MetricSpec(
        "raychat_errors_total", "counter", "`error` events sent to clients, by code", ("code",)
    ),
    MetricSpec("raychat_resumes_total", "counter", "`resume` frames handled", ()),
    MetricSpec("raychat_cancels_total", "counter", "`cancel` frames handled", ()),
    MetricSpec(
        "raychat_cache_lookups_total",
        "counter",
        "Cache lookups, by cache (user_context, session) and result (hit, miss)",
        ("cache", "result"),
    ),
    MetricSpec(
        "raychat_persistence_queue_depth",
        "gauge",
        "Writes waiting for a persistence writer's next commit",
        (),
    ),
    MetricSpec(
        "raychat_persistence_commit_seconds",
        "histogram",
        "Duration of one group-commit transaction",
        (),
        _COMMIT_S,
    ),
    MetricSpec(
        "raychat_persistence_lag_seconds",
        "histogram",
        "A write's wait from submit to its commit",
        (),
        _COMMIT_S,
    ),
)
SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}


class Sink(Protocol):
    """The record calls of a `ray.util.metrics` object that this module uses."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...

    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


def ray_metric(spec: MetricSpec) -> Any:
    """The `ray.util.metrics` object for `spec` (a no-op outside a Ray worker)."""
    from ray.util import metrics as ray_metrics

    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tags)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tags)
    return ray_metrics.Histogram(
        spec.name,
        description=spec.description,
        boundaries=list(spec.boundaries),
        tag_keys=spec.tags,
    )


class Recorder:
    """This process's metric objects, created on first use by `factory`."""

    def __init__(self, factory: Callable[[MetricSpec], Any] = ray_metric) -> None:
        self._factory = factory
        self._made: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The metric object called `name` (KeyError for a name not in `METRICS`)."""
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = self._factory(SPECS[name])
        return made


_recorder = Recorder()


@contextmanager
def recording_to(factory: Callable[[MetricSpec], Any]) -> Iterator[Recorder]:
    """Record into metric objects made by `factory` meanwhile (tests)."""
    global _recorder
    previous, _recorder = _recorder, Recorder(factory)
    try:
        yield _recorder
    finally:
        _recorder = previous


def _inc(name: str, value: float = 1.0, **tags: str) -> None:
    if value:
        _recorder.get(name).inc(value, tags=tags or None)


def _set(name: str, value: float) -> None:
    _recorder.get(name).set(value)


def _observe(name: str, value: float, **tags: str) -> None:
    _recorder.get(name).observe(max(0.0, value), tags=tags or None)


# -- agent actors ---------------------------------------------------------------
def run_ended(
    status: str, agent: str, turn_s: float, ttft_s: float | None, error_code: str | None
) -> None:
    """A run reached its final event on an agent actor."""
    _inc("raychat_runs_total", status=status)
    _observe("raychat_turn_seconds", turn_s, status=status)
    if ttft_s is not None:
        _observe("raychat_ttft_seconds", ttft_s, agent=agent)
    if status == "failed":
        _inc("raychat_run_failures_total", code=error_code or "internal")


def delta_gap(seconds: float) -> None:
    """A run emitted a reply delta `seconds` after its previous one."""
    _observe("raychat_delta_gap_seconds", seconds)


def runs_active(count: int) -> None:
    """Runs executing on this agent actor now."""
    _set("raychat_runs_active", count)


# -- ingress replicas -----------------------------------------------------------
def socket_opened(open_now: int) -> None:
    """A socket was admitted; `open_now` are open on this replica."""
    _inc("raychat_sockets_opened_total")
    _set("raychat_open_sockets", open_now)


# Close codes that get a label of their own; any other (a client may send 3000-4999) is "other".
CLOSE_CODES = frozenset((*range(1000, 1016), 4401, 4403))


def close_label(code: int) -> str:
    """The `code` label of a close code: the number for a known one, else "other"."""
    return str(code) if code in CLOSE_CODES else "other"


def socket_closed(code: int, open_now: int | None = None) -> None:
    """A socket closed with `code` (sent by either side); `open_now` remain on this replica."""
    _inc("raychat_socket_closes_total", code=close_label(code))
    if open_now is not None:
        _set("raychat_open_sockets", open_now)


def error_sent(code: str) -> None:
    """An `error` event with `code` was sent to a client."""
    _inc("raychat_errors_total", code=code)


def resumed() -> None:
    """A `resume` frame was handled."""
    _inc("raychat_resumes_total")


def cancelled() -> None:
    """A `cancel` frame was handled."""
    _inc("raychat_cancels_total")


# -- persistence writers --------------------------------------------------------
def committed(commit_s: float, lags_s: list[float], queue_depth: int) -> None:
    """A group commit took `commit_s`; its writes waited `lags_s`; `queue_depth` wait now."""
    _observe("raychat_persistence_commit_seconds", commit_s)
    for lag_s in lags_s:
        _observe("raychat_persistence_lag_seconds", lag_s)
    _set("raychat_persistence_queue_depth", queue_depth)


# -- shards ---------------------------------------------------------------------
class CountExporter:
    """Exports counts kept elsewhere as counter increments, at most every `interval_s`.

    `export` takes the current cumulative totals; each counter grows by what its
    total grew since the last export (a total that went down, after a reset,
    counts from zero).
    """

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._interval_s = interval_s
        self._clock = clock
        self._last_at: float | None = None
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def due(self) -> bool:
        """True when the last export is at least `interval_s` old (and then restarts the wait)."""
        now = self._clock()
        if self._last_at is not None and now - self._last_at < self._interval_s:
            return False
        self._last_at = now
        return True

    def export(self, name: str, total: float, **tags: str) -> None:
        """Grow counter `name` (with `tags`) by what `total` grew since the last export."""
        key = (name, tuple(sorted(tags.items())))
        last = self._last.get(key, 0.0)
        self._last[key] = total
        _inc(name, total - last if total >= last else total, **tags)


def export_shard(
    exporter: CountExporter,
    *,
    queued: int,
    caches: Mapping[str, tuple[int, int]],
    lost: int,
    drained: int,
) -> None:
    """A shard's queued runs, cache (hits, misses) by cache, and runs it failed itself."""
    _set("raychat_runs_queued", queued)
    for cache, (hits, misses) in caches.items():
        exporter.export("raychat_cache_lookups_total", hits, cache=cache, result="hit")
        exporter.export("raychat_cache_lookups_total", misses, cache=cache, result="miss")
    # Runs lost with their agent, or queued ones failed by a drain, end here, not on an agent.
    exporter.export("raychat_runs_total", lost + drained, status="failed")
    exporter.export("raychat_run_failures_total", lost, code="internal")
    exporter.export("raychat_run_failures_total", drained, code="shutdown")
