"""The terminal client's chat socket: connected, reconnected with backoff, events handed on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import websockets
from websockets.asyncio.client import ClientConnection, connect

from actors.chat_terminal import Backoff, Frame
from actors.events import Event

CLOSE_ABNORMAL = 1006  # no close frame: the connection broke
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class ChatError(Exception):
    """Ends the client with this message and exit status 1."""


class Link:
    """Keeps one chat socket open: connects, reconnects with backoff, hands on each event.

    `run` returns only by raising `ChatError`: the token was refused (close
    4401/4403, HTTP 401/403), the address is wrong (another HTTP status), or
    no connection could be made for `give_up_after_s`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        on_event: Callable[[Event], None],
        on_connect: Callable[[], list[Frame]],
        on_disconnect: Callable[[str], None],
        notice: Callable[[str], None],
        give_up_after_s: float,
    ) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._on_event = on_event
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._notice = notice
        self._give_up_after_s = give_up_after_s
        self._backoff = Backoff()
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        """True while a socket is open and the server has answered on it."""
        return self._ws is not None

    async def send(self, frame: Frame) -> bool:
        """Send a frame on the open socket; False if there is none (the caller retries later)."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            return False
        return True

    async def run(self) -> None:
        """Connect and read until the socket closes, then reconnect; forever."""
        outage_since: float | None = None
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)  # reconnect backoff
            try:
                problem = await self._connect_and_serve()
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise ChatError(f"the server refused the token (HTTP {status})") from None
                if status < 500 and status != 429:
                    raise ChatError(f"{self.url} answered HTTP {status}: is --url right?") from None
                problem = f"HTTP {status}"
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                problem = str(exc) or type(exc).__name__
            if problem is None:  # a good connection ended: reconnect at once
                outage_since, delay = None, 0.0
                self._backoff.reset()
                continue
            now = time.monotonic()
            if outage_since is None:
                outage_since = now
                self._notice(f"cannot reach {self.url}: {problem}; retrying (Ctrl-C to quit)")
            if now - outage_since >= self._give_up_after_s:
                raise ChatError(
                    f"no connection to {self.url} for {self._give_up_after_s:g} s: {problem}"
                )
            delay = self._backoff.next_delay()

    async def _connect_and_serve(self) -> str | None:
        """One socket's life; None if the server answered on it, else what went wrong."""
        frames = 0
        async with connect(self.url, additional_headers=self._headers) as ws:
            try:
                # The server answers only a socket whose token it took (else: close 4401),
                # so the socket counts as connected from its first frame on.
                await ws.send(json.dumps({"type": "ping"}))
                async for raw in ws:
                    if not frames:
                        self._ws = ws
                        for frame in self._on_connect():
                            await ws.send(json.dumps(frame))
                    frames += 1
                    self._handle(raw)
            except websockets.ConnectionClosed:
                pass
            finally:
                self._ws = None
        code = ws.close_code
        close = f"close {code} {ws.close_reason}" if ws.close_reason else f"close {code}"
        if code == CLOSE_UNAUTHENTICATED:
            raise ChatError(f"the server refused the token ({close})")
        if code == CLOSE_FORBIDDEN:
            raise ChatError(f"the server refused this client ({close})")
        why = "lost" if code in (None, CLOSE_ABNORMAL) else f"closed by the server ({close})"
        self._on_disconnect(why)
        return None if frames else why

    def _handle(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            self._notice(f"ignored a frame that is not JSON: {raw[:80]!r}")
            return
        if isinstance(event, dict):
            self._on_event(event)
