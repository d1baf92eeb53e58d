"""The `model="openai"` path of the agent manager against a real local HTTP endpoint.

The scripted fake endpoint (`tests/fake_openai.py`) speaks the Chat
Completions wire format (SSE when `stream` is true) and is served by uvicorn on
127.0.0.1 inside the test's own event loop. The agent manager talks to it
through `make_model`, i.e. the Agents SDK's `OpenAIChatCompletionsModel` and a
real `AsyncOpenAI` client, so the whole request/stream/parse path is exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from agents import RunConfig, Runner
from pydantic import SecretStr, ValidationError

from actors.agent_manager import AgentManager, make_model
from actors.assistant_agents import ChatContext, build_agents
from actors.events import (
    AGENT_HANDOFF,
    FINAL_TYPES,
    MESSAGE_DELTA,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_STARTED,
    TOOL_CALLED,
    TOOL_OUTPUT,
    Event,
)
from actors.runs import ASSISTANT, ORGANIZER, RunOutcome, RunSpec
from actors.sdk_events import EventTranslator
from config import Settings
from tests.fake_openai import (
    DEFAULT_PIECES,
    OK,
    FakeChatCompletions,
    drop_mid_stream,
    error_mid_stream,
    hold,
    http_error,
    serve,
    text,
    tool_calls,
)
from tests.unit.fakes import FakeObserver, FakeServices, FakeStore

API_KEY = "sk-test-raychat-123"
MODEL_NAME = "fake-chat-model"
REPLY_PIECES = list(DEFAULT_PIECES)
REPLY = "".join(REPLY_PIECES)
REPLICA = "replica-1"
POLL_BOUND_S = 10.0  # safety bound only: a poll that sees nothing this long means a hang

FAIL_500 = http_error(500)  # the client may retry (retry-after-ms: 1 keeps it fast)
FAIL_500_FINAL = http_error(500, retry=False)  # x-should-retry: false
ABORT_MID_STREAM = drop_mid_stream(after=2)  # two content chunks, then the connection drops


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
    async with serve(fake) as base_url:
        yield Endpoint(fake=fake, base_url=base_url)


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


async def run_and_collect(
    manager: AgentManager,
    run: RunSpec,
    when: Callable[[list[Event]], bool] | None = None,
    then: Callable[[], Awaitable[Any]] | None = None,
) -> tuple[RunOutcome, list[Event]]:
    """Run a turn while long-polling its events, as an ingress replica would.

    Once the events so far satisfy `when`, `then` is awaited (once).
    """
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
            if when is not None and then is not None and when(events):
                when = None
                await then()
        assert when is None, f"the run ended before the condition held: {events}"
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

        pool = client._client._transport._pool  # the HTTP client's connection pool

        async def pool_holds(active: int, queued: int) -> None:
            while True:
                states = [request.is_queued() for request in pool._requests]
                if (states.count(False), states.count(True)) == (active, queued):
                    return
                await asyncio.sleep(0.01)  # poll the pool, bounded by the caller's wait_for

        # Two streams reach the endpoint and hold their connections; the other three
        # were sent too and wait in the pool for a connection (without the cap each would
        # open its own), so none of them can reach the endpoint while the two hold.
        await asyncio.wait_for(in_flight(2), POLL_BOUND_S)
        await asyncio.wait_for(pool_holds(active=2, queued=3), POLL_BOUND_S)
        assert fake.in_flight == 2 and len(fake.bodies) == 2
        endpoint.fake.release.set()
        replies = await asyncio.wait_for(asyncio.gather(*streams), POLL_BOUND_S)
    finally:
        await model.close()
    assert replies == [REPLY] * 5
    assert (endpoint.fake.max_in_flight, len(endpoint.fake.bodies)) == (2, 5)


def tool_names(body: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in body.get("tools", [])}


def non_deltas(events: list[Event]) -> list[tuple[Any, ...]]:
    """The events other than deltas, without run_id and seq."""
    return [
        tuple(v for k, v in e.items() if k not in ("run_id", "seq"))
        for e in events
        if e["type"] != MESSAGE_DELTA
    ]


async def assert_disconnected(fake: FakeChatCompletions) -> None:
    """The endpoint saw the client of its one request go away (bounded wait)."""
    closed = await fake.until(lambda: fake.ends == ["disconnected"], POLL_BOUND_S)
    assert closed, f"the upstream stream is not closed: {fake.ends}"


async def test_streamed_tool_calls_and_a_handoff_become_run_events(
    endpoint: Endpoint, harness: Harness
) -> None:
    # The assistant says a word and hands off; the organizer calls add_todo; with the
    # tool's output in the next request, the organizer answers in text.
    endpoint.fake.script = [
        tool_calls(("transfer_to_organizer", {}), pieces=("One moment. ",)),
        tool_calls(("add_todo", {"text": "buy milk"})),
        text("Added", " 'buy milk'", " to your list."),
    ]

    outcome, events = await run_and_collect(
        harness.manager, spec("run-tools", "remind me to buy milk", 21)
    )

    reply = "One moment. Added 'buy milk' to your list."  # the text of every model turn
    todo = {"id": 1, "text": "buy milk", "done": False}
    assert non_deltas(events) == [
        (RUN_STARTED, ASSISTANT),
        (AGENT_HANDOFF, ORGANIZER),
        (TOOL_CALLED, "add_todo", {"text": "buy milk"}),
        (TOOL_OUTPUT, "add_todo", todo),
        (RUN_COMPLETED, 21, reply),
    ]
    assert delta_text(events) == reply
    assert outcome == RunOutcome("run-tools", "completed", reply, 21)
    assert harness.store.finished == [(21, reply, "completed", events[-1]["seq"], None)]
    assert harness.observer.invalidated == ["user-1"]  # the tool changed the user's context

    # Each request carried what the one before produced.
    first, second, third = endpoint.fake.bodies
    assert "transfer_to_organizer" in tool_names(first)
    assert "add_todo" in tool_names(second)
    assert [m["role"] for m in second["messages"]][-2:] == ["assistant", "tool"]
    (call,) = third["messages"][-2]["tool_calls"]
    assert call["function"]["name"] == "add_todo"
    assert third["messages"][-1]["role"] == "tool"
    assert third["messages"][-1]["tool_call_id"] == call["id"]
    assert orjson.loads(third["messages"][-1]["content"]) == todo


async def test_a_429_is_retried_and_the_run_succeeds(endpoint: Endpoint, harness: Harness) -> None:
    assert harness.max_retries == Settings(model="openai", openai_model="m").openai_max_retries > 0
    rate_limited = http_error(429, retry_after_ms=50)
    endpoint.fake.script = [rate_limited]

    outcome, events = await run_and_collect(harness.manager, spec("run-429", "hi", 30))

    assert endpoint.fake.outcomes == [rate_limited, OK]  # both requests reached the endpoint
    assert endpoint.fake.bodies[0] == endpoint.fake.bodies[1]
    assert outcome == RunOutcome("run-429", "completed", REPLY, 30)
    assert non_deltas(events) == [(RUN_STARTED, ASSISTANT), (RUN_COMPLETED, 30, REPLY)]


async def test_without_retries_a_429_fails_the_run(endpoint: Endpoint) -> None:
    settings = openai_settings(endpoint.base_url).model_copy(update={"openai_max_retries": 0})
    store = FakeStore()
    manager = AgentManager(settings, services=FakeServices(), store=store)
    endpoint.fake.script = [http_error(429)]
    try:
        outcome, events = await run_and_collect(manager, spec("run-429-once", "hi", 31))
    finally:
        await manager.stop()

    assert len(endpoint.fake.served) == 1
    assert events[-1]["type"] == RUN_FAILED
    assert events[-1]["error"]["code"] == "model_error"
    assert store.finished == [(31, "", "failed", events[-1]["seq"], "model_error")]


async def test_an_error_event_mid_stream_fails_the_run_and_keeps_the_partial_text(
    endpoint: Endpoint, harness: Harness
) -> None:
    endpoint.fake.script = [error_mid_stream(after=3)]

    outcome, events = await run_and_collect(harness.manager, spec("run-mid-500", "tell me", 32))

    partial = "".join(REPLY_PIECES[:3])
    assert endpoint.fake.ends == ["errored"]  # a started stream is not retried
    assert delta_text(events) == partial
    assert events[-1]["type"] == RUN_FAILED
    assert events[-1]["error"]["code"] == "model_error"
    assert outcome == RunOutcome("run-mid-500", "failed", partial, 32)
    assert harness.store.finished == [(32, partial, "failed", events[-1]["seq"], "model_error")]


async def test_cancel_closes_the_upstream_stream(endpoint: Endpoint, harness: Harness) -> None:
    endpoint.fake.script = [hold(after=2)]  # two chunks, then the stream stays open
    partial = "".join(REPLY_PIECES[:2])
    run = spec("run-cancel", "tell me a long story", 33)

    outcome, events = await run_and_collect(
        harness.manager,
        run,
        when=lambda seen: delta_text(seen) == partial,
        then=lambda: harness.manager.cancel(run.run_id),
    )

    assert events[-1] == {
        "type": RUN_CANCELLED,
        "message_id": 33,
        "text": partial,
        "run_id": run.run_id,
        "seq": events[-1]["seq"],
    }
    assert outcome == RunOutcome(run.run_id, "cancelled", partial, 33)
    assert harness.store.finished == [(33, partial, "cancelled", events[-1]["seq"], None)]
    # The endpoint saw the client go away: the held stream was cancelled, not left open.
    fake = endpoint.fake
    await assert_disconnected(fake)
    assert fake.in_flight == 0


async def test_cancel_before_the_first_token_closes_the_upstream_stream(
    endpoint: Endpoint, harness: Harness
) -> None:
    fake = endpoint.fake
    fake.script = [hold(after=0)]  # the stream opens, then no token comes
    run = spec("run-cancel-early", "think hard", 34)
    collecting = asyncio.ensure_future(run_and_collect(harness.manager, run))
    try:
        arrived = await fake.until(lambda: len(fake.served) == 1, POLL_BOUND_S)
        assert arrived, "the request never reached the endpoint"
        assert await harness.manager.cancel(run.run_id)
        outcome, events = await asyncio.wait_for(collecting, POLL_BOUND_S)
    finally:
        collecting.cancel()

    assert outcome == RunOutcome(run.run_id, "cancelled", "", 34)
    assert non_deltas(events) == [(RUN_STARTED, ASSISTANT), (RUN_CANCELLED, 34, "")]
    await assert_disconnected(fake)


async def test_a_run_timeout_fails_the_run_and_closes_the_upstream_stream(
    endpoint: Endpoint,
) -> None:
    settings = openai_settings(endpoint.base_url).model_copy(update={"run_timeout_s": 0.5})
    store = FakeStore()
    manager = AgentManager(settings, services=FakeServices(), store=store)
    fake = endpoint.fake
    fake.script = [hold(after=1)]  # one chunk, then nothing until the client goes away
    try:
        outcome, events = await run_and_collect(manager, spec("run-slow", "think hard", 35))
        await assert_disconnected(fake)
    finally:
        await manager.stop()

    partial = REPLY_PIECES[0]
    assert events[-1]["type"] == RUN_FAILED
    assert events[-1]["error"]["code"] == "timeout"
    assert outcome == RunOutcome("run-slow", "failed", partial, 35)
    assert store.finished == [(35, partial, "failed", events[-1]["seq"], "timeout")]


async def test_an_error_of_ours_mid_run_closes_the_upstream_stream(
    endpoint: Endpoint, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failure in the manager's own handling of an event (here: translating it)
    # ends the run as failed and must not leave the SDK run and its stream going.
    translate = EventTranslator.translate

    def fail_on_text(self: EventTranslator, event: Any) -> list[Event]:
        events = translate(self, event)
        if any(e["type"] == MESSAGE_DELTA for e in events):
            raise RuntimeError("translation failed")
        return events

    monkeypatch.setattr(EventTranslator, "translate", fail_on_text)
    fake = endpoint.fake
    fake.script = [hold(after=1)]

    outcome, events = await run_and_collect(harness.manager, spec("run-ours", "hi", 36))

    assert events[-1]["type"] == RUN_FAILED
    assert outcome == RunOutcome("run-ours", "failed", "", 36)
    await assert_disconnected(fake)
