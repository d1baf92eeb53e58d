"""The simulated user: one real WebSocket client speaking PROTOCOL.md.

Every simulated user of a benchmark lives in the one asyncio client process.
A user holds one socket and runs one turn at a time: send `chat`, then read
until its run's final event, timestamping `run.accepted`, the first
`message.delta` (TTFT) and `run.completed` (end to end). Failures are recorded
by kind, never raised: `connect:503` (HTTP status), `connect:refused`,
`connect:timeout`, `close:1011` (close code; 1006 without a close frame),
`timeout` (per-turn), `error:<code>` (an `error` event), `run.failed:<code>`,
`run.cancelled`, `protocol:seq` / `protocol:text` / `protocol:json` (the server broke
PROTOCOL.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

Clock = Callable[[], float]
WS_PATH = "/api/websocket/ws"


@dataclass(frozen=True)
class ClientOptions:
    """How a simulated user connects and how long it waits."""

    turn_timeout_s: float = 30.0
    connect_timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    compression: bool = False  # off: the load generator shares the server's cores


@dataclass
class TurnRecord:
    """What one turn of one user measured (milliseconds from sending `chat`)."""

    user_id: str
    kind: str = "plain"
    cold: bool = False
    sent_at: float | None = None
    done_at: float | None = None
    accepted_ms: float | None = None
    started_ms: float | None = None
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    deltas: int = 0
    chars: int = 0
    tool_calls: int = 0
    queued: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The run completed without any error."""
        return self.error is None and self.e2e_ms is not None


def ws_url(base_url: str, token: str) -> str:
    """The chat socket URL of a server at `base_url` ("http://host:port")."""
    scheme, rest = base_url.rstrip("/").split("://", 1)
    ws_scheme = "wss" if scheme == "https" else "ws"
    return f"{ws_scheme}://{rest}{WS_PATH}?token={token}"


def connect_error_kind(exc: BaseException) -> str:
    """The error kind of a failed connect."""
    if isinstance(exc, InvalidStatus):
        return f"connect:{exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "connect:timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect:refused"
    if isinstance(exc, ConnectionClosed):
        return close_kind(exc)
    if isinstance(exc, OSError):
        return f"connect:oserror:{exc.errno}"
    return f"connect:{type(exc).__name__}"


def close_kind(exc: ConnectionClosed) -> str:
    """The error kind of an unexpected close: the server's close code, 1006 without one."""
    return f"close:{exc.rcvd.code if exc.rcvd is not None else 1006}"


class SimUser:
    """One simulated user on one socket; turns run one after another."""

    def __init__(
        self,
        url: str,
        user_id: str,
        options: ClientOptions | None = None,
        *,
        connect_slots: asyncio.Semaphore | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.url = url
        self.user_id = user_id
        self.options = options or ClientOptions()
        self.connect_ms: float | None = None
        self.waiting_since: float | None = None  # send time while no delta has arrived
        self._slots = connect_slots
        self._clock = clock
        self._ws: ClientConnection | None = None
        self._turns = 0

    @property
    def connected(self) -> bool:
        """A socket is open (as far as this side knows)."""
        return self._ws is not None

    async def connect(self) -> str | None:
        """Open the socket; the error kind on failure, None on success."""
        slots = self._slots if self._slots is not None else contextlib.nullcontext()
        async with slots:
            start = self._clock()
            try:
                self._ws = await connect(
                    self.url,
                    open_timeout=self.options.connect_timeout_s,
                    close_timeout=self.options.close_timeout_s,
                    compression="deflate" if self.options.compression else None,
                    ping_interval=None,
                    max_size=None,
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                return connect_error_kind(exc)
            self.connect_ms = (self._clock() - start) * 1000
        return None

    async def turn(self, text: str, *, kind: str = "plain") -> TurnRecord:
        """Send one `chat` and read until its run ends or fails; never raises."""
        record = TurnRecord(self.user_id, kind=kind, cold=self._turns == 0)
        self._turns += 1
        if self._ws is None:
            record.error = await self.connect()
            if record.error is not None:
                return record
        assert self._ws is not None
        msg_id = f"{self.user_id}.{self._turns}"
        frame = orjson.dumps({"type": "chat", "text": text, "client_msg_id": msg_id}).decode()
        start = self._clock()
        record.sent_at = self.waiting_since = start
        try:
            async with asyncio.timeout(self.options.turn_timeout_s):
                await self._ws.send(frame)
                await self._read_run(self._ws, record, msg_id, start)
        except TimeoutError:
            record.error = "timeout"
        except ConnectionClosed as exc:
            record.error = close_kind(exc)
            self._ws = None
        except ValueError:
            record.error = "protocol:json"
        finally:
            self.waiting_since = None
            record.done_at = self._clock()
        return record

    async def _read_run(
        self, ws: ClientConnection, record: TurnRecord, msg_id: str, start: float
    ) -> None:
        """Read events until the final event of the run accepted for `msg_id`."""
        run_id: str | None = None
        next_seq = 1
        parts: list[str] = []
        while True:
            event: dict[str, Any] = orjson.loads(await ws.recv())
            elapsed_ms = (self._clock() - start) * 1000
            kind = event.get("type")
            if run_id is None:
                if kind == "run.accepted" and event.get("client_msg_id") in (msg_id, None):
                    run_id = event.get("run_id")
                    record.accepted_ms = elapsed_ms
                elif kind == "error":
                    record.error = f"error:{event.get('code', 'unknown')}"
                    return
                else:
                    continue  # a pong, or a late event of an earlier (timed out) run
            if event.get("run_id") != run_id:
                continue
            if event.get("seq") != next_seq and record.error is None:
                record.error = "protocol:seq"
            next_seq = int(event.get("seq", next_seq)) + 1
            if kind == "run.queued":
                record.queued = True
            elif kind == "run.started":
                record.started_ms = elapsed_ms
            elif kind == "message.delta":
                if record.ttft_ms is None:
                    record.ttft_ms = elapsed_ms
                    self.waiting_since = None
                piece = str(event.get("text", ""))
                parts.append(piece)
                record.deltas += 1
                record.chars += len(piece)
            elif kind == "tool.called":
                record.tool_calls += 1
            elif kind == "run.completed":
                record.e2e_ms = elapsed_ms
                if event.get("text") != "".join(parts) and record.error is None:
                    record.error = "protocol:text"
                return
            elif kind == "run.cancelled":
                record.error = "run.cancelled"
                return
            elif kind == "run.failed":
                error = event.get("error")
                code = error.get("code", "unknown") if isinstance(error, dict) else "unknown"
                record.error = f"run.failed:{code}"
                return

    async def ping(self) -> str | None:
        """Send the protocol `ping` and wait for `pong`; the error kind or None."""
        if self._ws is None:
            return "closed"
        try:
            async with asyncio.timeout(self.options.turn_timeout_s):
                await self._ws.send('{"type":"ping"}')
                while orjson.loads(await self._ws.recv()).get("type") != "pong":
                    pass
        except TimeoutError:
            return "timeout"
        except ConnectionClosed as exc:
            self._ws = None
            return close_kind(exc)
        except ValueError:
            return "protocol:json"
        return None

    async def close(self) -> None:
        """Close the socket (a close handshake bounded by `close_timeout_s`)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(OSError, WebSocketException):
                await ws.close()
