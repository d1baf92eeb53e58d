"""The naive chat server: what a plain FastAPI app costs, without raychat's serving classes.

One uvicorn process; settings straight from the `RAYCHAT_*` variables. A
socket's token is checked with PyJWT. Each `chat` starts a task owned by its
socket (cancelled and awaited when the socket closes): commit the user row, run
ONE tool-less `Agent` on the simulated model every system uses, send its text
(the first delta at once, then coalesced), commit the reply row, send
`run.completed`. One aiosqlite connection (WAL); no history, context, caches,
idempotency, cancel/resume or backpressure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import jwt
import orjson
import uvicorn
from agents import Agent, RawResponsesStreamEvent, RunConfig, Runner
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from openai.types.responses import ResponseTextDeltaEvent
from starlette.websockets import WebSocketDisconnect

from actors.sim_model import SimulatedModel

logger = logging.getLogger(__name__)
SQLITE = "sqlite+aiosqlite:///"
USER_ID = re.compile(r"[A-Za-z0-9_.@-]{1,128}")  # what actors/auth.py accepts as `sub`
AGENT = "assistant"
SCHEMA = """CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, run_id TEXT, user_id TEXT,
    session_id TEXT, role TEXT, text TEXT, status TEXT, client_msg_id TEXT, created_at REAL)"""
INSERT = "INSERT INTO messages VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)"
Send = Callable[[dict[str, Any]], Awaitable[None]]
Emit = Callable[..., Awaitable[None]]


def load_secret(env: Mapping[str, str]) -> str:
    """`RAYCHAT_SECRET`, else the one `raychat token` shares in the data directory."""
    if env.get("RAYCHAT_SECRET"):
        return env["RAYCHAT_SECRET"]
    path = Path(env.get("RAYCHAT_DATA_DIR", "./data")) / "secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def parse(text: str | None) -> dict[str, Any]:
    """A valid `ping` or `chat` frame, or the fields of an `error` event (they have `code`)."""
    try:
        frame = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        frame = None
    if not isinstance(frame, dict):
        return {"code": "bad_json", "message": "send one JSON object per text frame"}
    kind, body = frame.get("type"), frame.get("text")
    if kind not in ("ping", "chat"):
        code = "bad_request" if kind in ("cancel", "resume") else "unknown_type"
        return {"code": code, "message": f"type {kind!r:.40} is not supported"}
    if kind == "chat" and not (isinstance(body, str) and body.strip()):
        return {"code": "bad_request", "message": "text: must be a non-empty string"}
    if frame.get("agent") not in (None, AGENT):
        return {"code": "bad_request", "message": f"agent: the only agent is {AGENT!r}"}
    return frame


class MinimalChat:
    """The whole server: settings, one agent, one database connection, counters."""

    def __init__(self, env: Mapping[str, str]) -> None:
        url = env.get("RAYCHAT_DATABASE_URL", SQLITE + "./data/raychat.db")
        if not url.startswith(SQLITE) or env.get("RAYCHAT_MODEL", "simulated") != "simulated":
            raise ValueError("the minimal app needs a SQLite database and the simulated model")
        self.db_path = Path(url.removeprefix(SQLITE))
        self.secret = load_secret(env)
        self.issuer = env.get("RAYCHAT_TOKEN_ISSUER", "raychat")
        self.coalesce_s = float(env.get("RAYCHAT_COALESCE_MS", "30")) / 1000
        model = SimulatedModel(
            ttft_s=float(env.get("RAYCHAT_SIM_TTFT_MS", "200")) / 1000,
            tokens_per_s=float(env.get("RAYCHAT_SIM_TOKENS_PER_S", "50")),
            reply_tokens=int(env.get("RAYCHAT_SIM_REPLY_TOKENS", "40")),
        )
        self.agent: Agent[None] = Agent(name=AGENT, instructions="Be helpful.", model=model)
        self.run_config = RunConfig(tracing_disabled=True)
        self.db: aiosqlite.Connection | None = None
        self.connections = {"active": 0, "opened": 0, "closed": 0}
        self.runs = {"active": 0, "queued": 0, "completed": 0, "failed": 0, "cancelled": 0}
        self.written, self.commit_ms = 0, deque[float](maxlen=1000)

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        """The database connection (WAL, `messages` table) for the app's lifetime."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(self.db_path) as db:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")  # as raychat's Persistence
            await db.execute(SCHEMA)
            await db.commit()
            self.db = db
            try:
                yield
            finally:
                self.db = None

    async def store(self, *row: Any) -> int:
        """Insert one `messages` row and commit it; the row's id."""
        assert self.db is not None, "the database is closed"
        start = time.monotonic()
        cursor = await self.db.execute(INSERT, (*row, time.time()))
        await self.db.commit()
        self.commit_ms.append((time.monotonic() - start) * 1000)
        self.written += 1
        return int(cursor.lastrowid or 0)

    def user_of(self, token: str | None) -> str | None:
        """The user id a valid token names, else None."""
        try:
            claims = jwt.decode(
                token or "", self.secret, algorithms=["HS256"], issuer=self.issuer,
                options={"require": ["sub", "exp", "iss"]},
            )  # fmt: skip
        except jwt.PyJWTError:
            return None
        user = claims.get("sub")
        return user if isinstance(user, str) and USER_ID.fullmatch(user) else None

    async def serve(self, ws: WebSocket) -> None:
        """One socket: authenticate, answer frames, own the runs they start."""
        await ws.accept()
        auth = ws.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        user = self.user_of(ws.query_params.get("token") or bearer)
        if user is None:
            await ws.close(4401, "unauthenticated")
            return
        lock, tasks = asyncio.Lock(), set[asyncio.Task[None]]()

        async def send(event: dict[str, Any]) -> None:
            async with lock:  # the reader and every run write to this socket
                await ws.send_text(orjson.dumps(event).decode())

        self.connections["opened"] += 1
        self.connections["active"] += 1
        try:
            while (message := await ws.receive())["type"] != "websocket.disconnect":
                frame = parse(message.get("text"))
                if "code" in frame:
                    await send({"type": "error", **frame})
                elif frame["type"] == "ping":
                    await send({"type": "pong"})
                else:
                    task = asyncio.create_task(self.run(user, frame, send))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except WebSocketDisconnect:
            pass
        finally:
            self.connections["active"] -= 1
            self.connections["closed"] += 1
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, user: str, chat: dict[str, Any], send: Send) -> None:
        """One turn: user row committed, `run.accepted`, stream, reply row committed, final."""
        run_id, seq, status = uuid.uuid4().hex, 0, "cancelled"
        session, msg_id = str(chat.get("session_id") or "default"), chat.get("client_msg_id")

        async def emit(kind: str, **fields: Any) -> None:
            nonlocal seq
            seq += 1
            await send({"type": kind, **fields, "run_id": run_id, "seq": seq})

        self.runs["active"] += 1
        try:
            await self.store(run_id, user, session, "user", chat["text"], "done", msg_id)
            await emit("run.accepted", session_id=session, client_msg_id=msg_id, duplicate=False)
            await emit("run.started", agent=self.agent.name)
            try:
                text = await self.reply(chat["text"], emit)
            except Exception as exc:  # the model failed (or the socket went: emit raises again)
                status = "failed"
                logger.warning("run %s of %s: the model failed", run_id, user, exc_info=True)
                message = f"the agent run failed: {type(exc).__name__}"
                await emit("run.failed", error={"code": "model_error", "message": message})
                return
            reply_id = await self.store(run_id, user, session, AGENT, text, "completed", None)
            status = "completed"
            await emit("run.completed", message_id=reply_id, text=text)
        except Exception:  # the database failed, or the socket went away mid-run
            status = "failed"
            logger.exception("run %s of %s failed", run_id, user)
        finally:
            self.runs["active"] -= 1
            self.runs[status] += 1

    async def reply(self, text: str, emit: Emit) -> str:
        """Run the agent, send its text as `message.delta` events, return the whole reply.

        The first delta goes at once; then text is held until `coalesce_s` after the last
        send and goes with the next token (or at the end): a steady stream waits less.
        """
        stream = Runner.run_streamed(self.agent, text, run_config=self.run_config)
        loop, sent, pending, due = asyncio.get_running_loop(), list[str](), list[str](), 0.0
        try:
            async for event in stream.stream_events():
                data = event.data if isinstance(event, RawResponsesStreamEvent) else None
                if isinstance(data, ResponseTextDeltaEvent) and data.delta:
                    pending.append(data.delta)
                    if loop.time() >= due:
                        sent.append("".join(pending))
                        pending.clear()
                        await emit("message.delta", text=sent[-1])
                        due = loop.time() + self.coalesce_s
            if pending:
                sent.append("".join(pending))
                await emit("message.delta", text=sent[-1])
        finally:
            if not stream.is_complete:
                stream.cancel()  # this task was cancelled: stop the model too
        return "".join(sent)

    def stats(self) -> dict[str, Any]:
        """Socket and run counters, and how long each row's commit took."""
        commits = sorted(self.commit_ms)
        lag = {f"p{q}": round(commits[len(commits) * q // 100], 3) if commits else None
               for q in (50, 99)}  # fmt: skip
        return {
            "connections": dict(self.connections),
            "runs": dict(self.runs),
            "persistence": {"queue_depth": 0, "written": self.written, "lag_ms": lag},
        }


def build_app(env: Mapping[str, str] = os.environ) -> FastAPI:
    """The app: WS `/api/websocket/ws`, `GET /healthz`, `/readyz`, `/stats`."""
    chat = MinimalChat(env)
    app = FastAPI(title="raychat minimal baseline", lifespan=chat.lifespan)
    app.state.chat = chat
    app.add_api_websocket_route("/api/websocket/ws", chat.serve)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return chat.stats()

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = chat.db is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    return app


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.baselines.minimal_app --port N`."""
    parser = argparse.ArgumentParser(description="raychat benchmark baseline: minimal app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=5)  # fmt: skip


if __name__ == "__main__":
    main()
