"""Dev-user tokens for the chat page: only while Serve listens on loopback, for local callers.

Typing a name instead of pasting a token is a convenience for a service on a
developer's machine. The ingress issues such tokens only while Serve's HTTP
host (the controller's HTTP options) is a loopback address, and only to a
request that came from this machine: from a loopback address, or from this
host's own address (HAProxy forwarding to a replica's port on the same node).
A replica's own port listens on every interface when HAProxy is on, so the
second check is what keeps a remote caller out there.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable

import ray
from fastapi import Request
from pydantic import BaseModel, field_validator

from actors.auth import USER_ID_PATTERN

logger = logging.getLogger(__name__)

NOT_LOOPBACK = "dev tokens are issued only while the service listens on loopback (127.0.0.1)"
NOT_LOCAL = "dev tokens are issued only to callers on the service's own machine"


class DevTokenRequest(BaseModel):
    """`POST /api/dev-token` body: the user id to issue a token for."""

    user_id: str

    @field_validator("user_id")
    @classmethod
    def _valid_user_id(cls, value: str) -> str:
        if not USER_ID_PATTERN.fullmatch(value):
            raise ValueError("user id must be 1-128 characters of A-Z a-z 0-9 _ . @ -")
        return value


def is_loopback(host: str | None) -> bool:
    """Whether `host` (an address or `localhost`) names this machine's loopback interface."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_local_caller(client_host: str | None, server_host: str | None) -> bool:
    """Whether a connection came from this machine: loopback, or the address it reached."""
    if is_loopback(client_host):
        return True
    return bool(client_host) and client_host == server_host


def refusal(serve_host: str | None, client_host: str | None, server_host: str | None) -> str | None:
    """Why a dev token may not be issued, or None when it may."""
    if not is_loopback(serve_host):
        return NOT_LOOPBACK
    if not is_local_caller(client_host, server_host):
        return NOT_LOCAL
    return None


async def serve_http_host() -> str | None:
    """The HTTP host Serve's proxies listen on, from the Serve controller."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    options = await controller.get_http_config.remote()
    host: str | None = options.host
    return host


class DevTokenGate:
    """Decides per request whether a dev token may be issued (Serve's host looked up once)."""

    def __init__(self, lookup: Callable[[], Awaitable[str | None]] = serve_http_host) -> None:
        self._lookup = lookup
        self._serve_host: str | None = None

    async def _host(self) -> str | None:
        if self._serve_host is None:
            try:
                self._serve_host = await self._lookup()
            except Exception:
                logger.exception("could not read Serve's HTTP host: dev tokens stay off")
                return None
        return self._serve_host

    async def refusal(self, request: Request) -> str | None:
        """Why `request` may not get a dev token, or None when it may."""
        client = request.client.host if request.client else None
        server = request.scope.get("server")
        server_host = server[0] if server else None
        return refusal(await self._host(), client, server_host)
