"""sim_plan: intents, the deterministic filler reply and the plan decision flow."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from actors.sim_plan import (
    CallPlan,
    Intent,
    TextPlan,
    detect_intent,
    filler_reply,
    plan_reply,
    tokenize,
)

ALL_TOOLS = ["add_todo", "list_todos", "complete_todo", "set_preference", "get_preferences"]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def call(name: str, call_id: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments or {}),
    }


def output(call_id: str, value: Any) -> dict[str, Any]:
    text = value if isinstance(value, str) else json.dumps(value)
    return {"type": "function_call_output", "call_id": call_id, "output": text}


def plan(
    items: list[Any],
    *,
    instructions: str | None = None,
    tools: list[str] | None = None,
    handoffs: list[str] | None = None,
    reply_tokens: int = 12,
) -> CallPlan | TextPlan:
    return plan_reply(
        instructions,
        items,
        tool_names=ALL_TOOLS if tools is None else tools,
        handoff_names=handoffs or [],
        reply_tokens=reply_tokens,
    )


# -- detect_intent ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("remind me to buy milk", Intent("add_todo", {"text": "buy milk"})),
        ("Please remind me to   call   mom.", Intent("add_todo", {"text": "call mom"})),
        ("add todo water the plants!", Intent("add_todo", {"text": "water the plants"})),
        ("Add a todo: file taxes", Intent("add_todo", {"text": "file taxes"})),
        ("what are my todos?", Intent("list_todos", {})),
        ("Show my todos", Intent("list_todos", {})),
        ("list my todos please", Intent("list_todos", {})),
        ("complete todo 3", Intent("complete_todo", {"todo_id": 3})),
        ("I am done with todo #12 now", Intent("complete_todo", {"todo_id": 12})),
        ("finish todo 7", Intent("complete_todo", {"todo_id": 7})),
        ("What are my preferences?", Intent("get_preferences", {})),
        (
            "I prefer Green Tea.",
            Intent("set_preference", {"key": "green tea", "value": "Green Tea"}),
        ),
    ],
)
def test_detect_intent(text: str, expected: Intent) -> None:
    assert detect_intent(text) == expected


@pytest.mark.parametrize(
    "text",
    ["hello there", "tell me a story", "what is a todo list?", "my preferences are odd", ""],
)
def test_plain_text_has_no_intent(text: str) -> None:
    assert detect_intent(text) is None


def test_empty_todo_text_is_not_an_intent() -> None:
    assert detect_intent("remind me to ...") is None


def test_long_todo_text_is_capped() -> None:
    intent = detect_intent("remind me to " + "a" * 1000)
    assert intent is not None
    assert len(intent.arguments["text"]) == 500


def test_preference_key_is_capped_and_lowercased() -> None:
    intent = detect_intent("I prefer " + "B" * 100)
    assert intent is not None
    assert intent.arguments["key"] == "b" * 64
    assert intent.arguments["value"] == "B" * 100


# -- filler_reply -------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 2, 7, 40, 300])
def test_filler_has_exactly_n_tokens(tokens: int) -> None:
    reply = filler_reply("hello", tokens)
    assert len(reply) == tokens
    # Re-tokenising the joined text gives the same tokens (so deltas == reply).
    assert tokenize("".join(reply)) == reply


def test_filler_is_deterministic_for_the_same_text() -> None:
    assert filler_reply("tell me something", 30) == filler_reply("tell me something", 30)


def test_filler_differs_for_different_text() -> None:
    replies = {filler_reply(f"question {i}", 20) for i in range(10)}
    assert len(replies) == 10


def test_filler_is_a_sentence() -> None:
    text = "".join(filler_reply("seed", 9))
    assert text[0].isupper()
    assert text.endswith(".")
    assert "  " not in text


# -- plan_reply ---------------------------------------------------------------


def test_tool_intent_with_the_tool_available_calls_it() -> None:
    result = plan([user("remind me to buy milk")])
    assert result == CallPlan("add_todo", {"text": "buy milk"})


def test_tool_intent_without_the_tool_hands_off() -> None:
    result = plan([user("remind me to buy milk")], tools=[], handoffs=["transfer_to_todo_agent"])
    assert result == CallPlan("transfer_to_todo_agent", {})


def test_handoff_is_not_repeated_once_called() -> None:
    items = [
        user("remind me to buy milk"),
        call("transfer_to_a", "c1"),
        output("c1", {"assistant": "a"}),
    ]
    result = plan(items, tools=[], handoffs=["transfer_to_a", "transfer_to_b"])
    assert result == CallPlan("transfer_to_b", {})


def test_no_tool_and_every_handoff_used_falls_back_to_text() -> None:
    items = [user("remind me to buy milk"), call("transfer_to_a", "c1"), output("c1", "{}")]
    result = plan(items, tools=[], handoffs=["transfer_to_a"], reply_tokens=5)
    assert isinstance(result, TextPlan)
    assert len(result.tokens) == 5


def test_tool_output_in_items_gives_confirmation_text() -> None:
    items = [
        user("remind me to buy milk"),
        call("add_todo", "c1", {"text": "buy milk"}),
        output("c1", {"id": 5, "text": "buy milk", "done": False}),
    ]
    result = plan(items)
    assert isinstance(result, TextPlan)
    assert result.text == "Done: I added “buy milk” to your todos (#5)."
    assert result.tokens == tokenize(result.text)


@pytest.mark.parametrize(
    ("text", "tool", "tool_output", "expected"),
    [
        (
            "what are my todos",
            "list_todos",
            [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}],
            "Your open todos: #1 a; #2 b.",
        ),
        ("what are my todos", "list_todos", [], "You have no open todos."),
        (
            "complete todo 4",
            "complete_todo",
            {"id": 4, "text": "x", "done": True},
            "Marked todo #4 “x” as done.",
        ),
        ("complete todo 4", "complete_todo", None, "I could not find that todo."),
        (
            "I prefer tea",
            "set_preference",
            {"key": "tea", "value": "tea"},
            "Noted: you prefer tea.",
        ),
        (
            "what are my preferences",
            "get_preferences",
            {"tea": "tea", "dark mode": "dark mode"},
            "Your preferences: tea; dark mode.",
        ),
        (
            "what are my preferences",
            "get_preferences",
            {},
            "You have not told me any preferences yet.",
        ),
    ],
)
def test_confirmation_for_each_tool(text: str, tool: str, tool_output: Any, expected: str) -> None:
    items = [user(text), call(tool, "c9"), output("c9", tool_output)]
    result = plan(items)
    assert isinstance(result, TextPlan)
    assert result.text == expected


def test_output_of_an_earlier_turn_does_not_answer_the_new_one() -> None:
    items = [
        user("remind me to buy milk"),
        call("add_todo", "c1"),
        output("c1", {"id": 1, "text": "buy milk", "done": False}),
        {"role": "assistant", "content": "Done."},
        user("remind me to call mom"),
    ]
    assert plan(items) == CallPlan("add_todo", {"text": "call mom"})


def test_call_without_output_is_called_again() -> None:
    # The model sees its own call but no output yet: it does not confirm.
    items = [user("remind me to buy milk"), call("add_todo", "c1")]
    assert plan(items) == CallPlan("add_todo", {"text": "buy milk"})


def test_about_me_reads_the_context_lines() -> None:
    instructions = (
        "You are a helpful assistant.\n"
        "Open todos: #1 buy milk; #2 call mom\n"
        "Preferences: green tea; dark mode\n"
    )
    result = plan([user("What do you know about me?")], instructions=instructions)
    assert isinstance(result, TextPlan)
    assert result.text == (
        "Your open todos: #1 buy milk; #2 call mom. Your preferences: green tea; dark mode."
    )


def test_about_me_without_context_lines_says_none() -> None:
    result = plan([user("what do you know about me")], instructions="Be brief.")
    assert isinstance(result, TextPlan)
    assert result.text == "Your open todos: none. Your preferences: none."


def test_plain_text_gets_the_filler_reply() -> None:
    result = plan([user("tell me a story")], reply_tokens=9)
    assert result == TextPlan(filler_reply("tell me a story", 9))


def test_reply_is_seeded_by_the_last_user_message() -> None:
    items = [user("first"), {"role": "assistant", "content": "ok"}, user("second")]
    assert plan(items, reply_tokens=6) == TextPlan(filler_reply("second", 6))


def test_content_given_as_parts_and_items_as_objects() -> None:
    items = [
        SimpleNamespace(
            role="user", type="message", content=[{"type": "input_text", "text": "add todo x"}]
        )
    ]
    assert plan(items) == CallPlan("add_todo", {"text": "x"})


def test_no_user_item_gives_a_text_reply() -> None:
    result = plan([], reply_tokens=4)
    assert isinstance(result, TextPlan)
    assert len(result.tokens) == 4
