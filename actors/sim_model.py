"""The simulated model: an Agents SDK `Model` with set TTFT, speed and reply length.

It answers through the SDK's real paths (function calls, handoffs, streamed
text deltas) following `sim_plan.plan_reply`, so everything runs offline and
benchmarks are repeatable. `tokens_emitted` counts streamed tokens so a test
can see that a cancelled run stopped the model.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from agents import Handoff, Model, ModelResponse, ModelSettings, ModelTracing, Tool, Usage
from agents.agent_output import AgentOutputSchemaBase
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

from actors.sim_plan import CallPlan, Plan, TextPlan, plan_reply

Sleep = Callable[[float], Awaitable[None]]


class SimulatedModel(Model):
    """A deterministic, offline model with a configurable time profile."""

    def __init__(
        self,
        *,
        ttft_s: float,
        tokens_per_s: float,
        reply_tokens: int,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttft_s = ttft_s
        self.tokens_per_s = tokens_per_s
        self.reply_tokens = reply_tokens
        self._sleep = sleep
        self._clock = clock
        self.calls = 0
        self.tokens_emitted = 0

    def _plan(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff[Any, Any]],
    ) -> Plan:
        self.calls += 1
        items: list[Any] = [{"role": "user", "content": input}] if isinstance(input, str) else input
        return plan_reply(
            system_instructions,
            items,
            tool_names=[tool.name for tool in tools],
            handoff_names=[handoff.tool_name for handoff in handoffs],
            reply_tokens=self.reply_tokens,
        )

    @staticmethod
    def _output(plan: Plan, item_id: str) -> list[TResponseOutputItem]:
        if isinstance(plan, CallPlan):
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            return [
                ResponseFunctionToolCall(
                    id=item_id,
                    call_id=call_id,
                    type="function_call",
                    name=plan.name,
                    arguments=orjson.dumps(plan.arguments).decode(),
                )
            ]
        return [
            ResponseOutputMessage(
                id=item_id,
                type="message",
                role="assistant",
                status="completed",
                content=[
                    ResponseOutputText(
                        text=plan.text, type="output_text", annotations=[], logprobs=[]
                    )
                ],
            )
        ]

    async def _wait_until(self, deadline: float) -> None:
        delay = deadline - self._clock()
        if delay > 0:
            await self._sleep(delay)

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        """The whole answer after the simulated generation time."""
        start = self._clock()
        plan = self._plan(system_instructions, input, tools, handoffs)
        tokens = len(plan.tokens) if isinstance(plan, TextPlan) else 0
        await self._wait_until(start + self.ttft_s + tokens / self.tokens_per_s)
        self.tokens_emitted += tokens
        return ModelResponse(
            output=self._output(plan, f"msg_{uuid.uuid4().hex[:24]}"),
            usage=Usage(requests=1, output_tokens=tokens),
            response_id=None,
        )

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        """Text deltas paced at `tokens_per_s` after `ttft_s`, then `response.completed`."""
        start = self._clock()
        plan = self._plan(system_instructions, input, tools, handoffs)
        item_id = f"msg_{uuid.uuid4().hex[:24]}"
        sequence = 0
        await self._wait_until(start + self.ttft_s)
        if isinstance(plan, TextPlan):
            first = self._clock()
            for index, token in enumerate(plan.tokens):
                if index:
                    await self._wait_until(first + index / self.tokens_per_s)
                self.tokens_emitted += 1
                yield ResponseTextDeltaEvent(
                    type="response.output_text.delta",
                    item_id=item_id,
                    output_index=0,
                    content_index=0,
                    delta=token,
                    logprobs=[],
                    sequence_number=sequence,
                )
                sequence += 1
        response = Response(
            id=f"resp_{uuid.uuid4().hex[:24]}",
            created_at=time.time(),
            model="simulated",
            object="response",
            output=self._output(plan, item_id),
            tool_choice="auto",
            tools=[],
            parallel_tool_calls=False,
            status="completed",
        )
        yield ResponseCompletedEvent(
            type="response.completed", response=response, sequence_number=sequence
        )
