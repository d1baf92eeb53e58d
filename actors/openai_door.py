"""The OpenAI-compatible door: `/v1/chat/completions` and `/v1/models` mapped onto raychat.

Pure mapping, no I/O: request bodies to a socket's `chat` frame, run events to
`chat.completion.chunk` SSE frames or one `chat.completion`, raychat errors to
OpenAI's error JSON and status codes. The ingress runs the turn itself
(`IngressCore.http_turn`), on the same path as a socket's `chat`.

Sessions: raychat keeps the history, the client resends the whole conversation.
The new turn is the last message (it must be a `user` message); the rest only
names the session: the `X-Raychat-Session` header if sent, otherwise one
derived from the conversation's first user message, so each conversation of a
chat UI gets its own session and every turn of it finds the same one.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.errors import (
    AuthError,
    BadJson,
    BadRequest,
    Busy,
    NotFound,
    RateLimited,
    RaychatError,
    TooLarge,
    Unavailable,
    UnknownType,
)
from actors.events import MESSAGE_DELTA, RUN_CANCELLED, RUN_COMPLETED, RUN_FAILED, Event
from actors.messages import Chat, parse_frame
from actors.runs import ASSISTANT

DEFAULT_MODEL = "raychat"
MODEL_PREFIX = "raychat-"
OWNED_BY = "raychat"
SESSION_HEADER = "x-raychat-session"
ON_BUSY_HEADER = "x-raychat-on-busy"
RUN_HEADER = "x-raychat-run"
DERIVED_SESSION_PREFIX = "oai-"
DONE = b"data: [DONE]\n\n"


# -- errors ------------------------------------------------------------------------
class DoorError(Exception):
    """An error answered in OpenAI's shape: status, `type`, `code`, message, Retry-After."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, message, type_, code, retry_after)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {"message": self.message, "type": self.type, "param": None, "code": self.code}
        }

    def headers(self) -> dict[str, str]:
        """`Retry-After` (whole seconds) and `retry-after-ms` for 429 and 503 answers."""
        if self.retry_after is None:
            return {}
        return {
            "retry-after": str(max(1, math.ceil(self.retry_after))),
            "retry-after-ms": str(max(1, round(self.retry_after * 1000))),
        }


def door_error(exc: RaychatError) -> DoorError:
    """The OpenAI-shaped answer for a raychat error raised while taking a turn."""
    if isinstance(exc, AuthError):
        return DoorError(401, exc.message, "invalid_request_error", "invalid_api_key")
    if isinstance(exc, BadRequest | BadJson | UnknownType | TooLarge):
        return DoorError(400, exc.message, "invalid_request_error", exc.code)
    if isinstance(exc, NotFound):
        return DoorError(404, exc.message, "invalid_request_error", exc.code)
    if isinstance(exc, RateLimited):
        return DoorError(429, exc.message, "requests", "rate_limit_exceeded", exc.retry_after)
    if isinstance(exc, Busy):
        return DoorError(429, exc.message, "requests", exc.code, 1.0)
    if isinstance(exc, Unavailable):
        return DoorError(503, exc.message, "server_error", exc.code, 1.0)
    return DoorError(500, exc.message, "server_error", exc.code)


def failure_error(event: Event) -> DoorError:
    """The answer for a `run.failed` event (the user message stays stored)."""
    error = event.get("error") or {}
    code = str(error.get("code") or "internal")
    message = str(error.get("message") or "the run failed")
    status = 503 if code == "shutdown" else 504 if code == "timeout" else 500
    return DoorError(status, message, "server_error", code)


# -- models --------------------------------------------------------------------------
def model_agents(agent_names: Sequence[str]) -> dict[str, str]:
    """Model id -> agent: `raychat` is the default entry agent, `raychat-NAME` each agent."""
    models = {DEFAULT_MODEL: ASSISTANT}
    models.update({f"{MODEL_PREFIX}{name}": name for name in agent_names})
    return models


def model_list(agent_names: Sequence[str], created: int) -> dict[str, Any]:
    """The `GET /v1/models` body."""
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}
            for model in model_agents(agent_names)
        ],
    }


def agent_for(model: str, agent_names: Sequence[str]) -> str:
    """The agent a model id names; 404 (`model_not_found`) for an unknown one."""
    agent = model_agents(agent_names).get(model)
    if agent is None:
        message = f"The model {model[:64]!r} does not exist"
        raise DoorError(404, message, "invalid_request_error", "model_not_found")
    return agent


