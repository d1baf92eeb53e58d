"""The minimal baseline, served in-process by uvicorn and driven over real WebSockets.

No Ray. As in test_baselines.py the app runs in the test's event loop on a
socket bound and listening before the server starts, so clients may connect at
once. One test starts it the way the benchmark does (`python -m ... --port`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from actors.auth import TokenCodec
from benchmarks.baselines import minimal_app
from tests.unit.test_baselines import serving_app

GUARD_S = 30.0  # upper bound for anything that must happen
SECRET = "minimal-test-secret-" + "x" * 32
FINAL = {"run.completed", "run.cancelled", "run.failed"}
ROOT = Path(__file__).resolve().parents[2]


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The variables the benchmark passes: fast simulated model, fresh SQLite file."""
    return {
        "RAYCHAT_SECRET": SECRET,
        "RAYCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/minimal.db",
        "RAYCHAT_DATA_DIR": str(tmp_path / "data"),
        "RAYCHAT_TOKEN_ISSUER": "raychat",
        "RAYCHAT_MODEL": "simulated",
        "RAYCHAT_SIM_TTFT_MS": "20",
        "RAYCHAT_SIM_TOKENS_PER_S": "500",
        "RAYCHAT_SIM_REPLY_TOKENS": "10",
        **extra,
    }


def token(user: str, secret: str = SECRET) -> str:
    """A token as raychat and the benchmark issue them."""
    return TokenCodec(secret, issuer="raychat", ttl_s=3600).issue(user)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[int]:
    """Serve `app` with uvicorn in this loop; yield its port."""
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    async with serving_app(config) as port:
        yield port


@asynccontextmanager
async def connected(
    port: int, user: str, tok: str | None = None
) -> AsyncIterator[ClientConnection]:
    url = f"ws://127.0.0.1:{port}/api/websocket/ws?token={tok or token(user)}"
    async with websockets.connect(url, open_timeout=GUARD_S) as ws:
        yield ws


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(GUARD_S):
        event: dict[str, Any] = json.loads(await ws.recv())
    return event


async def turn(ws: ClientConnection, text: str, **fields: Any) -> list[dict[str, Any]]:
    """Send a chat; its events up to the final one."""
    await ws.send(json.dumps({"type": "chat", "text": text, **fields}))
    events = [await recv(ws)]
    while events[-1]["type"] not in FINAL:
        events.append(await recv(ws))
    return events


def rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "minimal.db") as db:
        query = "SELECT id, run_id, user_id, session_id, role, text, status FROM messages"
        return db.execute(query + " ORDER BY id").fetchall()


async def test_a_chat_streams_in_order_and_both_rows_are_stored(tmp_path: Path) -> None:
    app = minimal_app.build_app(env_for(tmp_path))
    async with serving(app) as port, connected(port, "alice") as ws:
        events = await turn(ws, "hello there", session_id="s1", client_msg_id="m1")
    run_id = events[0]["run_id"]
    assert {e["run_id"] for e in events} == {run_id}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[:2] == ["run.accepted", "run.started"] and types[-1] == "run.completed"
    assert set(types[2:-1]) == {"message.delta"}
    assert events[0]["session_id"] == "s1" and events[0]["client_msg_id"] == "m1"
    assert events[0]["duplicate"] is False and events[1]["agent"] == "assistant"
    text = "".join(e["text"] for e in events if e["type"] == "message.delta")
    assert text and text == events[-1]["text"] and len(text.split()) == 10
    reply_id = events[-1]["message_id"]
    assert [r[1:] for r in rows(tmp_path)] == [
        (run_id, "alice", "s1", "user", "hello there", "done"),
        (run_id, "alice", "s1", "assistant", text, "completed"),
    ]
    assert rows(tmp_path)[1][0] == reply_id
    stats = app.state.chat.stats()
    assert stats["runs"] == {"active": 0, "queued": 0, "completed": 1, "failed": 0, "cancelled": 0}
    assert stats["persistence"]["written"] == 2


async def test_first_delta_goes_at_once_and_the_rest_is_coalesced(tmp_path: Path) -> None:
    # A window far longer than any run: only the first delta goes before the end, however
    # slowly a busy machine streams the tokens.
    app = minimal_app.build_app(env_for(tmp_path, RAYCHAT_COALESCE_MS="600000"))
    async with serving(app) as port, connected(port, "bob") as ws:
        events = await turn(ws, "tell me something")
    deltas = [e["text"] for e in events if e["type"] == "message.delta"]
    assert len(deltas) == 2  # the first token at once, then the rest at the end
    assert len(deltas[0].split()) == 1 and len(deltas[1].split()) == 9


