"""The personal-assistant agents and their tools, built once and shared by every user.

Per-user state never lives on an agent: it arrives in the run context
(`ChatContext`), and the tools reach the database through `ToolServices`.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from agents import Agent, Model, RunContextWrapper, function_tool

from actors.runs import ASSISTANT, ORGANIZER
from actors.sim_plan import CONTEXT_PREFS_PREFIX, CONTEXT_TODOS_PREFIX


class ToolServices(Protocol):
    """What the tools need from the rest of the service."""

    async def add_todo(self, user_id: str, text: str) -> dict[str, Any]: ...

    async def complete_todo(self, user_id: str, todo_id: int) -> dict[str, Any] | None: ...

    async def set_preference(self, user_id: str, key: str, value: str) -> dict[str, str]: ...

    async def load_context(self, user_id: str) -> tuple[dict[str, str], list[dict[str, Any]]]: ...


async def _nothing_cached(user_id: str) -> None:
    return None


@dataclass
class ChatContext:
    """The run context: who is talking, what we know about them, whom to tell of changes."""

    user_id: str
    services: ToolServices
    preferences: dict[str, str] = field(default_factory=dict)
    todos: list[dict[str, Any]] = field(default_factory=list)
    # Called after a tool changed the user's context (the shard drops its cached copy).
    context_changed: Callable[[str], Awaitable[Any]] = _nothing_cached


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def describe_context(context: ChatContext) -> str:
    """The user-context lines every agent's instructions end with."""
    todos = "; ".join(f"#{t['id']} {t['text']}" for t in context.todos) or "none"
    prefs = "; ".join(context.preferences.values()) or "none"
    return f"{CONTEXT_TODOS_PREFIX} {todos}\n{CONTEXT_PREFS_PREFIX} {prefs}"


@function_tool
async def add_todo(ctx: RunContextWrapper[ChatContext], text: str) -> str:
    """Add a todo for the user.

    Args:
        text: What the user wants to do.
    """
    todo = await ctx.context.services.add_todo(ctx.context.user_id, text)
    await ctx.context.context_changed(ctx.context.user_id)
    return _json(todo)


@function_tool
async def list_todos(ctx: RunContextWrapper[ChatContext]) -> str:
    """List the user's open todos."""
    _, todos = await ctx.context.services.load_context(ctx.context.user_id)
    return _json(todos)


@function_tool
async def complete_todo(ctx: RunContextWrapper[ChatContext], todo_id: int) -> str:
    """Mark one of the user's todos as done.

    Args:
        todo_id: The number of the todo.
    """
    todo = await ctx.context.services.complete_todo(ctx.context.user_id, todo_id)
    if todo is not None:
        await ctx.context.context_changed(ctx.context.user_id)
    return _json(todo or {"error": f"no todo #{todo_id}"})


@function_tool
async def set_preference(ctx: RunContextWrapper[ChatContext], key: str, value: str) -> str:
    """Remember one of the user's preferences.

    Args:
        key: A short name for the preference.
        value: The preference in the user's words.
    """
    stored = await ctx.context.services.set_preference(ctx.context.user_id, key, value)
    await ctx.context.context_changed(ctx.context.user_id)
    return _json(stored)


@function_tool
async def get_preferences(ctx: RunContextWrapper[ChatContext]) -> str:
    """Return the user's stored preferences."""
    preferences, _ = await ctx.context.services.load_context(ctx.context.user_id)
    return _json(preferences)


def _instructions(role: str) -> Any:
    def build(ctx: RunContextWrapper[ChatContext], agent: Agent[ChatContext]) -> str:
        return f"{role}\n{describe_context(ctx.context)}"

    return build


def build_agents(model: Model) -> dict[str, Agent[ChatContext]]:
    """The assistant and the organizer it hands todo and preference work to."""
    organizer: Agent[ChatContext] = Agent(
        name=ORGANIZER,
        handoff_description="Manages the user's todos and preferences.",
        instructions=_instructions(
            "You manage the user's todos and preferences with your tools. Be brief."
        ),
        tools=[add_todo, list_todos, complete_todo, set_preference, get_preferences],
        model=model,
    )
    assistant: Agent[ChatContext] = Agent(
        name=ASSISTANT,
        instructions=_instructions(
            "You are a helpful personal assistant. Hand todo and preference requests "
            "to the organizer."
        ),
        handoffs=[organizer],
        model=model,
    )
    return {ASSISTANT: assistant, ORGANIZER: organizer}


def per_run_copy(agent: Agent[ChatContext]) -> Agent[ChatContext]:
    """A run's own shallow copy of a shared agent, and of the agents it hands off to.

    Nothing is rebuilt: tools, model and instructions stay the shared objects
    (a copy costs microseconds; `Agent.clone` re-validates every field). The
    copy only gives the run an agent identity of its own: the SDK checks each
    run's tools against every concurrent run of the same agent object, a walk
    that grows with the runs in flight.
    """
    run_agent = copy.copy(agent)
    run_agent.handoffs = [
        copy.copy(target) if isinstance(target, Agent) else target for target in agent.handoffs
    ]
    return run_agent
