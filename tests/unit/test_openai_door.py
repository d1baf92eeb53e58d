"""The OpenAI-compatible door's pure mapping: requests, sessions, errors, chunks and completions."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from openai._streaming import SSEDecoder
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from actors.errors import (
    AuthError,
    BadRequest,
    Busy,
    NotFound,
    RateLimited,
    RaychatError,
    TooLarge,
    Unavailable,
)
from actors.messages import SESSION_ID_PATTERN, Chat
from actors.openai_door import (
    DONE,
    CompletionMapper,
    DoorError,
    agent_for,
    derived_session,
    door_error,
    failure_error,
    message_text,
    model_list,
    parse_request,
    turn_frame,
)
from actors.runs import AGENT_NAMES


def body(**fields: Any) -> bytes:
    data: dict[str, Any] = {"model": "raychat", "messages": [{"role": "user", "content": "hi"}]}
    data.update(fields)
    return orjson.dumps(data)


def frame(
    messages: list[dict[str, Any]], session: str | None = None, on_busy: str | None = None
) -> Chat:
    request = parse_request(body(messages=messages))
    return turn_frame(
        request,
        session_header=session,
        on_busy_header=on_busy,
        agent="assistant",
        max_text_chars=100,
    )


def decode(frames: list[bytes]) -> list[str]:
    """The SSE `data` fields, as the official client's decoder reads them."""
    return [event.data for event in SSEDecoder().iter_bytes(iter(frames))]


# -- requests ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        body(messages=[]),
        body(messages=[{"role": "robot", "content": "hi"}]),
        body(n=2),
        body(tools=[{"type": "function", "function": {"name": "f"}}]),
        body(stream="yes please"),
    ],
)
def test_requests_raychat_cannot_serve_are_400(raw: bytes) -> None:
    with pytest.raises(DoorError) as info:
        parse_request(raw)
    assert info.value.status == 400
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_unknown_fields_and_sampling_parameters_are_accepted() -> None:
    request = parse_request(body(temperature=0.2, max_tokens=5, stream=True, user="x", n=1))
    assert request.stream is True and request.model == "raychat"


def test_text_of_string_and_text_part_contents() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = parse_request(body(messages=[{"role": "user", "content": parts}]))
    assert message_text(request.messages[0]) == "a\nb"
    image = parse_request(
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    )
    with pytest.raises(DoorError) as info:
        message_text(image.messages[0])
    assert info.value.status == 400


# -- sessions and turns ------------------------------------------------------------
def test_the_last_user_message_is_the_turn_and_the_header_names_the_session() -> None:
    chat = frame(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second"},
        ],
        session="my-session",
        on_busy="reject",
    )
    assert (chat.text, chat.session_id, chat.agent, chat.on_busy) == (
        "second",
        "my-session",
        "assistant",
        "reject",
    )


def test_without_a_header_every_turn_of_a_conversation_finds_one_session() -> None:
    first = {"role": "user", "content": "plan my week"}
    turn1 = frame([first])
    turn2 = frame(
        [
            {"role": "system", "content": "be brief"},
            first,
            {"role": "assistant", "content": "sure"},
            {"role": "user", "content": "and the weekend?"},
        ]
    )
    other = frame([{"role": "user", "content": "plan my month"}])
    assert turn1.session_id == turn2.session_id != other.session_id
    assert re.fullmatch(SESSION_ID_PATTERN, turn1.session_id)
    assert turn1.session_id.startswith("oai-")


def test_derived_session_ignores_everything_but_the_first_user_message() -> None:
    request = parse_request(
        body(messages=[{"role": "developer", "content": "x"}, {"role": "user", "content": "q"}])
    )
    alone = parse_request(body(messages=[{"role": "user", "content": "q"}]))
    assert derived_session(request.messages) == derived_session(alone.messages)


HI = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("messages", "session", "on_busy", "code"),
    [
        ([HI, {"role": "assistant", "content": "yo"}], None, None, "bad_request"),
        ([{"role": "user", "content": "  "}], None, None, "bad_request"),
        ([{"role": "user", "content": "x" * 101}], None, None, "too_large"),
        ([HI], "has spaces", None, "bad_request"),
        ([HI], "x" * 129, None, "bad_request"),
        ([HI], None, "sometimes", "bad_request"),
    ],
)
def test_bad_turns_are_400_with_the_socket_protocol_code(
    messages: list[dict[str, Any]], session: str | None, on_busy: str | None, code: str
) -> None:
    with pytest.raises(DoorError) as info:
        frame(messages, session, on_busy)
    assert (info.value.status, info.value.code) == (400, code)


