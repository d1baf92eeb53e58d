"""The two benchmark baselines, served in-process by uvicorn and driven over real WebSockets.

No Ray: each app runs in the test's event loop on a socket bound and listening
before the server starts, so clients may connect at once (the kernel queues
them until uvicorn accepts).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection

from actors.auth import codec_for
from benchmarks.baselines import serial_app, single_process_app
from benchmarks.baselines._common import Backend, build_app, uvicorn_config
from config import Settings

GUARD_S = 30.0  # upper bound for anything that must happen
FINAL = {"run.completed", "run.cancelled", "run.failed"}
BACKENDS: dict[str, Callable[[Settings], Backend]] = {
    "serial": serial_app.SerialBackend,
    "single-process": single_process_app.InProcessBackend,
}


def settings_for(tmp_path: Path) -> Settings:
    """Fast simulated model (20 ms TTFT, 200 tokens/s, 10 tokens) on a fresh SQLite file."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/bench.db",
        data_dir=tmp_path,
        secret=SecretStr("baseline-test-secret-" + "x" * 32),
        sim_ttft_ms=20,
        sim_tokens_per_s=200,
        sim_reply_tokens=10,
    )


@asynccontextmanager
async def serving(backend: Backend) -> AsyncIterator[int]:
    """Serve the baseline app of `backend` with uvicorn in this loop; yield its port."""
    app = build_app(backend, title=type(backend).__name__)
    async with serving_app(uvicorn_config(app)) as port:
        yield port


@asynccontextmanager
async def serving_app(config: uvicorn.Config) -> AsyncIterator[int]:
    """Serve an app with uvicorn in this loop on a free loopback port; yield the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        async with asyncio.timeout(GUARD_S):
            await task
        sock.close()


class Client:
    """One user's socket; every event it receives is also appended to `log`."""

    def __init__(self, ws: ClientConnection, user: str, log: list[tuple[str, dict[str, Any]]]):
        self.ws = ws
        self.user = user
        self.log = log

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(GUARD_S):
            event: dict[str, Any] = json.loads(await self.ws.recv())
        self.log.append((self.user, event))
        return event

    async def until_final(self) -> list[dict[str, Any]]:
        """The events of one run, `run.accepted` to its final event."""
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] not in FINAL:
            event = await self.recv()
            assert event["type"] != "error", event
            events.append(event)
        return events

    async def turn(self, text: str) -> list[dict[str, Any]]:
        await self.send({"type": "chat", "text": text})
        return await self.until_final()


@asynccontextmanager
async def connected(
    port: int, settings: Settings, user: str, log: list[tuple[str, dict[str, Any]]] | None = None
) -> AsyncIterator[Client]:
    token = codec_for(settings).issue(user)
    url = f"ws://127.0.0.1:{port}/api/websocket/ws?token={token}"
    async with websockets.connect(url, open_timeout=GUARD_S) as ws:
        yield Client(ws, user, [] if log is None else log)


@asynccontextmanager
async def one_user(backend: Backend, user: str) -> AsyncIterator[Client]:
    """`backend`'s app served, and one socket of `user` open on it."""
    async with serving(backend) as port, connected(port, backend.settings, user) as client:
        yield client


def check_run(events: list[dict[str, Any]]) -> str:
    """Assert one run's events are well formed; return its reply text."""
    run_ids = {e["run_id"] for e in events}
    assert len(run_ids) == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "run.accepted" and events[0]["duplicate"] is False
    assert "run.started" in types and types[-1] == "run.completed"
    deltas = "".join(e["text"] for e in events if e["type"] == "message.delta")
    assert deltas and deltas == events[-1]["text"]
    return deltas


def todos_of(tmp_path: Path, user: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "bench.db") as db:
        return db.execute("SELECT text, done FROM todos WHERE user_id = ?", (user,)).fetchall()


@pytest.mark.parametrize("name", BACKENDS)
async def test_chat_turn_streams_a_whole_reply(name: str, tmp_path: Path) -> None:
    async with one_user(BACKENDS[name](settings_for(tmp_path)), "alice") as c:
        events = await c.turn("hello there")
    check_run(events)
    assert sum(e["type"] == "message.delta" for e in events) >= 1


