"""The core path end to end: real Ray, Serve, WebSocket client and SQLite file."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.integration.chat_client import ChatClient, RunLog
from tests.integration.conftest import APP_NAME, BOTH_DATABASES, Service, deploy, wait_ready

pytestmark = [pytest.mark.ray, BOTH_DATABASES]


def assert_well_formed(run: RunLog) -> None:
    """seq runs 1..n with no gap and the deltas concatenate to the final text."""
    assert run.seqs == list(range(1, len(run.seqs) + 1)), run.seqs
    types = [e["type"] for e in run.events]
    assert types[0] == "run.accepted" and types[1] == "run.started", types
    assert run.final is not None and run.final["type"] == "run.completed", run.final
    assert run.deltas_text == run.final["text"] != ""


async def test_two_users_chat_at_once(service: Service) -> None:
    async with (
        ChatClient(service.ws_url("u-alpha")) as alpha,
        ChatClient(service.ws_url("u-beta")) as beta,
    ):
        await alpha.chat("hello from alpha", session_id="s1")
        await beta.chat("hello from beta", session_id="s1")
        runs = await asyncio.gather(alpha.until_final(), beta.until_final())
    for run in runs:
        assert_well_formed(run)
    assert runs[0].final and runs[1].final
    assert runs[0].final["text"] != runs[1].final["text"]  # seeded by each user's text
    stored = service.query(
        "SELECT text, status FROM messages WHERE run_id = ? AND role = 'assistant'", runs[0].run_id
    )
    assert stored == [(runs[0].final["text"], "completed")]


async def test_other_user_is_not_served_after_a_long_run(service: Service) -> None:
    """B's whole turn completes while A's long reply is still streaming."""
    async with (
        ChatClient(service.ws_url("u-long")) as long_user,
        ChatClient(service.ws_url("u-short")) as short_user,
    ):
        # A's reply would take 50 s: it cannot end before this test ends it.
        long_id = await long_user.start("tell me a story in 5000 words")
        await long_user.next_of("message.delta")
        long_task = asyncio.create_task(long_user.until_final(long_id))
        short_run = await short_user.turn("a quick question")
        # Only now is A's run stopped: had B been served after A, B's turn could not have
        # completed before this cancel, and A's run would have ended `run.completed`.
        await long_user.send({"type": "cancel", "run_id": long_id})
        long_run = await long_task
    assert_well_formed(short_run)
    assert long_run.seqs == list(range(1, len(long_run.seqs) + 1))
    assert long_run.final is not None and long_run.final["type"] == "run.cancelled"
    assert long_run.deltas_text == long_run.final["text"] != ""
    assert len(long_run.final["text"].split()) < 5000


async def test_todo_tool_is_stored_and_invalidates_context(service: Service) -> None:
    async with ChatClient(service.ws_url("u-milk")) as client:
        before = await client.turn("what do you know about me")
        assert before.final and "buy milk" not in before.final["text"]  # context now cached
        tool_run = await client.turn("remind me to buy milk")
        types = [e["type"] for e in tool_run.events]
        assert "agent.handoff" in types and "tool.called" in types and "tool.output" in types
        called = next(e for e in tool_run.events if e["type"] == "tool.called")
        assert called["name"] == "add_todo" and called["arguments"] == {"text": "buy milk"}
        assert_well_formed(tool_run)
        assert service.query("SELECT text, done FROM todos WHERE user_id = 'u-milk'") == [
            ("buy milk", 0)
        ]
        after = await client.turn("what do you know about me")
        assert after.final and "buy milk" in after.final["text"]


async def test_history_survives_a_serve_app_restart(service: Service) -> None:
    headers = {"Authorization": f"Bearer {service.token('u-hist')}"}
    async with ChatClient(service.ws_url("u-hist")) as client:
        first = await client.turn("first question", session_id="h")
        second = await client.turn("second question", session_id="h")
    async with httpx.AsyncClient(base_url=service.http, headers=headers) as http:
        response = await http.get("/api/history", params={"session_id": "h"})
    assert response.status_code == 200
    body = response.json()
    expected = [
        ("user", "first question", "stored"),
        ("assistant", first.final["text"] if first.final else None, "completed"),
        ("user", "second question", "stored"),
        ("assistant", second.final["text"] if second.final else None, "completed"),
    ]
    assert [(m["role"], m["text"], m["status"]) for m in body["messages"]] == expected

    from ray import serve

    serve.delete(APP_NAME)
    deploy(service.settings)
    wait_ready(service.http)
    async with httpx.AsyncClient(base_url=service.http, headers=headers) as http:
        again = await http.get("/api/history", params={"session_id": "h", "limit": 3})
        older = await http.get(
            "/api/history", params={"session_id": "h", "before": again.json()["messages"][0]["id"]}
        )
    assert [m["text"] for m in again.json()["messages"]] == [e[1] for e in expected[1:]]
    assert [m["text"] for m in older.json()["messages"]] == ["first question"]


async def test_socket_without_valid_token_is_closed_4401(service: Service) -> None:
    for url in (service.ws_url(None), service.ws_url(None) + "?token=not-a-token"):
        async with websockets.connect(url) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_http_endpoints_enforce_admin_and_owner(service: Service) -> None:
    user = {"Authorization": f"Bearer {service.token('u-auth')}"}
    admin = {"Authorization": f"Bearer {service.token('root', admin=True)}"}
    async with httpx.AsyncClient(base_url=service.http) as http:
        stats = "/api/websocket/performance/stats"
        cleanup = "/api/websocket/performance/cleanup"
        refresh = "/api/websocket/performance/refresh_user_context/{}"
        assert (await http.get(stats)).status_code == 401
        assert (await http.get(stats, headers=user)).status_code == 403
        assert (await http.post(cleanup, headers=user)).status_code == 403
        assert (await http.post(refresh.format("someone-else"), headers=user)).status_code == 403
        own = await http.post(refresh.format("u-auth"), headers=user)
        assert own.status_code == 200 and own.json()["user_id"] == "u-auth"
        assert (await http.post(refresh.format("u-auth"), headers=admin)).status_code == 200
        assert (await http.get("/api/history")).status_code == 401
        token_param = await http.get("/api/history", params={"token": service.token("u-auth")})
        assert token_param.status_code == 200
        cleaned = await http.post(cleanup, headers=admin)
        assert cleaned.status_code == 200 and set(cleaned.json()["removed"]) >= {
            "expired_contexts",
            "run_buffers",
        }
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_bad_frames_get_errors_and_the_socket_keeps_working(service: Service) -> None:
    async with ChatClient(service.ws_url("u-bad")) as client:
        for frame, code in (
            ("{not json", "bad_json"),
            ({"type": "dance"}, "unknown_type"),
            ({"type": "chat", "text": ""}, "bad_request"),
            ({"type": "chat"}, "bad_request"),
            ({"type": "cancel", "run_id": "nope"}, "not_found"),
        ):
            await client.send(frame)
            event = await client.next_of("error")
            assert event["code"] == code, (frame, event)
        await client.send({"type": "ping"})
        assert (await client.next_of("pong"))["type"] == "pong"
        assert_well_formed(await client.turn("still here?"))


async def test_stats_have_the_protocol_shape_and_agents_are_shared(service: Service) -> None:
    admin = {"Authorization": f"Bearer {service.token('root', admin=True)}"}
    async with httpx.AsyncClient(base_url=service.http, headers=admin) as http:
        # Sockets of earlier tests may still be uncounting (disconnects reach the shards
        # asynchronously): start from a settled count.
        for _ in range(100):
            before = (await http.get("/api/websocket/performance/stats")).json()
            if before["connections"]["active"] == 0:
                break
            await asyncio.sleep(0.1)  # poll for the condition, bounded
        assert before["connections"]["active"] == 0

        async def one_user(i: int) -> RunLog:
            async with ChatClient(service.ws_url(f"u-many-{i}")) as client:
                return await client.turn(f"hi number {i}")

        runs = await asyncio.gather(*(one_user(i) for i in range(12)))
        after = (await http.get("/api/websocket/performance/stats")).json()
    for run in runs:
        assert_well_formed(run)
    for key, fields in {
        "connections": {"active", "opened", "closed"},
        "runs": {
            "active",
            "queued",
            "completed",
            "failed",
            "cancelled",
            "processing_ms",
            "ttft_ms",
        },
        "agent_manager": {"agents", "lookups", "instances_created"},
        "session_cache": {"size", "hits", "misses", "hit_rate"},
        "user_context_cache": {"size", "hits", "misses", "hit_rate", "expired", "ttl_s"},
        "persistence": {"queue_depth", "written", "batches", "lag_ms"},
    }.items():
        assert fields <= set(after[key]), (key, after[key])
    assert set(after["runs"]["ttft_ms"]) == {"p50", "p99"}
    assert after["runs"]["completed"] - before["runs"]["completed"] >= 12
    assert after["connections"]["opened"] - before["connections"]["opened"] >= 12
    assert (
        after["agent_manager"]["instances_created"] == before["agent_manager"]["instances_created"]
    )
    assert after["agent_manager"]["lookups"] - before["agent_manager"]["lookups"] >= 12
    assert sorted(after["agent_manager"]["agents"]) == ["assistant", "organizer"]
    assert all({"shard", "users"} <= set(s) for s in after["shards"])
    # The replica reports the ingress in front of it and the actor counts in use.
    assert after["ingress"]["proxy"] == service.ingress
    assert after["ingress"]["shards"] == len(after["shards"]) == service.settings.shards
    assert after["ingress"]["agent_actors"] == service.settings.agent_actors
    assert after["persistence"]["written"] > before["persistence"]["written"]
    # Every socket above is closed again: the shards' count of open sockets returns.
    async with httpx.AsyncClient(base_url=service.http, headers=admin) as http:
        for _ in range(100):
            now = (await http.get("/api/websocket/performance/stats")).json()
            if now["connections"]["active"] == before["connections"]["active"]:
                break
            await asyncio.sleep(0.1)  # disconnects reach the shards asynchronously
        assert now["connections"]["active"] == before["connections"]["active"]


def test_the_default_path_puts_haproxy_in_front(service: Service) -> None:
    """On Linux, `serve_app`'s default gives Serve's HAProxy ingress: it owns the HTTP port."""
    import psutil

    if service.ingress != "haproxy":
        pytest.skip("HAProxy cannot run here, or RAY_SERVE_ENABLE_HA_PROXY=0 asked for the proxy")
    listeners = {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == service.port
    }
    names = {psutil.Process(pid).name() for pid in listeners if pid is not None}
    assert names == {"haproxy"}, names
