"""`RAYCHAT_MODEL=openai` end to end: Serve, the actors and a real OpenAI-compatible endpoint.

The scripted fake endpoint (`tests/fake_openai.py`) runs in a thread of the
test process on 127.0.0.1; the agent actors, in their own processes, reach it
over TCP. The app under test is a second Serve app at `/raychat-fake-model` with its
own actors (namespace), SQLite file and `model="openai"` settings: the session
app's actors run the simulated model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from actors.runs import ORGANIZER
from tests.databases import Database
from tests.fake_openai import (
    DEFAULT_PIECES,
    FakeChatCompletions,
    error_mid_stream,
    handoff,
    hold,
    serve_in_thread,
    text,
    tool_calls,
)
from tests.integration.chat_client import ChatClient, RunLog
from tests.integration.conftest import Cluster, Service, own_service

pytestmark = pytest.mark.ray

API_KEY = "sk-fake-e2e"
MODEL_NAME = "fake-e2e-model"
WAIT_BOUND_S = 20.0  # safety bound only


@dataclass
class FakeModelApp:
    """The app whose model is the fake endpoint, and the endpoint's record."""

    fake: FakeChatCompletions
    service: Service

    @property
    def database(self) -> Database:
        return self.service.database

    def ws_url(self, user_id: str) -> str:
        return self.service.ws_url(user_id)

    async def history(self, user_id: str, session_id: str) -> list[tuple[str, str, str]]:
        """(role, text, status) of each message of the session, through `/api/history`."""
        headers = {"Authorization": f"Bearer {self.service.token(user_id)}"}
        base = self.service.http
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            response = await http.get("/api/history", params={"session_id": session_id})
        response.raise_for_status()
        return [(m["role"], m["text"], m["status"]) for m in response.json()["messages"]]


@pytest.fixture(scope="module")
def fake_model_app(
    ray_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FakeModelApp]:
    fake = FakeChatCompletions()
    with (
        serve_in_thread(fake) as base_url,
        own_service(
            ray_cluster,
            tmp_path_factory.mktemp("raychat-fake-model"),
            "raychat-fake-model",
            replicas=1,
            shards=1,
            agent_actors=1,
            persistence_writers=1,
            run_grace_s=2.0,
            model="openai",
            openai_base_url=base_url,
            openai_api_key=SecretStr(API_KEY),
            openai_model=MODEL_NAME,
        ) as service,
    ):
        yield FakeModelApp(fake, service)


def non_deltas(run: RunLog) -> list[tuple[Any, ...]]:
    """The run's events other than deltas, without run_id and seq."""
    return [
        tuple(v for k, v in e.items() if k not in ("run_id", "seq"))
        for e in run.events
        if e["type"] not in ("message.delta", "run.accepted")
    ]


async def test_a_chat_streams_a_handoff_and_a_tool_call_and_lands_in_history(
    fake_model_app: FakeModelApp,
) -> None:
    app, fake = fake_model_app, fake_model_app.fake
    fake.script = [
        handoff(ORGANIZER),
        tool_calls(("add_todo", {"text": "buy milk"})),
        text("Added", " 'buy milk'", " to your list."),
    ]
    reply = "Added 'buy milk' to your list."
    first_request = len(fake.served)

    async with ChatClient(app.ws_url("u-fm-tools")) as client:
        run = await client.turn("remind me to buy milk", session_id="s-tools")

    assert run.seqs == list(range(1, len(run.seqs) + 1))
    assert run.events[0]["type"] == "run.accepted"
    (todo_id,) = app.database.rows("SELECT id FROM todos WHERE user_id = 'u-fm-tools'")[0]
    assert non_deltas(run) == [
        ("run.started", "assistant"),
        ("agent.handoff", ORGANIZER),
        ("tool.called", "add_todo", {"text": "buy milk"}),
        ("tool.output", "add_todo", {"id": todo_id, "text": "buy milk", "done": False}),
        ("run.completed", run.events[-1]["message_id"], reply),
    ]
    assert run.deltas_text == reply
    # Three requests reached the endpoint: assistant, organizer, organizer with the output.
    served = fake.served[first_request:]
    assert [s.end for s in served] == ["completed"] * 3
    assert {s.body["model"] for s in served} == {MODEL_NAME}
    assert {s.authorization for s in served} == {f"Bearer {API_KEY}"}
    assert served[2].body["messages"][-1]["role"] == "tool"
    assert await app.history("u-fm-tools", "s-tools") == [
        ("user", "remind me to buy milk", "stored"),
        ("assistant", reply, "completed"),
    ]


async def test_cancel_closes_the_upstream_stream_and_keeps_the_partial_reply(
    fake_model_app: FakeModelApp,
) -> None:
    app, fake = fake_model_app, fake_model_app.fake
    fake.script = [hold(after=2)]  # two chunks, then the stream stays open
    partial = "".join(DEFAULT_PIECES[:2])
    first_request = len(fake.served)

    async with ChatClient(app.ws_url("u-fm-cancel")) as client:
        run_id = await client.start("tell me a long story", session_id="s-cancel")
        while run_id not in client.runs or client.runs[run_id].deltas_text != partial:
            await client.recv()
        assert fake.served[first_request].end == "open"
        await client.send({"type": "cancel", "run_id": run_id})
        run = await client.until_final(run_id)

    assert run.final is not None
    assert (run.final["type"], run.final["text"]) == ("run.cancelled", partial)
    held = fake.served[first_request]
    closed = await fake.until(lambda: held.end == "disconnected", WAIT_BOUND_S)
    assert closed, f"the upstream stream is {held.end}"
    assert len(fake.served) == first_request + 1
    assert await app.history("u-fm-cancel", "s-cancel") == [
        ("user", "tell me a long story", "stored"),
        ("assistant", partial, "cancelled"),
    ]


async def test_an_error_mid_stream_fails_the_run_with_the_partial_reply_stored(
    fake_model_app: FakeModelApp,
) -> None:
    app, fake = fake_model_app, fake_model_app.fake
    fake.script = [error_mid_stream(after=3)]
    partial = "".join(DEFAULT_PIECES[:3])

    async with ChatClient(app.ws_url("u-fm-error")) as client:
        run = await client.turn("tell me something", session_id="s-error")

    assert run.final is not None and run.final["type"] == "run.failed"
    assert run.final["error"]["code"] == "model_error"
    assert run.deltas_text == partial
    assert await app.history("u-fm-error", "s-error") == [
        ("user", "tell me something", "stored"),
        ("assistant", partial, "failed"),
    ]
    assert app.database.rows(
        "SELECT error_code FROM messages WHERE user_id = 'u-fm-error' AND role = 'assistant'"
    ) == [("model_error",)]