@pytest.mark.parametrize("name", BACKENDS)
async def test_tool_turn_stores_a_todo(name: str, tmp_path: Path) -> None:
    async with one_user(BACKENDS[name](settings_for(tmp_path)), "bob") as c:
        events = await c.turn("remind me to buy milk")
        listed = await c.turn("what are my todos")
    check_run(events)
    called = [e for e in events if e["type"] == "tool.called"]
    assert [e["name"] for e in called] == ["add_todo"]
    assert called[0]["arguments"] == {"text": "buy milk"}
    assert [e["name"] for e in events if e["type"] == "tool.output"] == ["add_todo"]
    assert todos_of(tmp_path, "bob") == [("buy milk", 0)]
    assert "buy milk" in check_run(listed)  # the next turn reads the stored todo


@pytest.mark.parametrize("name", BACKENDS)
async def test_bad_frames_get_errors_and_the_socket_stays_open(name: str, tmp_path: Path) -> None:
    async with one_user(BACKENDS[name](settings_for(tmp_path)), "carol") as c:
        await c.send("{not json")
        assert (await c.recv())["code"] == "bad_json"
        await c.send({"type": "dance"})
        assert (await c.recv())["code"] == "unknown_type"
        await c.send({"type": "chat", "text": "   "})
        assert (await c.recv())["code"] == "bad_request"
        await c.send({"type": "ping"})
        assert await c.recv() == {"type": "pong"}
        check_run(await c.turn("hello again"))


@pytest.mark.parametrize("name", BACKENDS)
async def test_a_socket_without_a_valid_token_is_closed_4401(name: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    async with serving(BACKENDS[name](settings)) as port:
        url = f"ws://127.0.0.1:{port}/api/websocket/ws?token=forged"
        async with websockets.connect(url, open_timeout=GUARD_S) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                async with asyncio.timeout(GUARD_S):
                    await ws.recv()
        assert ws.close_code == 4401


async def test_serial_runs_one_turn_at_a_time_across_users(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    backend = serial_app.SerialBackend(settings)
    log: list[tuple[str, dict[str, Any]]] = []
    async with (
        serving(backend) as port,
        connected(port, settings, "u1", log) as first,
        connected(port, settings, "u2", log) as second,
    ):
        chat = {"type": "chat", "text": "tell me something"}
        await asyncio.gather(first.send(chat), second.send(chat))
        runs = await asyncio.gather(first.until_final(), second.until_final())
    for events in runs:
        check_run(events)
    order = [(user, event["type"]) for user, event in log]
    leader = next(user for user, kind in order if kind == "run.started")
    other = "u2" if leader == "u1" else "u1"
    assert order.index((leader, "run.completed")) < order.index((other, "run.started"))
    assert backend.max_active == 1
    assert backend.stats()["turns"]["completed"] == 2


async def test_single_process_cancels_and_resumes_like_raychat(tmp_path: Path) -> None:
    async with one_user(single_process_app.InProcessBackend(settings_for(tmp_path)), "dave") as c:
        await c.send({"type": "chat", "text": "tell me a story in 2000 words"})
        accepted = await c.recv()
        run_id = accepted["run_id"]
        seen = [accepted]
        while seen[-1]["type"] != "message.delta":
            seen.append(await c.recv())
        await c.send({"type": "cancel", "run_id": run_id})
        seen += await c.until_final()
        await c.send({"type": "resume", "run_id": run_id, "after_seq": 2})
        replayed = [await c.recv() for _ in seen[2:]]
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["type"] == "run.cancelled"
    deltas = "".join(e["text"] for e in seen if e["type"] == "message.delta")
    assert deltas == seen[-1]["text"]
    assert replayed == seen[2:]
    with sqlite3.connect(tmp_path / "bench.db") as db:
        stored = db.execute(
            "SELECT status, text FROM messages WHERE run_id = ? AND role = ?", (run_id, "assistant")
        ).fetchall()
    assert stored == [("cancelled", deltas)]
