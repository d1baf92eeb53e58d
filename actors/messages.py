"""Client-to-server frames of PROTOCOL.md as pydantic models, and their parser.

`parse_frame` is sans-I/O: it takes the raw frame and returns one message model
or raises a `RaychatError` whose `code` is the protocol's error code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from actors.errors import BadJson, BadRequest, TooLarge, UnknownType

SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
RunId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Frame(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Chat(_Frame):
    """Start a run with the user's text."""

    type: Literal["chat"]
    text: str
    session_id: SessionId = "default"
    client_msg_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    agent: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    on_busy: Literal["enqueue", "reject", "interrupt"] = "enqueue"


class Cancel(_Frame):
    """Stop a run; its partial reply is kept with status `cancelled`."""

    type: Literal["cancel"]
    run_id: RunId


class Resume(_Frame):
    """Replay a run's events after `after_seq`, then stream it live."""

    type: Literal["resume"]
    run_id: RunId
    after_seq: Annotated[int, Field(ge=0)] = 0


class Ping(_Frame):
    """Keepalive; answered with `pong`."""

    type: Literal["ping"]


ClientMessage = Chat | Cancel | Resume | Ping
_MODELS: dict[str, type[_Frame]] = {"chat": Chat, "cancel": Cancel, "resume": Resume, "ping": Ping}


def _describe(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "frame"
    return f"{where}: {first['msg']}"


def parse_frame(raw: str | bytes, *, max_text_chars: int) -> ClientMessage:
    """Parse one client frame; raise `BadJson`, `UnknownType`, `BadRequest` or `TooLarge`."""
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadJson("frame is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BadJson("frame must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadRequest("type: a string field is required")
    model = _MODELS.get(kind)
    if model is None:
        raise UnknownType(f"unknown message type {kind[:40]!r}")
    try:
        message = model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None
    if isinstance(message, Chat):
        if not message.text.strip():
            raise BadRequest("text: must not be empty")
        if len(message.text) > max_text_chars:
            raise TooLarge(f"text: longer than {max_text_chars} characters")
    return message  # type: ignore[return-value]
