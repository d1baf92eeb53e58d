"""The `model="openai"` path of the agent manager against a real local HTTP endpoint.

A small Starlette app speaks the Chat Completions wire format (SSE when
`stream` is true, one JSON body otherwise) and is served by uvicorn on
127.0.0.1 inside the test's own event loop. The agent manager talks to it
through `make_model`, i.e. the Agents SDK's `OpenAIChatCompletionsModel` and a
real `AsyncOpenAI` client, so the whole request/stream/parse path is exercised.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from agents import RunConfig, Runner
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from actors.agent_manager import AgentManager, RunOutcome, RunSpec, make_model
from actors.assistant_agents import ChatContext, build_agents
from actors.events import (
    FINAL_TYPES,
    MESSAGE_DELTA,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_STARTED,
    Event,
)
from actors.runs import ASSISTANT
from config import Settings
from tests.unit.fakes import FakeObserver, FakeServices, FakeStore

API_KEY = "sk-test-raychat-123"
MODEL_NAME = "fake-chat-model"
REPLY_PIECES = ["Hello", " from", " the", " fake", " endpoint", ", friend!"]
REPLY = "".join(REPLY_PIECES)
REPLICA = "replica-1"
SERVER_START_BOUND_S = 10.0  # safety bound only; startup normally takes a few loop turns
POLL_BOUND_S = 10.0  # safety bound only: a poll that sees nothing this long means a hang

# What the fake endpoint does with one request (consumed in order, then OK forever).
OK = "ok"
FAIL_500 = "fail-500"  # HTTP 500; the client may retry (retry-after-ms: 1 keeps it fast)
FAIL_500_FINAL = "fail-500-final"  # HTTP 500 with x-should-retry: false
ABORT_MID_STREAM = "abort-mid-stream"  # two content chunks, then the connection drops


class _AbortStream(Exception):
    """Raised inside the SSE body to make uvicorn drop the connection mid-response."""


# -- the fake OpenAI-compatible endpoint ---------------------------------------


@dataclass
class FakeChatCompletions:
    """A scripted `/v1/chat/completions` endpoint that records what it is sent."""

    pieces: list[str] = field(default_factory=lambda: list(REPLY_PIECES))
    script: list[str] = field(default_factory=list)
    always_send_usage: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    # Streams: each chunk waits for `release` when set (streams stay open meanwhile).
    release: asyncio.Event | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def reply(self) -> str:
        return "".join(self.pieces)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        self.authorizations.append(request.headers.get("authorization"))
        behaviour = self.script.pop(0) if self.script else OK
        self.outcomes.append(behaviour)
        completion_id = f"chatcmpl-fake-{next(self._ids)}"
        model = body.get("model", "")
        if behaviour in (FAIL_500, FAIL_500_FINAL):
            headers = (
                {"x-should-retry": "false"}
                if behaviour == FAIL_500_FINAL
                else {"retry-after-ms": "1"}
            )
            error = {"message": "boom", "type": "server_error", "param": None, "code": None}
            return JSONResponse({"error": error}, status_code=500, headers=headers)
        if not body.get("stream"):
            return JSONResponse(self._completion(completion_id, model))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        abort = behaviour == ABORT_MID_STREAM
        return StreamingResponse(
            self._sse(completion_id, model, include_usage or self.always_send_usage, abort),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": 7,
            "completion_tokens": len(self.pieces),
            "total_tokens": 7 + len(self.pieces),
        }

    def _completion(self, completion_id: str, model: str) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": self._usage(),
        }

    def _chunk(
        self,
        completion_id: str,
        model: str,
        delta: dict[str, Any] | None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> str:
        chunk: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    async def _sse(
        self, completion_id: str, model: str, usage: bool, abort: bool
    ) -> AsyncIterator[str]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        async with self.arrivals:
            self.arrivals.notify_all()
        try:
            async for chunk in self._sse_chunks(completion_id, model, usage, abort):
                if self.release is not None:
                    await self.release.wait()
                yield chunk
        finally:
            self.in_flight -= 1

    async def _sse_chunks(
        self, completion_id: str, model: str, usage: bool, abort: bool
    ) -> AsyncIterator[str]:
        yield self._chunk(completion_id, model, {"role": "assistant", "content": ""})
        for index, piece in enumerate(self.pieces):
            if abort and index == 2:
                raise _AbortStream("the fake endpoint drops the connection mid-stream")
            yield self._chunk(completion_id, model, {"content": piece})
        yield self._chunk(completion_id, model, {}, finish_reason="stop")
        if usage:
            yield self._chunk(completion_id, model, None, usage=self._usage())
        yield "data: [DONE]\n\n"


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@dataclass
class Endpoint:
    fake: FakeChatCompletions
    base_url: str


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    fake = FakeChatCompletions()
    server = _Server(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.get_running_loop().create_task(server.serve(), name="fake-openai-server")
    ready = asyncio.get_running_loop().create_task(server.ready.wait())
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=SERVER_START_BOUND_S, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            if task.done():
                task.result()  # surface the startup error
            raise RuntimeError("the fake OpenAI server did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Endpoint(fake=fake, base_url=f"http://127.0.0.1:{port}/v1")
    finally:
        ready.cancel()
        server.should_exit = True
        await task


@dataclass
class Harness:
    manager: AgentManager
    store: FakeStore
    observer: FakeObserver

    @property
    def max_retries(self) -> int:
        return int(self.manager.model._client.max_retries)  # type: ignore[attr-defined]


def openai_settings(base_url: str) -> Settings:
    return Settings(
        model="openai",
        openai_base_url=base_url,
        openai_api_key=SecretStr(API_KEY),
        openai_model=MODEL_NAME,
    )


@pytest.fixture
async def harness(endpoint: Endpoint) -> AsyncIterator[Harness]:
    store, observer = FakeStore(), FakeObserver()
    manager = AgentManager(
        openai_settings(endpoint.base_url),
        services=FakeServices(),
        store=store,
        observer=observer,
    )
    try:
        yield Harness(manager, store, observer)
    finally:
        await manager.stop()  # closes the model and its HTTP client


def spec(run_id: str, text: str, reply_message_id: int) -> RunSpec:
    return RunSpec(
        run_id=run_id,
        user_id="user-1",
        session_id="session-1",
        text=text,
        reply_message_id=reply_message_id,
        subscribers=[(REPLICA, 0)],
    )


async def run_and_collect(manager: AgentManager, run: RunSpec) -> tuple[RunOutcome, list[Event]]:
    """Run a turn while long-polling its events, as an ingress replica would."""
    task = asyncio.get_running_loop().create_task(manager.run_turn(run))
    events: list[Event] = []
    try:
        while not events or events[-1]["type"] not in FINAL_TYPES:
            batch = await manager.poll(REPLICA, POLL_BOUND_S)
            assert batch, f"no event for {POLL_BOUND_S}s; got so far: {events}"
            for _user_id, run_id, first_seq, encoded, _end in batch:
                assert run_id == run.run_id
                decoded = [orjson.loads(item) for item in encoded]
                assert decoded[0]["seq"] == first_seq
                events.extend(decoded)
        outcome = await task
    finally:
        if not task.done():  # only when an assertion above failed
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["run_id"] == run.run_id for e in events)
    return outcome, events


def user_texts(body: dict[str, Any]) -> list[Any]:
    return [m.get("content") for m in body["messages"] if m.get("role") == "user"]


def delta_text(events: list[Event]) -> str:
    return "".join(e["text"] for e in events if e["type"] == MESSAGE_DELTA)


# -- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("always_send_usage", [False, True], ids=["no-usage", "usage-chunk"])
async def test_streamed_turn_through_the_openai_endpoint(
    endpoint: Endpoint, harness: Harness, always_send_usage: bool
) -> None:
    endpoint.fake.always_send_usage = always_send_usage
    text = "what is on my list today?"

    outcome, events = await run_and_collect(harness.manager, spec("run-ok", text, 41))

    # What reached the endpoint.
    assert len(endpoint.fake.bodies) == 1
    body = endpoint.fake.bodies[0]
    assert body["model"] == MODEL_NAME
    assert body["stream"] is True
    assert text in user_texts(body)
    assert body["messages"][0]["role"] == "system"
    tool_names = {tool["function"]["name"] for tool in body.get("tools", [])}
    assert "transfer_to_organizer" in tool_names
    assert endpoint.fake.authorizations == [f"Bearer {API_KEY}"]

    # What the replica saw.
    types = [e["type"] for e in events]
    assert types[0] == RUN_STARTED
    assert events[0]["agent"] == ASSISTANT
    assert MESSAGE_DELTA in types
    assert set(types[1:-1]) == {MESSAGE_DELTA}
    assert delta_text(events) == REPLY
    final = events[-1]
    assert final["type"] == RUN_COMPLETED
    assert final["text"] == REPLY
    assert final["message_id"] == 41

    # What was stored and reported.
    assert outcome == RunOutcome("run-ok", "completed", REPLY, 41)
    assert harness.store.finished == [(41, REPLY, "completed", final["seq"], None)]
    assert harness.observer.ended == [("user-1", outcome)]
    assert harness.manager.counts["completed"] == 1


async def test_http_500_fails_the_run_and_the_manager_recovers(
    endpoint: Endpoint, harness: Harness
) -> None:
    # The AsyncOpenAI client built by make_model retries 5xx answers itself
    # (max_retries, 2 by default); fail exactly that many + 1 requests so the
    # run fails, and answer with retry-after-ms: 1 so the retries are immediate.
    attempts = harness.max_retries + 1
    endpoint.fake.script = [FAIL_500] * attempts

    outcome, events = await run_and_collect(harness.manager, spec("run-500", "hello?", 7))

    assert len(endpoint.fake.bodies) == attempts
    assert endpoint.fake.outcomes == [FAIL_500] * attempts
    assert [e["type"] for e in events] == [RUN_STARTED, RUN_FAILED]
    assert events[-1]["error"]["code"] == "model_error"
    assert outcome == RunOutcome("run-500", "failed", "", 7)
    assert harness.store.finished == [(7, "", "failed", events[-1]["seq"], "model_error")]
    assert harness.observer.ended == [("user-1", outcome)]

    # The endpoint is healthy again: the same manager serves the next turn.
    outcome, events = await run_and_collect(harness.manager, spec("run-after-500", "again", 8))
    assert outcome == RunOutcome("run-after-500", "completed", REPLY, 8)
    assert events[-1]["type"] == RUN_COMPLETED
    assert delta_text(events) == REPLY
    assert harness.store.finished[-1] == (8, REPLY, "completed", events[-1]["seq"], None)
    assert harness.manager.counts == {"started": 2, "completed": 1, "failed": 1, "cancelled": 0}


async def test_non_retryable_500_fails_after_one_request(
    endpoint: Endpoint, harness: Harness
) -> None:
    endpoint.fake.script = [FAIL_500_FINAL]

    outcome, events = await run_and_collect(harness.manager, spec("run-500-final", "hi", 9))

    assert endpoint.fake.outcomes == [FAIL_500_FINAL]
    assert events[-1]["type"] == RUN_FAILED
    assert events[-1]["error"]["code"] == "model_error"
    assert outcome.status == "failed"
    assert harness.store.finished == [(9, "", "failed", events[-1]["seq"], "model_error")]


async def test_one_transient_500_is_absorbed_by_the_client_retry(
    endpoint: Endpoint, harness: Harness
) -> None:
    if harness.max_retries == 0:
        pytest.skip("make_model disables the client's retries")
    endpoint.fake.script = [FAIL_500]

    outcome, events = await run_and_collect(harness.manager, spec("run-retry", "hi", 10))

    assert endpoint.fake.outcomes == [FAIL_500, OK]
    assert outcome == RunOutcome("run-retry", "completed", REPLY, 10)
    assert [e["type"] for e in events if e["type"] != MESSAGE_DELTA] == [RUN_STARTED, RUN_COMPLETED]


async def test_connection_dropped_mid_stream_fails_the_run(
    endpoint: Endpoint, harness: Harness
) -> None:
    endpoint.fake.script = [ABORT_MID_STREAM]

    outcome, events = await run_and_collect(harness.manager, spec("run-abort", "tell me", 11))

    # A stream that already started is not retried by the client.
    assert endpoint.fake.outcomes == [ABORT_MID_STREAM]
    partial = "".join(REPLY_PIECES[:2])
    assert events[0]["type"] == RUN_STARTED
    assert delta_text(events) == partial
    assert events[-1]["type"] == RUN_FAILED
    assert events[-1]["error"]["code"] == "model_error"
    assert outcome == RunOutcome("run-abort", "failed", partial, 11)
    assert harness.store.finished == [(11, partial, "failed", events[-1]["seq"], "model_error")]

    outcome, events = await run_and_collect(harness.manager, spec("run-after-abort", "again", 12))
    assert outcome == RunOutcome("run-after-abort", "completed", REPLY, 12)
    assert events[-1] == {
        "type": RUN_COMPLETED,
        "message_id": 12,
        "text": REPLY,
        "run_id": "run-after-abort",
        "seq": events[-1]["seq"],
    }


async def test_non_streamed_answer_through_make_model(endpoint: Endpoint) -> None:
    model = make_model(openai_settings(endpoint.base_url))
    try:
        agent = build_agents(model)[ASSISTANT]
        context = ChatContext("user-2", FakeServices())
        result = await Runner.run(
            agent, "say hello", context=context, run_config=RunConfig(tracing_disabled=True)
        )
    finally:
        await model.close()

    assert result.final_output == REPLY
    (body,) = endpoint.fake.bodies
    assert body["model"] == MODEL_NAME
    assert not body.get("stream")
    assert "say hello" in user_texts(body)
    assert endpoint.fake.authorizations == [f"Bearer {API_KEY}"]


def test_openai_model_requires_a_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYCHAT_OPENAI_MODEL", raising=False)
    monkeypatch.delenv("RAYCHAT_MODEL", raising=False)
    with pytest.raises(ValidationError, match="RAYCHAT_OPENAI_MODEL"):
        Settings(model="openai")
    with pytest.raises(ValidationError, match="RAYCHAT_OPENAI_MODEL"):
        Settings(model="openai", openai_model="")
    assert Settings(model="openai", openai_model=MODEL_NAME).openai_model == MODEL_NAME


async def test_requests_beyond_the_concurrency_cap_wait_instead_of_flooding(
    endpoint: Endpoint,
) -> None:
    settings = openai_settings(endpoint.base_url).model_copy(update={"openai_max_concurrency": 2})
    model = make_model(settings)
    client = model._client  # type: ignore[attr-defined]
    endpoint.fake.release = asyncio.Event()  # every stream holds until released

    async def one_stream() -> str:
        stream = await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return "".join(parts)

    try:
        streams = [asyncio.ensure_future(one_stream()) for _ in range(5)]
        fake = endpoint.fake

        async def in_flight(count: int) -> None:
            async with fake.arrivals:
                await fake.arrivals.wait_for(lambda: fake.in_flight >= count)

        # Two streams reach the endpoint and hold their connections; three wait. Without
        # the cap a third arrives within milliseconds on loopback: 1 s is a wide margin.
        await asyncio.wait_for(in_flight(2), POLL_BOUND_S)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(in_flight(3), 1.0)
        assert len(fake.bodies) == 2
        endpoint.fake.release.set()
        replies = await asyncio.wait_for(asyncio.gather(*streams), POLL_BOUND_S)
    finally:
        await model.close()  # type: ignore[attr-defined]
    assert replies == [REPLY] * 5
    assert (endpoint.fake.max_in_flight, len(endpoint.fake.bodies)) == (2, 5)
