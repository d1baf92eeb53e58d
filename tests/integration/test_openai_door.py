"""The OpenAI-compatible door end to end: the official `openai` client against the service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import Service

pytestmark = [pytest.mark.ray]

SESSION = "X-Raychat-Session"


@asynccontextmanager
async def client_for(service: Service, user_id: str) -> AsyncIterator[AsyncOpenAI]:
    """An `AsyncOpenAI` client for raychat as `user_id` (no retries: errors show at once)."""
    async with AsyncOpenAI(
        base_url=f"{service.http}/v1", api_key=service.token(user_id), max_retries=0, timeout=60
    ) as client:
        yield client


async def until_stored(
    service: Service, user_id: str, session_id: str, statuses: tuple[str, ...], deadline_s: float
) -> list[dict[str, Any]]:
    """The session's history once its last reply has one of `statuses` (polled, bounded)."""
    end = time.monotonic() + deadline_s
    rows: list[dict[str, Any]] = []
    while time.monotonic() < end:
        rows = await asyncio.to_thread(service.history, user_id, session_id)
        if rows and rows[-1]["role"] == "assistant" and rows[-1]["status"] in statuses:
            return rows
        await asyncio.sleep(0.1)  # polling the stored history with a deadline
    raise AssertionError(f"the reply was not stored as {statuses}: {rows}")


async def test_models_list_raychat_and_its_agents(service: Service) -> None:
    async with client_for(service, "door-models") as client:
        page = await client.models.list()
        ids = [model.id for model in page.data]
        assert ids[0] == "raychat"
        assert {"raychat-assistant", "raychat-organizer"} <= set(ids)
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.code == "model_not_found"


async def test_whole_completion_is_stored_in_the_chosen_session(service: Service) -> None:
    async with client_for(service, "door-whole") as client:
        completion = await client.chat.completions.create(
            model="raychat",
            messages=[{"role": "user", "content": "hello through the door"}],
            extra_headers={SESSION: "door-s1"},
        )
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content
    rows = service.history("door-whole", "door-s1")
    assert [(r["role"], r["text"], r["status"]) for r in rows] == [
        ("user", "hello through the door", "stored"),
        ("assistant", choice.message.content, "completed"),
    ]


async def test_stream_arrives_in_chunks_and_ends_with_stop(service: Service) -> None:
    async with client_for(service, "door-stream") as client:
        stream = await client.chat.completions.create(
            model="raychat",
            messages=[{"role": "user", "content": "tell me about rivers in 40 words"}],
            stream=True,
            extra_headers={SESSION: "door-s2"},
        )
        chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(contents) >= 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert len({chunk.id for chunk in chunks}) == 1
    rows = service.history("door-stream", "door-s2")
    assert rows[-1]["role"] == "assistant" and rows[-1]["status"] == "completed"
    assert rows[-1]["text"] == "".join(contents)


async def test_a_conversation_resent_by_the_client_stays_in_one_session(service: Service) -> None:
    """Without the header, each turn of one conversation finds the same (derived) session."""
    first = {"role": "user", "content": "door conversation one"}
    async with client_for(service, "door-derived") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="raychat", messages=[first]
        )
        session = raw.headers[SESSION]
        reply = raw.parse().choices[0].message.content
        raw2 = await client.chat.completions.with_raw_response.create(
            model="raychat",
            messages=[
                {"role": "system", "content": "be brief"},
                first,
                {"role": "assistant", "content": reply},
                {"role": "user", "content": "and a follow-up"},
            ],
        )
        other = await client.chat.completions.with_raw_response.create(
            model="raychat", messages=[{"role": "user", "content": "another conversation"}]
        )
    assert raw2.headers[SESSION] == session
    assert other.headers[SESSION] != session
    texts = [(r["role"], r["text"]) for r in service.history("door-derived", session)]
    assert texts == [
        ("user", "door conversation one"),
        ("assistant", reply),
        ("user", "and a follow-up"),
        ("assistant", raw2.parse().choices[0].message.content),
    ]


async def test_bad_token_is_an_authentication_error(service: Service) -> None:
    async with AsyncOpenAI(
        base_url=f"{service.http}/v1", api_key="not-a-token", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="raychat", messages=[{"role": "user", "content": "hi"}]
            )


@pytest.mark.parametrize(
    ("messages", "headers"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], {}),
        ([{"role": "user", "content": "   "}], {}),
        ([{"role": "user", "content": "hi"}], {SESSION: "no spaces allowed"}),
        ([{"role": "user", "content": "hi"}], {"X-Raychat-On-Busy": "sometimes"}),
        ([], {}),
    ],
)
async def test_bad_request_is_a_bad_request_error(
    service: Service, messages: list[Any], headers: dict[str, str]
) -> None:
    async with client_for(service, "door-bad") as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="raychat", messages=messages, extra_headers=headers
            )


async def test_two_users_stream_at_once(service: Service) -> None:
    """B's whole streamed turn arrives while A's stream is still open and streaming."""
    async with client_for(service, "door-a") as a_client, client_for(service, "door-b") as b:
        a_stream = await a_client.chat.completions.create(
            model="raychat",
            messages=[{"role": "user", "content": "a long story in 300 words"}],
            stream=True,
        )
        a_chunks = aiter(a_stream)
        while not (await anext(a_chunks)).choices[0].delta.content:
            pass
        b_stream = await b.chat.completions.create(
            model="raychat", messages=[{"role": "user", "content": "quick one"}], stream=True
        )
        b_chunks = [chunk async for chunk in b_stream]
        assert b_chunks[-1].choices[0].finish_reason == "stop"
        # A's stream is still open: its next chunk is more of the reply, not the end.
        a_next = await anext(a_chunks)
        assert a_next.choices[0].finish_reason is None
        await a_stream.close()


async def test_busy_session_is_429_and_a_closed_stream_cancels_its_run(service: Service) -> None:
    user, session = "door-busy", "door-s3"
    async with client_for(service, user) as client:
        stream = await client.chat.completions.create(
            model="raychat",
            messages=[{"role": "user", "content": "a long story in 300 words"}],
            stream=True,
            extra_headers={SESSION: session},
        )
        chunks = aiter(stream)
        while not (await anext(chunks)).choices[0].delta.content:
            pass
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(
                model="raychat",
                messages=[{"role": "user", "content": "me too"}],
                extra_headers={SESSION: session, "X-Raychat-On-Busy": "reject"},
            )
        assert info.value.code == "busy"
        assert int(info.value.response.headers["retry-after"]) >= 1
        await stream.close()  # the client goes away mid-reply
    rows = await until_stored(service, user, session, ("cancelled",), deadline_s=20)
    assert [r["role"] for r in rows] == ["user", "assistant"]  # the refused turn is not stored
