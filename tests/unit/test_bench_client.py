"""The simulated user (and the scenarios) against a tiny fake server speaking PROTOCOL.md.

The fake answers each `chat` by a script picked from its text; no sleeps, no
timing asserts: latencies are checked for presence and order only.
"""

from __future__ import annotations

import dataclasses
import http
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from benchmarks.client import ClientOptions, SimUser, TurnRecord, ws_url
from benchmarks.metrics import Floor
from benchmarks.report import validate_results
from benchmarks.scenarios import RUNNERS, run_startup
from benchmarks.workload import BenchConfig, Context, TurnSink, connect_all

DELTAS = ("Hello ", "there, ", "friend.")


async def _run_script(ws: ServerConnection, frame: dict[str, Any], run_no: int) -> None:
    text = frame.get("text", "")
    run_id = f"run-{run_no}"
    seq = 0

    async def emit(kind: str, **fields: Any) -> None:
        nonlocal seq
        seq += 1
        await ws.send(json.dumps({"type": kind, "run_id": run_id, "seq": seq, **fields}))

    if text == "error":
        await ws.send(json.dumps({"type": "error", "code": "rate_limited", "message": "slow down"}))
        return
    if text == "silent":
        return
    if text == "close":
        await ws.close(1011, "internal error")
        return
    await ws.send(json.dumps({"type": "pong"}))  # noise before the run must be ignored
    await emit("run.accepted", session_id="default", client_msg_id=frame.get("client_msg_id"))
    await emit("run.started", agent="assistant")
    if text == "fail":
        await emit("run.failed", error={"code": "internal", "message": "boom"})
        return
    if text.startswith("remind me"):
        await emit("tool.called", name="add_todo", arguments="{}")
        await emit("tool.output", name="add_todo", output="{}")
    await ws.send(json.dumps({"type": "message.delta", "run_id": "other", "seq": 7, "text": "x"}))
    for piece in DELTAS:
        await emit("message.delta", text=piece)
    if text == "gap":
        seq += 1
    final = "something else" if text == "mismatch" else "".join(DELTAS)
    await emit("run.completed", message_id=1, text=final)


async def _handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    if "token=bad" in ws.request.path:
        await ws.close(4401, "unauthenticated")
        return
    runs = 0
    async for raw in ws:
        frame = json.loads(raw)
        if frame["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        elif frame["type"] == "chat":
            runs += 1
            await _run_script(ws, frame, runs)


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    if "token=busy" in request.path:
        return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
    return None


@pytest.fixture
async def fake_server() -> AsyncIterator[str]:
    """The base URL ("http://127.0.0.1:PORT") of a fake server on a free port."""
    server: Server
    async with serve(_handler, "127.0.0.1", 0, process_request=_process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}"


def _user(base: str, token: str = "good", **options: Any) -> SimUser:
    return SimUser(ws_url(base, token), f"user-{token}", ClientOptions(**options))


def test_ws_url() -> None:
    assert ws_url("http://127.0.0.1:8000", "T") == "ws://127.0.0.1:8000/api/websocket/ws?token=T"
    assert ws_url("https://h/", "T") == "wss://h/api/websocket/ws?token=T"


async def test_completed_turn_records_ttft_e2e_and_deltas(fake_server: str) -> None:
    user = _user(fake_server)
    assert await user.connect() is None
    first = await user.turn("hello")
    second = await user.turn("remind me to buy milk", kind="tool")
    await user.close()

    assert first.ok and first.error is None and first.cold
    assert first.deltas == len(DELTAS) and first.chars == len("".join(DELTAS))
    assert first.accepted_ms is not None and first.started_ms is not None
    assert first.ttft_ms is not None and first.e2e_ms is not None
    assert 0 <= first.accepted_ms <= first.started_ms <= first.ttft_ms <= first.e2e_ms
    assert second.ok and not second.cold and second.kind == "tool" and second.tool_calls == 1
    assert user.connect_ms is not None and user.waiting_since is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("error", "error:rate_limited"),
        ("fail", "run.failed:internal"),
        ("gap", "protocol:seq"),
        ("mismatch", "protocol:text"),
        ("close", "close:1011"),
    ],
)
async def test_failed_turns_record_their_kind(fake_server: str, text: str, kind: str) -> None:
    user = _user(fake_server)
    record = await user.turn(text)  # connects on first use
    await user.close()
    assert record.error == kind
    assert not record.ok


