"""The chat page's module: page and assets, and who may get a dev token."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import HTTPException
from pydantic import ValidationError
from starlette.requests import Request

from actors.web import asset, index_page
from actors.web.dev_token import (
    NOT_LOCAL,
    NOT_LOOPBACK,
    DevTokenGate,
    DevTokenRequest,
    is_local_caller,
    is_loopback,
    refusal,
)


def test_page_links_carry_the_route_prefix() -> None:
    body = bytes(index_page("/chat/").body).decode()
    assert 'src="/chat/static/app.js"' in body
    assert 'data-base="/chat"' in body
    assert "__RAYCHAT_BASE__" not in body
    assert 'src="/static/app.js"' in bytes(index_page("").body).decode()
    assert '"/a&quot;b/static/app.css"' in bytes(index_page('/a"b').body).decode()


def test_only_the_listed_assets_are_served() -> None:
    assert asset("app.js").media_type == "text/javascript; charset=utf-8"
    for name in ("index.html", "../__init__.py", "nope.js"):
        with pytest.raises(HTTPException) as raised:
            asset(name)
        assert raised.value.status_code == 404


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_local_callers_are_loopback_or_this_hosts_own_address() -> None:
    assert is_local_caller("127.0.0.1", "10.0.0.5")
    assert is_local_caller("10.0.0.5", "10.0.0.5")  # HAProxy on this node, to a replica port
    assert not is_local_caller("10.0.0.6", "10.0.0.5")
    assert not is_local_caller(None, None)
    assert not is_local_caller("", "")


def test_refusal_needs_a_loopback_serve_and_a_local_caller() -> None:
    assert refusal("127.0.0.1", "127.0.0.1", "127.0.0.1") is None
    assert refusal("0.0.0.0", "127.0.0.1", "127.0.0.1") == NOT_LOOPBACK
    assert refusal(None, "127.0.0.1", "127.0.0.1") == NOT_LOOPBACK
    assert refusal("127.0.0.1", "192.168.1.9", "10.0.0.5") == NOT_LOCAL


def test_dev_token_request_checks_the_user_id() -> None:
    assert DevTokenRequest(user_id="alice.b@x-1").user_id == "alice.b@x-1"
    for bad in ("", "with space", "x" * 129, "a/b"):
        with pytest.raises(ValidationError):
            DevTokenRequest(user_id=bad)


def _request(client: str, server: str) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/api/dev-token",
        "headers": [],
        "client": (client, 50000),
        "server": (server, 8000),
    }
    return Request(scope)


async def test_gate_reads_serves_host_once_and_fails_closed() -> None:
    answers: list[str | None | Exception] = [RuntimeError("no controller"), "127.0.0.1"]
    calls = 0

    async def lookup() -> str | None:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    gate = DevTokenGate(lookup)
    local = _request("127.0.0.1", "127.0.0.1")
    assert await gate.refusal(local) == NOT_LOOPBACK  # lookup failed: no dev tokens
    assert await gate.refusal(local) is None  # looked up again, now known
    assert await gate.refusal(_request("10.1.2.3", "127.0.0.1")) == NOT_LOCAL
    assert calls == 2
