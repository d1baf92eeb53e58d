"""The replica's open sockets: admission against its limit, close codes, going-away closes."""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_TOO_LARGE = 1009
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006  # (metrics) a socket that ended without a close code seen here
GOING_AWAY_CLOSE_S = 2.0  # a client that stopped reading must not hold the others up


class SocketTable:
    """Every socket this replica counts, and how each one was closed (for metrics)."""

    def __init__(self, max_sockets: int, counters: dict[str, int]) -> None:
        """`counters` is the replica's shared counter dict (`going_away_closed` is counted)."""
        self.max_sockets = max_sockets
        self.counters = counters
        self.going_away = False  # set once: new sockets are refused, open ones closed
        self.open: set[WebSocket] = set()
        self._going: set[WebSocket] = set()  # closed with 1001 (or being closed)
        self._closed_with: dict[WebSocket, int] = {}  # close code (either side), for metrics

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, websocket: WebSocket) -> bool:
        """Count a new socket against this replica's limit at once; False when it is full.

        Counted before its handshake, so sockets that arrive together cannot
        all pass the check while the first ones are still being admitted.
        """
        if len(self.open) >= self.max_sockets:
            return False
        self.open.add(websocket)
        return True

    def release(self, websocket: WebSocket) -> None:
        """Uncount a socket that `admit` counted (idempotent)."""
        self.open.discard(websocket)
        self._going.discard(websocket)
        self._closed_with.pop(websocket, None)

    def note_close(self, websocket: WebSocket, code: int) -> None:
        """Record how a socket was closed, unless a code is recorded already."""
        self._closed_with.setdefault(websocket, code)

    def close_code(self, websocket: WebSocket) -> int:
        """The recorded close code of a socket (`CLOSE_ABNORMAL` if none was seen)."""
        return self._closed_with.get(websocket, CLOSE_ABNORMAL)

    def is_going(self, websocket: WebSocket) -> bool:
        """Whether the socket is closed (or being closed) with 1001."""
        return websocket in self._going

    async def close_all(self) -> None:
        """Refuse new sockets and close every open one with 1001, all at once."""
        self.going_away = True
        await asyncio.gather(*(self.close_going_away(websocket) for websocket in list(self.open)))

    async def close_going_away(self, websocket: WebSocket) -> None:
        """Close one socket with 1001 (once), bounded in time."""
        if websocket in self._going:
            return
        self._going.add(websocket)
        self._closed_with.setdefault(websocket, CLOSE_GOING_AWAY)
        try:  # bounded: a client that stopped reading must not hold the others up
            await asyncio.wait_for(
                websocket.close(CLOSE_GOING_AWAY, "server shutting down"), GOING_AWAY_CLOSE_S
            )
        except Exception:  # the client may have gone already
            logger.debug("could not close a socket with 1001", exc_info=True)
        else:
            self.counters["going_away_closed"] += 1