async def test_failed_run_keeps_its_timestamps(fake_server: str) -> None:
    user = _user(fake_server)
    record = await user.turn("fail")
    await user.close()
    assert record.accepted_ms is not None and record.ttft_ms is None and record.e2e_ms is None


async def test_turn_timeout_then_next_turn_still_works(fake_server: str) -> None:
    user = _user(fake_server, turn_timeout_s=0.2)
    silent = await user.turn("silent")
    after = await user.turn("hello")
    await user.close()
    assert silent.error == "timeout" and silent.e2e_ms is None
    assert after.ok


async def test_http_status_on_connect(fake_server: str) -> None:
    user = _user(fake_server, token="busy")
    assert await user.connect() == "connect:503"
    record = await user.turn("hello")
    assert record.error == "connect:503" and record.sent_at is None


async def test_unauthenticated_close_code(fake_server: str) -> None:
    user = _user(fake_server, token="bad")
    assert await user.connect() is None  # the handshake succeeds; the server closes at once
    record = await user.turn("hello")
    assert record.error == "close:4401"
    assert not user.connected


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    user = _user(f"http://127.0.0.1:{port}", connect_timeout_s=5)
    assert await user.connect() == "connect:refused"


async def test_protocol_ping(fake_server: str) -> None:
    user = _user(fake_server)
    assert await user.ping() == "closed"
    await user.connect()
    assert await user.ping() is None
    await user.close()


async def test_connect_all_tallies_failures(fake_server: str) -> None:
    users = [_user(fake_server), _user(fake_server, token="busy")]
    sink = TurnSink("test")
    connected = await connect_all(users, sink)
    for user in users:
        await user.close()
    assert connected == users[:1]
    assert sink.errors == {"connect:503": 1}


def test_turn_sink_counts_errors_and_window() -> None:
    sink = TurnSink("test", planned=3, ttft_limit_ms=700)
    sink.add(TurnRecord("u", sent_at=1.0, done_at=2.0, ttft_ms=300.0, e2e_ms=1000.0))
    sink.add(TurnRecord("u", sent_at=1.5, done_at=4.0, error="timeout"))
    assert sink.errors == {"timeout": 1}
    assert sink.missed == 1  # the failed turn had no first token
    assert sink.unfinished() == 1
    assert sink.window() == (1.0, 4.0)


@dataclass
class FakeSystem:
    """A stand-in RunningSystem: the fake server; this test process plays the server process."""

    base_url: str
    name: str = "fake"
    stats_calls: list[int] = field(default_factory=list)

    def token(self, user_id: str) -> str:
        return "good"

    def server_pids(self) -> list[int]:
        return [os.getpid()]

    def stats(self) -> dict[str, Any] | None:
        self.stats_calls.append(1)
        active = 1 if len(self.stats_calls) == 1 else 0  # busy once: the first point waits
        return {
            "runs": {"active": active, "queued": 0},
            "persistence": {"lag_ms": {"p50": 1.0, "p99": 2.0}},
        }


TINY = BenchConfig(
    users=3,
    chat_users=(2, 3),
    stagger_users=3,
    stagger_window_s=0.1,
    warm_chats=2,
    turns=2,
    think_s=0.0,
    duration_s=0.3,
    ramp=(2, 4),
    ramp_turns=2,
    coldwarm_users=2,
    idle_sockets=3,
    idle_hold_s=0.0,
    turn_timeout_s=10.0,
    point_timeout_s=30.0,
    settle_max_s=0.5,
    tool_fraction=0.5,
)


