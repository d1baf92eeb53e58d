"""SimulatedModel: streamed deltas on a fake clock, tool calls, and a real Agents SDK run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agents import Agent, ModelSettings, ModelTracing, RunConfig, Runner, Tool, function_tool
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseTextDeltaEvent,
)

from actors.sim_model import SimulatedModel
from actors.sim_plan import tokenize


class FakeTime:
    """A clock whose `sleep` records the request and moves the clock; nothing really waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@function_tool
def add_todo(text: str) -> str:
    """Add a todo."""
    return json.dumps({"id": 1, "text": text, "done": False})


def model(fake: FakeTime, *, ttft_s: float = 0.5, tps: float = 20.0, n: int = 6) -> SimulatedModel:
    return SimulatedModel(
        ttft_s=ttft_s, tokens_per_s=tps, reply_tokens=n, sleep=fake.sleep, clock=fake
    )


async def stream(sim: SimulatedModel, text: str, tools: list[Tool] | None = None) -> list[Any]:
    events = []
    async for event in sim.stream_response(
        "You are a test.",
        text,
        ModelSettings(),
        tools or [],
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    ):
        events.append(event)
    return events


def output_text(event: ResponseCompletedEvent) -> str:
    [message] = event.response.output
    assert isinstance(message, ResponseOutputMessage)
    return "".join(part.text for part in message.content if part.type == "output_text")


@pytest.mark.parametrize("n", [1, 6, 25])
async def test_text_reply_streams_n_deltas_then_completed(n: int) -> None:
    fake = FakeTime()
    events = await stream(model(fake, n=n), "tell me something")
    *deltas, completed = events
    assert len(deltas) == n
    assert all(isinstance(e, ResponseTextDeltaEvent) for e in deltas)
    assert isinstance(completed, ResponseCompletedEvent)
    text = "".join(e.delta for e in deltas)
    assert output_text(completed) == text
    assert len(tokenize(text)) == n
    assert [e.sequence_number for e in events] == list(range(n + 1))
    assert {e.item_id for e in deltas} == {completed.response.output[0].id}


@pytest.mark.parametrize(("ttft_s", "tps", "n"), [(0.5, 20.0, 6), (0.2, 50.0, 40), (1.0, 3.0, 1)])
async def test_sleeps_add_up_to_ttft_plus_token_time(ttft_s: float, tps: float, n: int) -> None:
    fake = FakeTime()
    start = fake.now
    await stream(model(fake, ttft_s=ttft_s, tps=tps, n=n), "pace me")
    assert sum(fake.sleeps) == pytest.approx(ttft_s + (n - 1) / tps)
    assert fake.now - start == pytest.approx(ttft_s + (n - 1) / tps)
    assert all(s > 0 for s in fake.sleeps)


async def test_first_sleep_is_the_ttft() -> None:
    fake = FakeTime()
    await stream(model(fake, ttft_s=0.75, tps=10.0, n=3), "x")
    assert fake.sleeps[0] == pytest.approx(0.75)
    assert fake.sleeps[1:] == pytest.approx([0.1, 0.1])


async def test_no_sleep_when_ttft_is_zero_and_one_token() -> None:
    fake = FakeTime()
    await stream(model(fake, ttft_s=0.0, tps=10.0, n=1), "x")
    assert fake.sleeps == []


async def test_tokens_emitted_grows_by_n_per_reply() -> None:
    fake = FakeTime()
    sim = model(fake, n=6)
    await stream(sim, "one")
    assert sim.tokens_emitted == 6
    await stream(sim, "two")
    assert sim.tokens_emitted == 12
    assert sim.calls == 2


async def test_tokens_emitted_stops_when_consumer_stops() -> None:
    fake = FakeTime()
    sim = model(fake, n=10)
    seen = 0
    generator = sim.stream_response(
        None,
        "stop early",
        ModelSettings(),
        [],
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    async for _event in generator:
        seen += 1
        if seen == 3:
            break
    await generator.aclose()  # type: ignore[attr-defined]
    assert sim.tokens_emitted == 3


async def test_same_input_gives_same_reply() -> None:
    first = await stream(model(FakeTime()), "deterministic?")
    second = await stream(model(FakeTime()), "deterministic?")
    assert output_text(first[-1]) == output_text(second[-1])


async def test_tool_intent_yields_only_a_function_call() -> None:
    fake = FakeTime()
    sim = model(fake, ttft_s=0.3)
    events = await stream(sim, "remind me to buy milk", tools=[add_todo])
    [completed] = events
    assert isinstance(completed, ResponseCompletedEvent)
    [item] = completed.response.output
    assert isinstance(item, ResponseFunctionToolCall)
    assert item.name == "add_todo"
    assert json.loads(item.arguments) == {"text": "buy milk"}
    assert item.call_id
    assert sim.tokens_emitted == 0
    assert sum(fake.sleeps) == pytest.approx(0.3)


async def test_get_response_waits_for_the_whole_reply() -> None:
    fake = FakeTime()
    sim = model(fake, ttft_s=0.5, tps=10.0, n=5)
    response = await sim.get_response(
        None,
        "hello",
        ModelSettings(),
        [],
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    [message] = response.output
    assert isinstance(message, ResponseOutputMessage)
    assert len(tokenize(message.content[0].text)) == 5  # type: ignore[union-attr]
    assert sum(fake.sleeps) == pytest.approx(0.5 + 5 / 10.0)
    assert sim.tokens_emitted == 5
    assert response.usage.output_tokens == 5


# -- through the real Agents SDK ---------------------------------------------


async def test_runner_run_returns_the_simulated_reply() -> None:
    sim = SimulatedModel(ttft_s=0, tokens_per_s=1e6, reply_tokens=7)
    agent = Agent(name="assistant", instructions="Be helpful.", model=sim)
    result = await Runner.run(agent, "hello", run_config=RunConfig(tracing_disabled=True))
    assert isinstance(result.final_output, str)
    assert len(tokenize(result.final_output)) == 7
    assert len(result.final_output.split()) == 7
    assert sim.tokens_emitted == 7


async def test_runner_streamed_deltas_make_the_final_output() -> None:
    sim = SimulatedModel(ttft_s=0, tokens_per_s=1e6, reply_tokens=7)
    agent = Agent(name="assistant", instructions="Be helpful.", model=sim)
    result = Runner.run_streamed(agent, "hello", run_config=RunConfig(tracing_disabled=True))
    deltas = [
        event.data.delta
        async for event in result.stream_events()
        if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent)
    ]
    assert len(deltas) == 7
    assert "".join(deltas) == result.final_output


async def test_runner_calls_the_real_tool_then_confirms() -> None:
    calls: list[str] = []

    @function_tool
    def add_todo(text: str) -> str:
        """Add a todo."""
        calls.append(text)
        return json.dumps({"id": 3, "text": text, "done": False})

    sim = SimulatedModel(ttft_s=0, tokens_per_s=1e6, reply_tokens=7)
    agent = Agent(name="assistant", instructions="Be helpful.", model=sim, tools=[add_todo])
    result = await Runner.run(
        agent, "remind me to water plants", run_config=RunConfig(tracing_disabled=True)
    )
    assert calls == ["water plants"]
    assert result.final_output == "Done: I added “water plants” to your todos (#3)."