# -- requests ------------------------------------------------------------------------
class ContentPart(BaseModel):
    """One part of a message's content list; only `text` parts are understood."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message of the conversation the client sends."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class CompletionRequest(BaseModel):
    """The fields of a chat completion request raychat reads; the others are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    n: int | None = None
    tools: list[Any] | None = None
    user: str | None = None


def _describe(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def parse_request(body: bytes) -> CompletionRequest:
    """Parse and check a request body; `DoorError` 400 for anything raychat cannot serve."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DoorError(400, "the body is not valid JSON", code="bad_json") from None
    if not isinstance(data, dict):
        raise DoorError(400, "the body must be a JSON object", code="bad_json")
    try:
        request = CompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise DoorError(400, _describe(exc), code="bad_request") from None
    if request.n not in (None, 1):
        raise DoorError(400, "n: only 1 choice is supported", code="bad_request")
    if request.tools:
        message = "tools: raychat's agents bring their own tools; client tools are not supported"
        raise DoorError(400, message, code="bad_request")
    return request


def message_text(message: ChatMessage) -> str:
    """A message's text: its string content or its text parts joined; 400 for other parts."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            problem = f"content: only text parts are supported, not {part.type[:32]!r}"
            raise DoorError(400, problem, code="bad_request")
        texts.append(part.text)
    return "\n".join(texts)


def derived_session(messages: Sequence[ChatMessage]) -> str:
    """`oai-` and a hash of the conversation's first user message (the same on every turn)."""
    first = next(m for m in messages if m.role == "user")
    digest = hashlib.sha256(message_text(first).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{DERIVED_SESSION_PREFIX}{digest[:24]}"


def turn_frame(
    request: CompletionRequest,
    *,
    session_header: str | None,
    on_busy_header: str | None,
    agent: str,
    max_text_chars: int,
) -> Chat:
    """The socket `chat` frame for this request, validated exactly as a socket's is."""
    last = request.messages[-1]
    if last.role != "user":
        raise DoorError(
            400, "messages: the last message must be the user's new turn", code="bad_request"
        )
    frame: dict[str, Any] = {
        "type": "chat",
        "text": message_text(last),
        "session_id": session_header
        if session_header is not None
        else derived_session(request.messages),
        "agent": agent,
    }
    if on_busy_header is not None:
        frame["on_busy"] = on_busy_header
    try:
        message = parse_frame(orjson.dumps(frame), max_text_chars=max_text_chars)
    except RaychatError as exc:
        raise door_error(exc) from None
    assert isinstance(message, Chat)
    return message


# -- responses -----------------------------------------------------------------------
def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying `data` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


class CompletionMapper:
    """Maps one run's events to chunks (`stream`) or to one completion (`completion`)."""

    def __init__(self, model: str, *, completion_id: str | None = None, created: int | None = None):
        self.model = model
        self.id = completion_id or f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time()) if created is None else created
        self.text = ""  # what the deltas said so far
        self.final: Event | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def first_chunk(self) -> bytes:
        """The opening chunk: the assistant's role, no text yet."""
        return sse(self._chunk({"role": "assistant", "content": ""}))

    def stream(self, event: Event) -> list[bytes]:
        """The SSE frames for one run event (none for events clients do not see).

        The final event ends the stream: `finish_reason: "stop"` for a completed
        or cancelled run (any text the deltas missed goes first), an error object
        for a failed one, then `data: [DONE]`.
        """
        kind = event.get("type")
        if kind == MESSAGE_DELTA:
            text = str(event.get("text", ""))
            self.text += text
            return [sse(self._chunk({"content": text}))] if text else []
        if kind in (RUN_COMPLETED, RUN_CANCELLED):
            self.final = event
            frames = []
            rest = self._rest(str(event.get("text", "")))
            if rest:
                frames.append(sse(self._chunk({"content": rest})))
            frames.append(sse(self._chunk({}, "stop")))
            return [*frames, DONE]
        if kind == RUN_FAILED:
            self.final = event
            return [sse(failure_error(event).body()), DONE]
        return []

    def _rest(self, final_text: str) -> str:
        """Text of the final event the deltas did not carry (empty when they carried it all)."""
        if final_text.startswith(self.text):
            rest = final_text[len(self.text) :]
            self.text = final_text
            return rest
        return ""

    def completion(self, events: Iterable[Event]) -> dict[str, Any]:
        """One `chat.completion` for a run's events, which must include its final event.

        Raises the `DoorError` of a failed run.
        """
        for event in events:
            self.stream(event)
        final = self.final
        if final is None:
            raise DoorError(500, "the run ended without a final event", "server_error", "internal")
        if final["type"] == RUN_FAILED:
            raise failure_error(final)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": str(final.get("text", ""))},
                    "finish_reason": "stop",
                }
            ],
        }