async def test_every_scenario_against_a_stand_in_system(fake_server: str) -> None:
    system = FakeSystem(fake_server)
    ctx = Context(system, TINY, Floor.of(200, 40, 50))
    startup = {"ready_s": 0.5, **await run_startup(ctx)}
    scenarios = {name: await runner(ctx) for name, runner in RUNNERS.items()}
    doc = {
        "schema": "raychat-bench/1",
        "client": {},
        "sim": {"floor_ms": 1000.0},
        "settings": {"systems": ["fake"], "scenarios": list(RUNNERS)},
        "systems": {"fake": {"status": "ok", "startup": startup, "scenarios": scenarios}},
        "targets": [],
    }
    assert validate_results(doc) == []

    small, chat = scenarios["chat"]["points"]  # one point per chat_users count
    assert (small["users"], small["turns"]["planned"]) == (2, 4)
    assert chat["turns"] == {"planned": 6, "sent": 6, "completed": 6, "failed": 0}
    assert set(chat["by_kind"]) == {"plain", "tool"}  # tool_fraction 0.5 of 6 turns
    assert chat["persistence_lag_ms"] == {"p50": 1.0, "p99": 2.0}
    assert (small["settle"]["in_flight_before"], small["settle"]["in_flight_at_start"]) == (1, 0)
    assert set(chat["cpu_by_kind"]) <= {"other"}  # this test process plays the server
    stagger = scenarios["stagger"]["points"][0]
    assert (stagger["scenario"], stagger["users"], stagger["start_window_s"]) == ("stagger", 3, 0.1)
    assert stagger["turns"]["completed"] == 6 and stagger["errors"]["total"] == 0
    assert scenarios["ramp"]["users_at_slo"] in (0, 2, 4)
    assert [p["users"] for p in scenarios["ramp"]["points"]][:1] == [2]
    cold, warm = scenarios["coldwarm"]["points"]
    assert (cold["scenario"], cold["turns"]["planned"]) == ("cold", 2)
    assert (warm["scenario"], warm["turns"]["planned"]) == ("warm", 2)
    idle = scenarios["idle"]["points"][0]
    assert idle["sockets"] == {"requested": 3, "opened": 3, "held": 3}
    assert scenarios["burst"]["points"][0]["turns"]["completed"] > 0


async def test_startup_times_the_first_chat_then_warm_ones(fake_server: str) -> None:
    ctx = Context(FakeSystem(fake_server), TINY, Floor.of(200, 40, 50))
    startup = await run_startup(ctx)
    assert startup["first_chat_error"] is None and startup["warm_chat_errors"] == 0
    assert startup["warm_chats"] == 2 and len(startup["warm_chat_ttft_ms_each"]) == 2
    first, warm = startup["first_chat_ttft_ms"], startup["warm_chat_ttft_ms"]
    assert first is not None and warm is not None
    assert startup["first_chat_e2e_ms"] >= first
    assert startup["first_x_warm_ttft"] == (round(first / warm, 3) if warm else None)


@dataclass
class StuckSystem(FakeSystem):
    """A stand-in that always reports a run in flight."""

    def stats(self) -> dict[str, Any] | None:
        return {"runs": {"active": 1, "queued": 0}}


async def test_a_system_still_busy_is_restarted_before_the_point(fake_server: str) -> None:
    fresh = FakeSystem(fake_server, name="fresh", stats_calls=[1])  # past its one busy answer
    ctx = Context(
        StuckSystem(fake_server, name="stuck"),
        dataclasses.replace(TINY, settle_max_s=0.0, chat_users=(3,)),
        Floor.of(200, 40, 50),
        restart=lambda: fresh,
    )
    chat = (await RUNNERS["chat"](ctx))["points"][0]
    assert ctx.restarts == 1 and ctx.system is fresh
    assert chat["settle"]["restarted"] is True
    assert chat["settle"]["in_flight_before"] == 1 and chat["settle"]["in_flight_at_start"] == 0
    assert chat["system"] == "fresh" and chat["turns"]["completed"] == 6
