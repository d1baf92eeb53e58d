"""Translate Agents SDK stream events into PROTOCOL.md run events (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from agents import AgentUpdatedStreamEvent, RawResponsesStreamEvent, RunItemStreamEvent
from agents.stream_events import StreamEvent

from actors.events import AGENT_HANDOFF, MESSAGE_DELTA, TOOL_CALLED, TOOL_OUTPUT, Event


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


@dataclass
class EventTranslator:
    """Stateful translator for one run: remembers the current agent and tool call names."""

    agent: str
    call_names: dict[str, str] = field(default_factory=dict)

    def translate(self, event: StreamEvent) -> list[Event]:
        """The protocol events (zero or more) for one SDK stream event."""
        if isinstance(event, RawResponsesStreamEvent):
            data = event.data
            if getattr(data, "type", None) == "response.output_text.delta":
                delta = getattr(data, "delta", "")
                return [{"type": MESSAGE_DELTA, "text": delta}] if delta else []
            return []
        if isinstance(event, AgentUpdatedStreamEvent):
            name = event.new_agent.name
            if name == self.agent:
                return []
            self.agent = name
            return [{"type": AGENT_HANDOFF, "agent": name}]
        if isinstance(event, RunItemStreamEvent):
            raw = event.item.raw_item
            if event.name == "tool_called":
                name = str(_get(raw, "name"))
                self.call_names[str(_get(raw, "call_id"))] = name
                return [
                    {
                        "type": TOOL_CALLED,
                        "name": name,
                        "arguments": _maybe_json(_get(raw, "arguments")),
                    }
                ]
            if event.name == "tool_output":
                name = self.call_names.get(str(_get(raw, "call_id")), "unknown")
                output = getattr(event.item, "output", None)
                return [{"type": TOOL_OUTPUT, "name": name, "output": _maybe_json(output)}]
        return []
