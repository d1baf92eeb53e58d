"""What the simulated model answers: pure, deterministic planning from the model input.

The plan is either a function call (a tool or a handoff) or a text reply. The
intents of PROTOCOL.md map to the real tools; everything else gets a
deterministic reply of `reply_tokens` tokens seeded by the user's text ("... in
N words" asks for N tokens instead, for long-reply tests and benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TOKEN_RE = re.compile(r"\S+\s*|\s+")
CONTEXT_TODOS_PREFIX = "Open todos:"
CONTEXT_PREFS_PREFIX = "Preferences:"

_VOCABULARY = (
    "sure",
    "here",
    "is",
    "a",
    "short",
    "note",
    "on",
    "that",
    "topic",
    "with",
    "a",
    "few",
    "ideas",
    "you",
    "might",
    "find",
    "useful",
    "today",
    "plan",
    "focus",
    "rest",
    "time",
    "work",
    "goal",
    "step",
    "list",
    "next",
    "small",
    "clear",
    "simple",
    "good",
    "idea",
    "keep",
    "track",
    "of",
    "what",
    "matters",
    "most",
    "and",
    "take",
    "one",
    "thing",
    "at",
    "a",
    "time",
)


@dataclass(frozen=True)
class Intent:
    """A recognised request: the tool that serves it and the tool's arguments."""

    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class CallPlan:
    """Answer with one function call."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class TextPlan:
    """Answer with this text, streamed token by token."""

    tokens: tuple[str, ...]

    @property
    def text(self) -> str:
        """The whole reply."""
        return "".join(self.tokens)


Plan = CallPlan | TextPlan

_INTENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(?:remind me to|add (?:a )?todo:?)\s+(?P<text>.+)", re.I | re.S), "add_todo"),
    (re.compile(r"\b(?:what are|list|show) my todos\b", re.I), "list_todos"),
    (re.compile(r"\b(?:complete|finish|done with) todo\s*#?(?P<id>\d+)", re.I), "complete_todo"),
    (re.compile(r"\bwhat are my preferences\b", re.I), "get_preferences"),
    (re.compile(r"\bI prefer\s+(?P<text>.+)", re.I | re.S), "set_preference"),
)
_ABOUT_ME = re.compile(r"\bwhat do you know about me\b", re.I)
_LENGTH = re.compile(r"\bin (\d{1,4}) words\b", re.I)
MAX_REQUESTED_TOKENS = 5000


def tokenize(text: str) -> tuple[str, ...]:
    """Split text into word tokens that keep their trailing white space."""
    return tuple(TOKEN_RE.findall(text))


def detect_intent(text: str) -> Intent | None:
    """The tool intent of a user message, if it has one."""
    for pattern, tool in _INTENTS:
        match = pattern.search(text)
        if match is None:
            continue
        if tool in ("add_todo", "set_preference"):
            value = " ".join(match["text"].split()).rstrip(".!?")[:500]
            if not value:
                continue
            if tool == "add_todo":
                return Intent(tool, {"text": value})
            return Intent(tool, {"key": value.lower()[:64], "value": value})
        if tool == "complete_todo":
            return Intent(tool, {"todo_id": int(match["id"])})
        return Intent(tool, {})
    return None


def filler_reply(seed_text: str, tokens: int) -> tuple[str, ...]:
    """A deterministic reply of exactly `tokens` tokens seeded by `seed_text`."""
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    words = [rng.choice(_VOCABULARY) for _ in range(tokens)]
    words[0] = words[0].capitalize()
    out = [w + " " for w in words[:-1]]
    out.append(words[-1] + ".")
    return tuple(out)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _context_line(instructions: str | None, prefix: str) -> str:
    for line in (instructions or "").splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return "none"


def _confirm(tool: str, output: str) -> str:
    try:
        data: Any = json.loads(output)
    except ValueError:
        data = output
    if tool == "add_todo" and isinstance(data, dict):
        return f"Done: I added “{data.get('text')}” to your todos (#{data.get('id')})."
    if tool == "list_todos" and isinstance(data, list):
        if not data:
            return "You have no open todos."
        items = "; ".join(f"#{t.get('id')} {t.get('text')}" for t in data)
        return f"Your open todos: {items}."
    if tool == "complete_todo":
        if isinstance(data, dict) and data.get("done"):
            return f"Marked todo #{data.get('id')} “{data.get('text')}” as done."
        return "I could not find that todo."
    if tool == "set_preference" and isinstance(data, dict):
        return f"Noted: you prefer {data.get('value')}."
    if tool == "get_preferences" and isinstance(data, dict):
        if not data:
            return "You have not told me any preferences yet."
        return "Your preferences: " + "; ".join(str(v) for v in data.values()) + "."
    return f"The {tool} tool answered: {output[:200]}"


def plan_reply(
    instructions: str | None,
    items: Sequence[Any],
    *,
    tool_names: Sequence[str],
    handoff_names: Sequence[str],
    reply_tokens: int,
) -> Plan:
    """Decide the next model output from the conversation so far."""
    last_user = -1
    for index, item in enumerate(items):
        if _field(item, "role") == "user":
            last_user = index
    user_text = _content_text(_field(items[last_user], "content")) if last_user >= 0 else ""
    calls: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for item in items[last_user + 1 :]:
        kind = _field(item, "type")
        if kind == "function_call":
            calls[str(_field(item, "call_id"))] = str(_field(item, "name"))
        elif kind == "function_call_output":
            output = _field(item, "output")
            outputs[str(_field(item, "call_id"))] = (
                output if isinstance(output, str) else str(output)
            )

    intent = detect_intent(user_text)
    if intent is not None:
        for call_id, name in calls.items():
            if name == intent.tool and call_id in outputs:
                return TextPlan(tokenize(_confirm(name, outputs[call_id])))
        if intent.tool in tool_names:
            return CallPlan(intent.tool, intent.arguments)
        called = set(calls.values())
        for handoff in handoff_names:
            if handoff not in called:
                return CallPlan(handoff, {})
    if _ABOUT_ME.search(user_text):
        todos = _context_line(instructions, CONTEXT_TODOS_PREFIX)
        prefs = _context_line(instructions, CONTEXT_PREFS_PREFIX)
        return TextPlan(tokenize(f"Your open todos: {todos}. Your preferences: {prefs}."))
    asked = _LENGTH.search(user_text)
    if asked is not None:
        reply_tokens = max(1, min(int(asked.group(1)), MAX_REQUESTED_TOKENS))
    return TextPlan(filler_reply(user_text, reply_tokens))