# -- models --------------------------------------------------------------------------
def test_models_are_raychat_and_one_per_agent() -> None:
    listing = model_list(AGENT_NAMES, created=123)
    models = [Model.model_validate(item) for item in listing["data"]]
    assert listing["object"] == "list"
    assert [m.id for m in models] == ["raychat", "raychat-assistant", "raychat-organizer"]
    assert agent_for("raychat", AGENT_NAMES) == "assistant"
    assert agent_for("raychat-organizer", AGENT_NAMES) == "organizer"
    with pytest.raises(DoorError) as info:
        agent_for("gpt-4o", AGENT_NAMES)
    assert (info.value.status, info.value.code) == (404, "model_not_found")


# -- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (AuthError("invalid token"), 401, None),
        (BadRequest("agent: unknown"), 400, None),
        (TooLarge("text: too long"), 400, None),
        (NotFound("no such run"), 404, None),
        (RateLimited("slow down", 2.2), 429, "3"),
        (Busy("session busy"), 429, "1"),
        (Unavailable("draining"), 503, "1"),
        (RaychatError("boom"), 500, None),
    ],
)
def test_raychat_errors_map_to_openai_status_codes(
    error: RaychatError, status: int, retry_after: str | None
) -> None:
    mapped = door_error(error)
    assert mapped.status == status
    assert set(mapped.body()["error"]) == {"message", "type", "param", "code"}
    assert mapped.body()["error"]["message"] == error.message
    assert mapped.headers().get("retry-after") == retry_after


def test_rate_limit_says_when_in_milliseconds_too() -> None:
    assert door_error(RateLimited("slow", 0.25)).headers() == {
        "retry-after": "1",
        "retry-after-ms": "250",
    }


@pytest.mark.parametrize(
    ("code", "status"),
    [("model_error", 500), ("internal", 500), ("shutdown", 503), ("timeout", 504)],
)
def test_failed_runs_are_server_errors(code: str, status: int) -> None:
    error = failure_error({"type": "run.failed", "error": {"code": code, "message": "m"}})
    assert (error.status, error.code, error.type) == (status, code, "server_error")


# -- responses -----------------------------------------------------------------------
RUN = [
    {"type": "run.accepted", "run_id": "r", "seq": 1},
    {"type": "run.started", "run_id": "r", "seq": 2, "agent": "assistant"},
    {"type": "message.delta", "run_id": "r", "seq": 3, "text": "Hello "},
    {"type": "tool.called", "run_id": "r", "seq": 4, "name": "add_todo", "arguments": {}},
    {"type": "message.delta", "run_id": "r", "seq": 5, "text": "there"},
    {"type": "run.completed", "run_id": "r", "seq": 6, "message_id": 7, "text": "Hello there."},
]


def test_stream_is_valid_chunks_ending_with_stop_and_done() -> None:
    mapper = CompletionMapper("raychat", completion_id="chatcmpl-1", created=5)
    frames = [mapper.first_chunk()] + [f for event in RUN for f in mapper.stream(event)]
    assert frames[-1] == DONE
    datas = decode(frames)
    assert datas[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(data) for data in datas[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    # Text the deltas missed (the final "."), before the end.
    assert contents == ["Hello ", "there", "."]
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert {(c.id, c.created, c.model) for c in chunks} == {("chatcmpl-1", 5, "raychat")}


def test_a_failed_run_ends_the_stream_with_an_error_object() -> None:
    mapper = CompletionMapper("raychat")
    frames = mapper.stream({"type": "message.delta", "text": "par"})
    frames += mapper.stream(
        {"type": "run.failed", "error": {"code": "model_error", "message": "the agent run failed"}}
    )
    datas = decode(frames)
    assert datas[-1] == "[DONE]"
    assert orjson.loads(datas[-2]) == {
        "error": {
            "message": "the agent run failed",
            "type": "server_error",
            "param": None,
            "code": "model_error",
        }
    }


def test_a_cancelled_run_stops_with_its_partial_text() -> None:
    mapper = CompletionMapper("raychat")
    events = [
        {"type": "message.delta", "text": "Part"},
        {"type": "run.cancelled", "message_id": 1, "text": "Part"},
    ]
    completion = ChatCompletion.model_validate(mapper.completion(events))
    assert completion.choices[0].message.content == "Part"
    assert completion.choices[0].finish_reason == "stop"


def test_whole_completion_has_the_stored_text() -> None:
    completion = ChatCompletion.model_validate(
        CompletionMapper("raychat-organizer").completion(RUN)
    )
    assert completion.object == "chat.completion"
    assert completion.model == "raychat-organizer"
    assert completion.choices[0].message.content == "Hello there."
    assert completion.choices[0].message.role == "assistant"


def test_whole_completion_of_a_failed_run_raises_its_error() -> None:
    with pytest.raises(DoorError) as info:
        CompletionMapper("raychat").completion(
            [{"type": "run.failed", "error": {"code": "timeout", "message": "too long"}}]
        )
    assert (info.value.status, info.value.message) == (504, "too long")
    with pytest.raises(DoorError):
        CompletionMapper("raychat").completion(RUN[:3])  # no final event
