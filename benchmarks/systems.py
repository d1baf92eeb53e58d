"""Start and stop the systems the benchmarks drive, each in subprocesses of its own.

Every system speaks PROTOCOL.md on `/api/websocket/ws?token=...` and runs the
same simulated model with the same settings (`SimSettings` -> `RAYCHAT_SIM_*`,
`RAYCHAT_COALESCE_MS`). Each gets a free loopback port, its own fresh SQLite
file `WORKDIR/NAME.db`, its own data dir, its own random `RAYCHAT_SECRET`, and
a log `WORKDIR/NAME.log` (stdout and stderr of its processes).

- `serial`: `python -m benchmarks.baselines.serial_app` (one uvicorn process,
  one turn at a time across all users, everything built per turn).
- `single-process`: `python -m benchmarks.baselines.single_process_app` (one
  uvicorn process wiring raychat's plain classes without Ray).
- `raychat`: `python -m benchmarks.systems --serve-ray ...`, a launcher that
  starts a NEW local Ray (`ray.init(address="local", num_cpus=2,
  include_dashboard=False)`, its own `_temp_dir` under /tmp, never an existing
  cluster, never `ray start`), `serve.start` on 127.0.0.1:PORT and
  `serve.run(RaychatIngress.bind(Settings()))`, then waits for SIGTERM, on
  which it calls `ray.shutdown()`. Clients go through Serve's proxy on PORT.
- `raychat-direct`: the same with `RAY_SERVE_ENABLE_DIRECT_INGRESS=1`.

Both raychat systems run one shard actor per core (`RAYCHAT_SHARDS`, unless
the environment sets it): sized for the machine, as a deployment would be.

Direct ingress in Ray 2.60, as read from `ray/serve/_private` (controller.py,
replica.py, node_port_manager.py, direct_ingress_http_util.py, constants.py):

- The controller still starts the Serve proxy, on the head node only
  (`ProxyLocation.HeadOnly`), so `serve.start`'s HTTP port keeps answering and
  routes through the proxy as usual.
- Each replica of an ingress deployment also starts its own uvicorn server
  (`Replica._maybe_start_direct_ingress_servers` -> `start_asgi_http_server`)
  on the host of `http_options` (127.0.0.1 here) and a port that the
  controller's `NodePortManager` hands out from
  `[RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT, RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT)`
  (default 30000-31000, taking the next one when a port is in use). gRPC gets
  a port only when gRPC servicers are configured (not here).
- That server calls `Replica._direct_ingress_asgi`, which passes the ASGI scope
  (HTTP or WebSocket) straight to the app in the replica's own event loop; no
  proxy and no Ray call sit between the client and the app. WebSockets work
  (`ASGIDIReceiveProxy` knows `websocket.disconnect`). Clients learn the
  replica ports from the controller's `get_target_groups(app_name)`.
- Ingress replicas get `graceful_shutdown_timeout_s` of at least 35 s
  (`RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S` 30 + 5), so `serve.shutdown`
  is slow; the launcher skips it and ends the whole cluster with `ray.shutdown`.

So for `raychat-direct` the launcher gives the replica a port window of its own
(a free port P and `[P, P+16)`, away from other people's clusters on 30000+),
reads the replica's port from `get_target_groups`, and `base_url` points at the
replica; `info["proxy_port"]` is the proxy, which still listens. With one
ingress replica (the default) every client lands on that replica.

`start_system` returns once `/readyz` answers 200 and a WebSocket `ping` gets
its `pong` through `base_url`. `stop()` sends SIGTERM, waits, then kills every
process it recorded or that carries the system's marker variable, and removes
the Ray temp dir. Systems still running when the caller exits are stopped.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import psutil  # type: ignore[import-untyped]
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

from actors.auth import TokenCodec

logger = logging.getLogger(__name__)
T = TypeVar("T")

SYSTEMS = ("serial", "single-process", "raychat", "raychat-direct")
BASELINE_MODULES = {
    "serial": "benchmarks.baselines.serial_app",
    "single-process": "benchmarks.baselines.single_process_app",
}
WS_PATH = "/api/websocket/ws"
RAY_APP_NAME = "raychat"
MARKER_ENV = "RAYCHAT_BENCH_SYSTEM"  # inherited by every process of a system
DIRECT_PORT_WINDOW = 16
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
            shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
        self.log.close()
        _running.discard(self)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the system's log, for error messages."""
        path = Path(self.log.name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


_running: set[SubprocessSystem] = set()


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
    name: str, sim: SimSettings, workdir: Path, *, timeout_s: float = START_TIMEOUT_S
) -> SubprocessSystem:
    """Start `name` in its own subprocess(es); return once it answers, or raise."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; choose one of {', '.join(SYSTEMS)}")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    secret = secrets.token_urlsafe(32)
    marker = f"{name}-{uuid.uuid4().hex}"
    db_path = workdir / f"{name}.db"
    _fresh_db(db_path)
    env = {
        **os.environ,
        **sim.env(),
        "RAYCHAT_SECRET": secret,
        "RAYCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "RAYCHAT_DATA_DIR": str(workdir / f"{name}-data"),
        "RAYCHAT_TOKEN_ISSUER": TOKEN_ISSUER,
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        MARKER_ENV: marker,
    }
    ray_temp_dir: Path | None = None
    ready_file = workdir / f"{name}.ready.json"  # the Ray launcher's ports, once it serves
    ready_file.unlink(missing_ok=True)
    if name in BASELINE_MODULES:
        command = [sys.executable, "-m", BASELINE_MODULES[name], "--port", str(port)]
    else:
        # One shard actor per core (unless set): each shard process costs CPU of its own
        # (2 shards instead of the default 4 saved about 2 ms of CPU per turn on 2 cores).
        env.setdefault("RAYCHAT_SHARDS", str(max(1, os.cpu_count() or 1)))
        ray_temp_dir = Path(tempfile.mkdtemp(prefix="rcbench-", dir="/tmp"))
        command = [
            sys.executable, "-m", "benchmarks.systems", "--serve-ray",
            "--port", str(port), "--ray-temp-dir", str(ray_temp_dir),
            "--ready-file", str(ready_file),
        ]  # fmt: skip
        direct = name == "raychat-direct"
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1" if direct else "0"
        if direct:
            first = _free_port()
            env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(first)
            env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(first + DIRECT_PORT_WINDOW)
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    system = SubprocessSystem(
        name=name,
        base_url=f"http://127.0.0.1:{port}",
        process=process,
        secret=secret,
        marker=marker,
        log=log,
        ray_temp_dir=ray_temp_dir,
        info={"port": port, "db": str(db_path), "log": log.name},
    )
    _running.add(system)
    deadline = time.monotonic() + timeout_s
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
        _wait_until(lambda: _ready(system), system, deadline, "200 from /readyz")
        _wait_until(lambda: _pong(system), system, deadline, "pong on the WebSocket")
    except BaseException:
        system.stop()
        raise
    return system


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


def serve_ray(port: int, ray_temp_dir: Path, ready_file: Path, timeout_s: float) -> None:
    """Start a new local Ray and the raychat Serve app; block until SIGTERM or SIGINT."""
    deadline = time.monotonic() + timeout_s
    import ray
    from ray import serve

    from config import Settings
    from serve_app import RaychatIngress

    settings = Settings()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(ray_temp_dir),
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = RaychatIngress.bind(settings)  # type: ignore[attr-defined]
        serve.run(app, name=RAY_APP_NAME, route_prefix="/")
        direct = os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"
        client_port = _direct_ingress_port(port, deadline) if direct else port
        launched = {"client_port": client_port, "proxy_port": port, "direct_ingress": direct}
        partial = ready_file.with_suffix(".tmp")
        partial.write_text(json.dumps(launched))
        partial.replace(ready_file)
        while not stop.wait(1.0):
            pass
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.systems --serve-ray --port N ...` (used by `start_system`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve-ray", action="store_true", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ray-temp-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=START_TIMEOUT_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    serve_ray(args.port, args.ray_temp_dir, args.ready_file, args.timeout_s)


if __name__ == "__main__":
    main()
