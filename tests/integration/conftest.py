"""One Ray cluster for the whole integration test session, and the Serve app on each database.

The app runs on SQLite unless a test module asks for both backends
(`pytestmark = BOTH_DATABASES`): pytest then runs its tests once on SQLite and
once on PostgreSQL, each backend's app started once on the same cluster.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from actors.auth import TokenCodec
from actors.remote import actor_name
from benchmarks.systems import free_ports
from config import Settings
from config.serve_env import apply_serve_defaults
from tests.databases import BACKENDS, Database, new_database

TEST_SECRET = "integration-test-secret-" + uuid.uuid4().hex
APP_NAME = "raychat"
REPLICAS = 2
# The suite's service: two shards and two agent actors, a fast simulated model.
SIMULATED: dict[str, Any] = {
    "shards": 2,
    "agent_actors": 2,
    "sim_ttft_ms": 50,
    "sim_tokens_per_s": 100,
    "sim_reply_tokens": 10,
}
# Run a module's tests on SQLite and on PostgreSQL.
BOTH_DATABASES = pytest.mark.parametrize("service", BACKENDS, indirect=True)


@dataclass
class Service:
    """The running service under test."""

    settings: Settings
    port: int
    database: Database
    ingress: str = "haproxy"  # Serve's ingress the tests run behind: "haproxy" or "python"
    prefix: str = ""  # the app's route prefix ("" for the session's app at "/")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def token(self, user_id: str, admin: bool = False) -> str:
        codec = TokenCodec(TEST_SECRET, issuer=self.settings.token_issuer, ttl_s=3600)
        return codec.issue(user_id, admin=admin)

    def ws_url(self, user_id: str | None, admin: bool = False) -> str:
        base = f"ws://127.0.0.1:{self.port}{self.prefix}/api/websocket/ws"
        return base if user_id is None else f"{base}?token={self.token(user_id, admin)}"

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token('test-admin', admin=True)}"}

    def stats(self) -> dict[str, Any]:
        """The stats document, fetched synchronously."""
        response = httpx.get(
            f"{self.http}/api/websocket/performance/stats", headers=self.admin_headers(), timeout=30
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def history(self, user_id: str, session_id: str = "default") -> list[dict[str, Any]]:
        """A session's messages as the service answers them (`GET /api/history`)."""
        response = httpx.get(
            f"{self.http}/api/history",
            params={"session_id": session_id},
            headers={"Authorization": f"Bearer {self.token(user_id)}"},
            timeout=30,
        )
        response.raise_for_status()
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages

    def actor(self, kind: str, index: int | None = None) -> Any:
        """The handle of one of the app's actors (`persistence`, `agent`, `shard`)."""
        import ray

        name = actor_name(self.settings, kind, index)
        return ray.get_actor(name, namespace=self.settings.namespace)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the real database directly (`?` placeholders)."""
        return self.database.rows(sql, *args)


def wait_ready(url: str, deadline_s: float = 120.0) -> None:
    """Block until `/readyz` answers 200 (bounded)."""
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)  # polling a readiness endpoint, not synchronising test logic
    raise RuntimeError(f"service not ready: {last}")


# A stopping replica stays reachable for 1 s, not the shipped 5 s (serve_app.REPLICA_ENV):
# Serve's HAProxy drops it within a second here, and every app the tests delete or
# redeploy would otherwise wait out the longer window.
TEST_REPLICA_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


def ingress(name: str | None = None, version: str | None = None, **options: Any) -> Any:
    """`RaychatIngress` with Serve `options`, its replicas given the tests' environment.

    A new `version` changes the replicas' actor options, so Serve replaces every replica.
    """
    from serve_app import REPLICA_ENV, RaychatIngress

    env = {**REPLICA_ENV, **TEST_REPLICA_ENV}
    if version is not None:
        env["RAYCHAT_TEST_DEPLOY_VERSION"] = version
    actor_options = {"num_cpus": 0, "runtime_env": {"env_vars": env}}
    named = {"name": name} if name is not None else {}
    return RaychatIngress.options(**named, ray_actor_options=actor_options, **options)


@contextmanager
def side_app(
    service: Service, name: str, prefix: str, replicas: int = 1, **overrides: Any
) -> Iterator[str]:
    """Deploy a second ingress app at `prefix` with some settings changed; yield its ws URL.

    Only the ingress reads these settings: the app shares the session's actors
    (and their settings) and database, so overrides of shard or agent settings
    (rate limits, queued runs per session, ...) have no effect here.
    """
    from ray import serve

    settings = service.settings.model_copy(update=overrides)
    app = ingress(f"{name}-ingress", num_replicas=replicas).bind(settings)
    serve.run(app, name=name, route_prefix=prefix)
    try:
        wait_ready(f"{service.http}{prefix}")
        yield f"ws://127.0.0.1:{service.port}{prefix}/api/websocket/ws?token="
    finally:
        serve.delete(name)


@contextmanager
def own_service(
    cluster: Cluster,
    folder: Path,
    name: str,
    replicas: int = REPLICAS,
    **overrides: Any,
) -> Iterator[Service]:
    """An app at `/name` with its own actors (namespace) and SQLite database; its `Service`.

    Unlike `side_app`, every setting applies: shards, agents and the database
    actor are this app's own. They are killed, and the database dropped, after.
    """
    from ray import serve

    database = new_database("sqlite", folder)
    settings = Settings(
        database_url=database.url,
        data_dir=folder,
        secret=SecretStr(TEST_SECRET),
        namespace=f"{name}-" + uuid.uuid4().hex[:8],
        **{**SIMULATED, **overrides},
    )
    app = ingress(f"{name}-ingress", num_replicas=replicas).bind(settings)
    try:
        serve.run(app, name=name, route_prefix=f"/{name}")
        service = Service(settings, cluster.port, database, cluster.ingress, prefix=f"/{name}")
        wait_ready(service.http)
        yield service
    finally:
        serve.delete(name)
        kill_namespace(settings.namespace)
        database.drop()


def deploy(
    settings: Settings, version: str | None = None, graceful_shutdown_timeout_s: float = 2
) -> None:
    """Deploy (or redeploy) the Serve app with `settings`; a new `version` rolls the replicas."""
    from ray import serve

    # Two replicas: a user's sockets and resumes may land on either, as in production.
    # A short drain budget by default: a redeploy cuts open sockets quickly (tests reconnect).
    app = ingress(
        version=version,
        num_replicas=REPLICAS,
        graceful_shutdown_timeout_s=graceful_shutdown_timeout_s,
    ).bind(settings)
    serve.run(app, name=APP_NAME, route_prefix="/")


@dataclass
class Cluster:
    """The session's Ray cluster with Serve started on `port`."""

    port: int
    ingress: str
    metrics_port: int = 0  # Ray's metrics export port (Prometheus text at /metrics)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    import ray
    from ray import serve

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    # The default path, as `serve run serve_app:app` gets it: HAProxy in front where it
    # can run (set RAY_SERVE_ENABLE_HA_PROXY=0 to test Serve's Python proxy instead).
    # HAProxy's stats and metrics ports, and its fallback proxy's, get free ones: another
    # cluster on this machine may hold the fixed defaults.
    ingress = apply_serve_defaults()
    port, metrics_port, *others = free_ports(6)
    for name, other in zip(
        ("HAPROXY_STATS", "HAPROXY_METRICS", "FALLBACK_PROXY_HTTP", "FALLBACK_PROXY_GRPC"),
        others,
        strict=True,
    ):
        os.environ.setdefault(f"RAY_SERVE_{name}_PORT", str(other))
    # The node's metrics agent runs with the dashboard off too; its port is fixed here.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield Cluster(port=port, ingress=ingress, metrics_port=metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()


def kill_namespace(namespace: str) -> None:
    """Kill every named actor of `namespace` (an app's actors, after its tests)."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == namespace:
            ray.kill(ray.get_actor(actor["name"], namespace=namespace), no_restart=True)


@pytest.fixture(scope="session", params=["sqlite"])
def service(
    request: pytest.FixtureRequest,
    ray_cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    from ray import serve

    backend: str = request.param
    database = new_database(backend, tmp_path_factory.mktemp(f"raychat-{backend}"))
    settings = Settings(
        database_url=database.url,
        data_dir=tmp_path_factory.mktemp("raychat-data"),
        secret=SecretStr(TEST_SECRET),
        namespace=f"raychat-test-{backend[:2]}-" + uuid.uuid4().hex[:8],
        **SIMULATED,
        persistence_writers=1 if backend == "sqlite" else 2,
        run_grace_s=2.0,
    )
    try:
        deploy(settings)
        svc = Service(settings, ray_cluster.port, database, ingress=ray_cluster.ingress)
        wait_ready(svc.http)
        yield svc
    finally:
        serve.delete(APP_NAME)
        kill_namespace(settings.namespace)
        database.drop()
