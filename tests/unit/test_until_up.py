"""`until_up`: a call is tried again while its actor restarts, within a bound."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorUnavailableError, RayActorError

from actors.remote import until_up


async def test_a_call_is_tried_again_until_its_actor_answers() -> None:
    answers: list[BaseException | str] = [RayActorError(), ActorUnavailableError("x", b"\0" * 16)]
    answers.append("answered")
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    retried: list[int] = []
    assert await until_up(call, 30, lambda: retried.append(1)) == "answered"
    assert len(retried) == 2
    assert calls == 3


async def test_it_gives_up_after_its_bound_and_other_errors_pass_at_once() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise RayActorError()

    with pytest.raises(RayActorError):
        await until_up(down, 0.5)
    assert 2 <= calls < 10

    async def wrong() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not an actor problem")

    calls = 0
    with pytest.raises(ValueError):
        await until_up(wrong, 30)
    assert calls == 1