async def test_a_bad_token_is_closed_4401(tmp_path: Path) -> None:
    async with serving(minimal_app.build_app(env_for(tmp_path))) as port:
        for bad in ("forged", token("mallory", secret="another-secret-" + "y" * 32)):
            async with connected(port, "mallory", bad) as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await recv(ws)
            assert ws.close_code == 4401
        headers = {"Authorization": f"Bearer {token('erin')}"}
        url = f"ws://127.0.0.1:{port}/api/websocket/ws"
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send('{"type": "ping"}')
            assert await recv(ws) == {"type": "pong"}


async def test_bad_frames_get_errors_and_the_socket_keeps_working(tmp_path: Path) -> None:
    async with (
        serving(minimal_app.build_app(env_for(tmp_path))) as port,
        connected(port, "carol") as ws,
    ):
        await ws.send("{not json")
        assert (await recv(ws))["code"] == "bad_json"
        await ws.send('{"type": "dance"}')
        assert (await recv(ws))["code"] == "unknown_type"
        await ws.send('{"type": "chat", "text": "   "}')
        assert (await recv(ws))["code"] == "bad_request"
        await ws.send('{"type": "ping"}')
        assert await recv(ws) == {"type": "pong"}
        assert (await turn(ws, "still there?"))[-1]["type"] == "run.completed"


async def test_a_model_error_fails_the_run_and_keeps_the_user_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = minimal_app.build_app(env_for(tmp_path))

    async def broken(*_args: Any, **_kwargs: Any) -> AsyncIterator[Any]:
        raise RuntimeError("the model is down")
        yield  # an async generator, like the real one

    monkeypatch.setattr(app.state.chat.agent.model, "stream_response", broken)
    async with serving(app) as port, connected(port, "dave") as ws:
        events = await turn(ws, "hello")
    assert [e["type"] for e in events] == ["run.accepted", "run.started", "run.failed"]
    assert events[-1]["error"]["code"] == "model_error"
    assert [r[4:] for r in rows(tmp_path)] == [("user", "hello", "done")]
    assert app.state.chat.runs["failed"] == 1


async def test_closing_the_socket_cancels_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = minimal_app.build_app(env_for(tmp_path))
    chat = app.state.chat
    ended = asyncio.Event()
    run = chat.run

    async def run_then_signal(*args: Any) -> None:
        try:
            await run(*args)
        finally:
            ended.set()

    monkeypatch.setattr(chat, "run", run_then_signal)
    async with serving(app) as port:
        async with connected(port, "frank") as ws:
            await ws.send(json.dumps({"type": "chat", "text": "a story in 2000 words"}))
            while (await recv(ws))["type"] != "message.delta":
                pass
        async with asyncio.timeout(GUARD_S):
            await ended.wait()
        emitted = chat.agent.model.tokens_emitted
    assert chat.runs["cancelled"] == 1 and chat.connections["active"] == 0
    assert emitted < 2000  # the model stopped with the run
    assert [r[4] for r in rows(tmp_path)] == ["user"]  # no reply row for a cancelled run


def test_it_starts_as_the_benchmark_starts_it(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **env_for(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "benchmarks.baselines.minimal_app", "--port", str(port)]
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + GUARD_S
        while True:  # poll readiness, as benchmarks/systems.py does
            assert process.poll() is None, "the app exited"
            assert time.monotonic() < deadline, "no 200 from /readyz in time"
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/api/websocket/ws?token={token('grace')}"
        with ws_connect(url, open_timeout=GUARD_S) as ws:
            ws.send(json.dumps({"type": "chat", "text": "hi"}))
            kinds = [json.loads(ws.recv(timeout=GUARD_S))["type"]]
            while kinds[-1] not in FINAL:
                kinds.append(json.loads(ws.recv(timeout=GUARD_S))["type"])
        assert kinds[-1] == "run.completed"
        with urllib.request.urlopen(base + "/stats", timeout=5) as response:
            stats = json.loads(response.read())
        assert stats["connections"]["opened"] == 1 and stats["runs"]["completed"] == 1
        assert {"active", "queued"} <= stats["runs"].keys()
    finally:
        process.terminate()
        process.wait(timeout=GUARD_S)


def test_without_a_secret_one_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    env = {"RAYCHAT_DATA_DIR": str(tmp_path / "data")}
    secret = minimal_app.load_secret(env)
    assert len(secret) >= 32 and minimal_app.load_secret(env) == secret
    assert (tmp_path / "data" / "secret").stat().st_mode & 0o777 == 0o600
