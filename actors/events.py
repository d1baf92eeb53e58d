"""Server-to-client event shapes of PROTOCOL.md.

Events are plain dicts (cheap to pickle between actors and to encode with
orjson). Run events get `run_id` and `seq` from their `RunBuffer`.
"""

from __future__ import annotations

from typing import Any

import orjson

Event = dict[str, Any]

RUN_ACCEPTED = "run.accepted"
RUN_QUEUED = "run.queued"
RUN_STARTED = "run.started"
MESSAGE_DELTA = "message.delta"
TOOL_CALLED = "tool.called"
TOOL_OUTPUT = "tool.output"
AGENT_HANDOFF = "agent.handoff"
RUN_COMPLETED = "run.completed"
RUN_CANCELLED = "run.cancelled"
RUN_FAILED = "run.failed"
FINAL_TYPES = frozenset({RUN_COMPLETED, RUN_CANCELLED, RUN_FAILED})


def error_event(code: str, message: str, ref: str | None = None, **extra: Any) -> Event:
    """An `error` event for a frame that could not be accepted (`extra`: e.g. retry_after)."""
    event: Event = {"type": "error", "code": code, "message": message, **extra}
    if ref is not None:
        event["ref"] = ref
    return event


def run_failed(code: str, message: str) -> Event:
    """A `run.failed` event body (seq is added by the run's buffer)."""
    return {"type": RUN_FAILED, "error": {"code": code, "message": message}}


def encode(event: Event) -> str:
    """Serialise one event to the JSON text sent on the socket."""
    return orjson.dumps(event).decode()


def accepted_event(
    session_id: str, client_msg_id: str | None, run_id: str, *, duplicate: bool
) -> Event:
    """A run's `run.accepted` event (always its seq 1)."""
    return {
        "type": RUN_ACCEPTED,
        "session_id": session_id,
        "client_msg_id": client_msg_id,
        "duplicate": duplicate,
        "run_id": run_id,
        "seq": 1,
    }
