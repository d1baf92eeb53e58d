"""No user reaches another's data through any endpoint or message; fuzzed frames never
break a socket or the service."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.chat_client import ChatClient, RunLog
from tests.integration.conftest import Service

pytestmark = pytest.mark.ray

OWNER, INTRUDER = "u-iso-owner", "u-iso-intruder"


@pytest.fixture(scope="module")
def owners_run(service: Service) -> RunLog:
    """A finished run of OWNER, with a todo and a preference stored."""

    async def make() -> RunLog:
        async with ChatClient(service.ws_url(OWNER)) as client:
            await client.turn("remind me to call the bank", session_id="secret")
            await client.turn("I prefer window seats", session_id="secret")
            return await client.turn("my private plans", session_id="secret")

    return asyncio.run(make())


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/api/history", {"session_id": "secret"}),
        ("POST", f"/api/websocket/performance/refresh_user_context/{OWNER}", {}),
        ("GET", "/api/websocket/performance/stats", {}),
        ("POST", "/api/websocket/performance/cleanup", {}),
    ],
)
async def test_http_endpoints_never_show_another_users_data(
    service: Service, owners_run: RunLog, method: str, path: str, params: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {service.token(INTRUDER)}"}
    async with httpx.AsyncClient(base_url=service.http) as http:
        response = await http.request(method, path, params=params, headers=headers)
    if response.status_code == 200:  # history: the intruder's own (empty) session
        assert response.json()["messages"] == []
    else:
        assert response.status_code == 403
    assert "bank" not in response.text and "window" not in response.text


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "resume", "run_id": "<run>", "after_seq": 0},
        {"type": "cancel", "run_id": "<run>"},
    ],
)
async def test_messages_never_reach_another_users_run(
    service: Service, owners_run: RunLog, frame: dict[str, Any]
) -> None:
    frame = {k: owners_run.run_id if v == "<run>" else v for k, v in frame.items()}
    async with ChatClient(service.ws_url(INTRUDER)) as intruder:
        await intruder.send(frame)
        error = await intruder.next_of("error")
        assert error["code"] == "not_found"
        # Chatting in a session of the same name is the intruder's own session.
        run = await intruder.turn("what do you know about me", session_id="secret")
    assert run.final is not None and "bank" not in run.final["text"]
    assert "window" not in run.final["text"]
    assert all(owners_run.run_id != e.get("run_id") for e in intruder.received)


ALLOWED_ERRORS = {
    "bad_json",
    "bad_request",
    "unknown_type",
    "too_large",
    "not_found",
    "rate_limited",
    "busy",
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
frame_shapes = st.one_of(
    st.text(max_size=200),  # arbitrary text, mostly not JSON
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["chat", "cancel", "resume", "ping", "nope", ""])},
        optional={
            "text": json_values,
            "run_id": json_values,
            "after_seq": json_values,
            "session_id": json_values,
            "on_busy": json_values,
            "client_msg_id": json_values,
            "agent": json_values,
        },
    ).map(json.dumps),
    st.binary(max_size=64),
)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(frame_shapes, min_size=1, max_size=15))
def test_fuzzed_frames_get_an_answer_and_others_keep_chatting(
    service: Service, frames: list[str | bytes]
) -> None:
    async def run() -> None:
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        async with websockets.connect(service.ws_url("u-fuzz")) as fuzz:
            for frame in frames:
                await fuzz.send(frame)
            # Frames of a socket are handled in order: once the sentinel is answered,
            # every fuzzed frame was, and the socket is still open.
            await fuzz.send(json.dumps({"type": "resume", "run_id": sentinel}))
            async with asyncio.timeout(60):
                while True:
                    event = json.loads(await fuzz.recv())
                    if event["type"] == "error":
                        assert event["code"] in ALLOWED_ERRORS, event
                        if event.get("ref") == sentinel:
                            break
        async with ChatClient(service.ws_url("u-fuzz-bystander")) as other:
            run = await other.turn("still fine?")
            assert run.final is not None and run.final["type"] == "run.completed"

    asyncio.run(run())
