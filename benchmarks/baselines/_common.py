"""What both baseline apps share: the FastAPI app, the socket loop, tools over a database.

A baseline is a `Backend` (what to do with a parsed client frame) plugged into
`build_app`, which handles everything PROTOCOL.md says about the socket itself:
token auth (close 4401), JSON text frames only, the frame size limit (close
1009), `error` events for frames that cannot be accepted, `ping` -> `pong`, a
bounded outbound queue per socket (`actors.connection.Connection`) with its own
sender task. Nothing here imports Ray: a baseline process must not pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from actors.auth import TokenCodec, bearer_token, codec_for
from actors.connection import Connection
from actors.errors import AuthError, RaychatError
from actors.events import error_event
from actors.messages import ClientMessage, Ping, parse_frame
from actors.persistence import Persistence
from config import Settings

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009


class PersistenceTools:
    """`ToolServices` and `ReplyStore` over an in-process `Persistence`.

    Every write and read goes straight to `Persistence`; only `load_context`
    changes shape (the tools want a `(preferences, todos)` pair).
    """

    def __init__(self, db: Persistence) -> None:
        self.db = db
        self.add_todo = db.add_todo
        self.complete_todo = db.complete_todo
        self.set_preference = db.set_preference
        self.finish_reply = db.finish_reply

    async def load_context(self, user_id: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
        """The user's preferences and open todos, read from the database."""
        context = await self.db.load_context(user_id)
        return context.preferences, context.todos


class Backend:
    """What a baseline does with sockets and frames; `build_app` does the rest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sockets = {"opened": 0, "closed": 0, "frames": 0, "errors": 0}

    async def start(self) -> None:
        """Called once before the first request."""

    async def stop(self) -> None:
        """Called once at shutdown."""

    async def ready(self) -> bool:
        """True while the backend can serve chats."""
        return True

    async def opened(self, conn: Connection) -> None:
        """A socket of `conn.user_id` was authenticated."""

    async def closed(self, conn: Connection) -> None:
        """That socket closed."""

    async def handle(self, conn: Connection, message: ClientMessage) -> None:
        """Act on one valid frame other than `ping`; raise `RaychatError` to refuse it."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """The JSON document of `GET /stats`."""
        active = self.sockets["opened"] - self.sockets["closed"]
        return {"connections": {"active": active, **self.sockets}}


def _refuse(conn: Connection, backend: Backend, code: str, message: str, ref: Any) -> None:
    backend.sockets["errors"] += 1
    conn.send_event(error_event(code, message, ref if isinstance(ref, str) else None))


async def _on_frame(conn: Connection, backend: Backend, text: str) -> None:
    """Parse and act on one text frame; every problem becomes an `error` event."""
    try:
        message = parse_frame(text, max_text_chars=backend.settings.max_text_chars)
    except RaychatError as exc:
        _refuse(conn, backend, exc.code, exc.message, None)
        return
    if isinstance(message, Ping):
        conn.send_event({"type": "pong"})
        return
    ref = getattr(message, "run_id", None) or getattr(message, "client_msg_id", None)
    try:
        await backend.handle(conn, message)
    except RaychatError as exc:
        _refuse(conn, backend, exc.code, exc.message, ref)
    except Exception:
        logger.exception("handling a %s frame failed", message.type)
        _refuse(conn, backend, "internal", "the server could not handle that", ref)


async def _read_frames(websocket: WebSocket, conn: Connection, backend: Backend) -> None:
    limit = backend.settings.max_frame_bytes
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        backend.sockets["frames"] += 1
        text = message.get("text")
        if text is None:
            _refuse(conn, backend, "bad_request", "send JSON text frames, not binary", None)
        elif len(text.encode("utf-8", "surrogatepass")) > limit:
            await websocket.close(CLOSE_TOO_LARGE, "frame too large")
            return
        else:
            await _on_frame(conn, backend, text)


async def _close_if_overflowed(websocket: WebSocket, conn: Connection) -> None:
    await conn.overflowed.wait()
    logger.warning("closing a socket of %s: it stopped reading", conn.user_id)
    await websocket.close(CLOSE_POLICY, "client is not reading")


async def serve_socket(websocket: WebSocket, codec: TokenCodec, backend: Backend) -> None:
    """Authenticate one socket, then read its frames until it closes."""
    await websocket.accept()
    token = websocket.query_params.get("token") or bearer_token(
        websocket.headers.get("authorization")
    )
    try:
        identity = codec.verify(token)
    except AuthError:
        await websocket.close(CLOSE_UNAUTHENTICATED, "unauthenticated")
        return
    conn = Connection(
        identity.user_id, websocket.send_text, queue_max=backend.settings.outbound_queue_max
    )
    backend.sockets["opened"] += 1
    helpers = [
        asyncio.create_task(conn.run_sender(), name="ws-sender"),
        asyncio.create_task(_close_if_overflowed(websocket, conn), name="ws-watch"),
    ]
    try:
        await backend.opened(conn)
        await _read_frames(websocket, conn, backend)
    except WebSocketDisconnect:
        pass
    finally:
        backend.sockets["closed"] += 1
        for task in helpers:
            task.cancel()
        for outcome in await asyncio.gather(*helpers, return_exceptions=True):
            if isinstance(outcome, Exception) and not isinstance(outcome, WebSocketDisconnect):
                logger.warning("a socket task of %s failed", identity.user_id, exc_info=outcome)
        await backend.closed(conn)


def build_app(backend: Backend, *, title: str) -> FastAPI:
    """The FastAPI app of a baseline: `/api/websocket/ws`, `/healthz`, `/readyz`, `/stats`."""
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    codec = codec_for(backend.settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    app = FastAPI(title=title, lifespan=lifespan)

    @app.websocket("/api/websocket/ws")
    async def websocket(websocket: WebSocket) -> None:
        await serve_socket(websocket, codec, backend)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            ready = await backend.ready()
        except Exception:
            logger.warning("readiness check failed", exc_info=True)
            ready = False
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return backend.stats()

    return app


def uvicorn_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> uvicorn.Config:
    """How every baseline runs: one uvicorn process, default loop and WebSocket stack."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def run_main(
    make_backend: Callable[[Settings], Backend], title: str, argv: list[str] | None
) -> None:
    """`python -m benchmarks.baselines.X --port N`: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=f"raychat benchmark baseline: {title}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # One process: one shard and one agent manager, whatever the machine.
    app = build_app(make_backend(Settings(shards=1, agent_actors=1)), title=title)
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port)).run()
