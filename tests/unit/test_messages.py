"""`parse_frame`: every client message of PROTOCOL.md and every kind of bad frame."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.errors import BadJson, BadRequest, RaychatError, TooLarge, UnknownType
from actors.messages import Cancel, Chat, Ping, Resume, parse_frame

MAX_TEXT = 100


def parse(frame: dict[str, Any] | str | bytes, max_text_chars: int = MAX_TEXT) -> Any:
    """Parse a frame given as a dict (encoded to JSON) or as raw text / bytes."""
    raw = orjson.dumps(frame) if isinstance(frame, dict) else frame
    return parse_frame(raw, max_text_chars=max_text_chars)


# -- valid frames -------------------------------------------------------------


def test_chat_with_only_text_gets_the_defaults() -> None:
    message = parse({"type": "chat", "text": "hello"})
    assert isinstance(message, Chat)
    assert message.text == "hello"
    assert message.session_id == "default"
    assert message.client_msg_id is None
    assert message.agent is None
    assert message.on_busy == "enqueue"


@pytest.mark.parametrize("on_busy", ["enqueue", "reject", "interrupt"])
def test_chat_with_every_optional_field(on_busy: str) -> None:
    message = parse(
        {
            "type": "chat",
            "text": "plan my day",
            "session_id": "work:2024-01_a.b@c",
            "client_msg_id": "m-1",
            "agent": "planner",
            "on_busy": on_busy,
        }
    )
    assert message == Chat(
        type="chat",
        text="plan my day",
        session_id="work:2024-01_a.b@c",
        client_msg_id="m-1",
        agent="planner",
        on_busy=on_busy,  # type: ignore[arg-type]
    )


def test_chat_ignores_unknown_extra_fields() -> None:
    message = parse({"type": "chat", "text": "hi", "colour": "blue"})
    assert isinstance(message, Chat)
    assert not hasattr(message, "colour")


def test_chat_text_of_exactly_max_chars_is_accepted() -> None:
    message = parse({"type": "chat", "text": "x" * MAX_TEXT})
    assert isinstance(message, Chat)
    assert len(message.text) == MAX_TEXT


def test_bytes_frame_is_accepted() -> None:
    message = parse(b'{"type": "ping"}')
    assert isinstance(message, Ping)


def test_cancel() -> None:
    message = parse({"type": "cancel", "run_id": "run-123"})
    assert isinstance(message, Cancel)
    assert message.run_id == "run-123"


def test_resume_with_after_seq() -> None:
    message = parse({"type": "resume", "run_id": "run-123", "after_seq": 7})
    assert isinstance(message, Resume)
    assert (message.run_id, message.after_seq) == ("run-123", 7)


def test_resume_after_seq_defaults_to_zero() -> None:
    message = parse({"type": "resume", "run_id": "run-123"})
    assert isinstance(message, Resume)
    assert message.after_seq == 0


def test_ping() -> None:
    assert isinstance(parse({"type": "ping"}), Ping)


# -- bad frames ---------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "{", "not json", "{'type': 'ping'}", "[1,]", "NaN", b"\xff"])
def test_invalid_json_is_bad_json(raw: str | bytes) -> None:
    with pytest.raises(BadJson) as info:
        parse(raw)
    assert info.value.code == "bad_json"


@pytest.mark.parametrize("raw", ["[]", '["ping"]', '"ping"', "1", "null", "true"])
def test_non_object_json_is_bad_json(raw: str) -> None:
    with pytest.raises(BadJson) as info:
        parse(raw)
    assert info.value.code == "bad_json"


@pytest.mark.parametrize(
    "frame",
    [
        {},
        {"text": "hi"},
        {"type": None},
        {"type": 1},
        {"type": ["chat"]},
    ],
    ids=["empty", "no-type", "null-type", "int-type", "list-type"],
)
def test_missing_or_non_string_type_is_bad_request(frame: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        parse(frame)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize("kind", ["hello", "CHAT", "", "chat "])
def test_unknown_type(kind: str) -> None:
    with pytest.raises(UnknownType) as info:
        parse({"type": kind, "text": "hi"})
    assert info.value.code == "unknown_type"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "chat"},
        {"type": "cancel"},
        {"type": "resume"},
        {"type": "resume", "after_seq": 1},
    ],
    ids=["chat-no-text", "cancel-no-run", "resume-no-run", "resume-only-seq"],
)
def test_missing_required_field_is_bad_request(frame: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        parse(frame)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "chat", "text": 5},
        {"type": "chat", "text": ["hi"]},
        {"type": "chat", "text": "hi", "session_id": 3},
        {"type": "chat", "text": "hi", "client_msg_id": 3},
        {"type": "chat", "text": "hi", "client_msg_id": ""},
        {"type": "chat", "text": "hi", "agent": False},
        {"type": "chat", "text": "hi", "agent": ""},
        {"type": "chat", "text": "hi", "on_busy": "wait"},
        {"type": "cancel", "run_id": 12},
        {"type": "cancel", "run_id": ""},
        {"type": "cancel", "run_id": "r" * 65},
        {"type": "resume", "run_id": "r", "after_seq": "3"},
        {"type": "resume", "run_id": "r", "after_seq": 1.5},
        {"type": "resume", "run_id": "r", "after_seq": True},
    ],
)
def test_wrong_field_types_are_bad_request(frame: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        parse(frame)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize("after_seq", [-1, -1000])
def test_negative_after_seq_is_bad_request(after_seq: int) -> None:
    with pytest.raises(BadRequest) as info:
        parse({"type": "resume", "run_id": "r", "after_seq": after_seq})
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    "session_id",
    ["", "has space", "slash/in/it", "x" * 129, "tab\there", "newline\n", "ünïcode", "semi;colon"],
)
def test_bad_session_id_is_bad_request(session_id: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse({"type": "chat", "text": "hi", "session_id": session_id})
    assert info.value.code == "bad_request"


def test_session_id_of_128_chars_is_accepted() -> None:
    message = parse({"type": "chat", "text": "hi", "session_id": "s" * 128})
    assert isinstance(message, Chat)


@pytest.mark.parametrize("text", ["", " ", "   \n\t  ", "\u3000"])
def test_empty_or_whitespace_only_text_is_bad_request(text: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse({"type": "chat", "text": text})
    assert info.value.code == "bad_request"


def test_text_over_max_chars_is_too_large() -> None:
    with pytest.raises(TooLarge) as info:
        parse({"type": "chat", "text": "x" * (MAX_TEXT + 1)})
    assert info.value.code == "too_large"


def test_max_text_chars_counts_characters_not_bytes() -> None:
    # 100 three-byte characters: 300 bytes but exactly the character limit.
    message = parse({"type": "chat", "text": "€" * MAX_TEXT})
    assert isinstance(message, Chat)


def test_error_messages_name_the_field() -> None:
    with pytest.raises(BadRequest) as info:
        parse({"type": "resume", "run_id": "r", "after_seq": -1})
    assert "after_seq" in info.value.message


# -- property -----------------------------------------------------------------

MESSAGE_TYPES = (Chat, Cancel, Resume, Ping)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["chat", "cancel", "resume", "ping", "other"]) | json_values},
    optional={
        "text": json_values,
        "session_id": json_values,
        "client_msg_id": json_values,
        "agent": json_values,
        "on_busy": st.sampled_from(["enqueue", "reject", "interrupt"]) | json_values,
        "run_id": json_values,
        "after_seq": st.integers() | json_values,
    },
)


def _outcome(raw: str | bytes) -> None:
    try:
        message = parse_frame(raw, max_text_chars=50)
    except RaychatError as exc:
        assert exc.code in {"bad_json", "bad_request", "unknown_type", "too_large"}
    else:
        assert isinstance(message, MESSAGE_TYPES)


@given(st.text())
def test_arbitrary_text_is_parsed_or_rejected_cleanly(raw: str) -> None:
    _outcome(raw)


@given(st.binary())
def test_arbitrary_bytes_are_parsed_or_rejected_cleanly(raw: bytes) -> None:
    _outcome(raw)


@given(json_values)
def test_arbitrary_json_values_are_parsed_or_rejected_cleanly(value: Any) -> None:
    _outcome(json.dumps(value))


@given(frame_like)
def test_frame_shaped_objects_are_parsed_or_rejected_cleanly(frame: dict[str, Any]) -> None:
    _outcome(json.dumps(frame))
