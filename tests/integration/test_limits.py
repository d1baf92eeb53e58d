"""Input limits answered as PROTOCOL.md says, on an app deployed with tight limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import websockets

from tests.integration.chat_client import ChatClient
from tests.integration.conftest import Service, side_app

pytestmark = pytest.mark.ray

TIGHT_APP = "raychat-tight"
PREFIX = "/tight"


@pytest.fixture(scope="module")
def tight(service: Service) -> Iterator[str]:
    """The ws URL prefix of an app with small limits (same actors, same database)."""
    with side_app(
        service,
        TIGHT_APP,
        PREFIX,
        max_sockets_per_user=2,
        idle_timeout_s=1.5,
        max_frame_bytes=4096,
        max_text_chars=100,
        frame_rate_per_s=1.0,
        frame_rate_burst=30.0,
    ) as url:
        yield url


async def closed_code(ws: websockets.ClientConnection) -> int:
    """Read until the server closes the socket; return its close code."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(30):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_message_rate_limit_answers_rate_limited_with_retry_after(
    service: Service,
) -> None:
    # The shared app: `rate_limit_burst` chats at once, then `rate_limit_per_s` (per user).
    # How many are refused depends on how fast the machine takes them; what holds on any
    # machine: each chat is answered once, accepted or refused, and no more are accepted
    # than the bucket can have held in the time they took.
    burst, rate = service.settings.rate_limit_burst, service.settings.rate_limit_per_s
    sent = 40
    async with ChatClient(service.ws_url("u-flood")) as client:
        started = time.monotonic()
        hold = await client.start("hold the session in 3000 words", session_id="f")
        for i in range(sent):  # all at once, then read the answers
            await client.chat(f"again {i}", session_id="f", on_busy="reject", client_msg_id=f"m{i}")
        answers: dict[str, list[dict[str, Any]]] = {f"m{i}": [] for i in range(sent)}
        while any(not got for got in answers.values()):
            event = await client.next_of("run.accepted", "error")
            ref = event.get("client_msg_id") if event["type"] == "run.accepted" else event["ref"]
            answers[ref].append(event)
        elapsed = time.monotonic() - started
        # Frames are answered in order: the next answer is this ping's, nothing left over.
        await client.send({"type": "ping"})
        late = await client.next_of("pong", "run.accepted", "error")
        assert late["type"] == "pong", late
        started_runs = [e["run_id"] for got in answers.values() for e in got if "run_id" in e]
        for run_id in [hold, *started_runs]:
            await client.send({"type": "cancel", "run_id": run_id})
            await client.until_final(run_id)
    assert all(len(got) == 1 for got in answers.values()), answers
    outcomes = [got[0] for got in answers.values()]
    accepted = [e for e in outcomes if e["type"] == "run.accepted"]
    refused = [e for e in outcomes if e["type"] == "error"]
    assert len(accepted) + len(refused) == sent
    limited = [e for e in refused if e["code"] == "rate_limited"]
    assert {e["code"] for e in refused} <= {"busy", "rate_limited"}, refused
    # At most one token's wait (retry_after is rounded to the millisecond, so it may be 0).
    assert all(0 <= e["retry_after"] <= 1 / rate for e in limited), limited
    assert all("retry_after" not in e for e in refused if e["code"] == "busy"), refused
    # The bucket held `burst` tokens, refilled at `rate` over at most `elapsed` seconds,
    # and the held run took one: every chat beyond that was refused as rate limited (at
    # least one unless the machine took over 15 s for the 41 chats).
    assert len(limited) >= sent + 1 - (burst + rate * elapsed), (len(limited), elapsed)


async def test_long_text_is_too_large_and_huge_frame_closes_1009(
    service: Service, tight: str
) -> None:
    async with ChatClient(tight + service.token("u-size")) as client:
        await client.chat("x" * 101)
        assert (await client.next_of("error"))["code"] == "too_large"
        await client.send({"type": "chat", "text": "y" * 5000})
        assert client.ws is not None
        assert await closed_code(client.ws) == 1009


async def test_sockets_per_user_are_capped(service: Service, tight: str) -> None:
    url = tight + service.token("u-sockets")
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(ChatClient(url))
        await stack.enter_async_context(ChatClient(url))
        async with websockets.connect(url) as third:
            assert await closed_code(third) == 1008
        run = await first.turn("the first two still work")
        assert run.final is not None and run.final["type"] == "run.completed"


async def test_idle_socket_is_closed_and_a_busy_one_is_not(service: Service, tight: str) -> None:
    async with websockets.connect(tight + service.token("u-idle")) as idle:
        assert await closed_code(idle) == 1000
    async with ChatClient(tight + service.token("u-busy-reader")) as client:
        run = await client.turn("stream for a while, in 300 words")  # ~3 s, no frames sent
        assert run.final is not None and run.final["type"] == "run.completed"


async def test_frame_flood_is_rate_limited_and_the_socket_stays_up(
    service: Service, tight: str
) -> None:
    # The tight app: a burst of 30 frames, then 1 a second (per socket).
    burst, rate, sent = 30, 1.0, 40
    async with ChatClient(tight + service.token("u-pings")) as client:
        started = time.monotonic()
        for _ in range(sent):
            await client.send({"type": "ping"})
        answers = [await client.recv() for _ in range(sent)]
        elapsed = time.monotonic() - started
        kinds = [a["type"] for a in answers]
        assert kinds.count("pong") + kinds.count("error") == sent, answers
        errors = [a for a in answers if a["type"] == "error"]
        assert {a["code"] for a in errors} <= {"rate_limited"}, errors
        assert all(0 <= a["retry_after"] <= 1 / rate for a in errors), errors
        # At least what the bucket could not have held in the time the frames took (at
        # least one unless the machine took over 10 s for the 40 pings).
        assert len(errors) >= sent - (burst + rate * elapsed), (len(errors), elapsed)
        # Frames are answered in order, each once; the socket stays up and, once the
        # client waits as told, takes frames again.
        for probe in range(60):
            await client.send({"type": "cancel", "run_id": f"probe-{probe}"})
            answer = await client.recv()
            assert answer["type"] == "error", answer
            if answer["code"] == "not_found":
                assert answer["ref"] == f"probe-{probe}"
                break
            assert answer["code"] == "rate_limited", answer
            await asyncio.sleep(answer["retry_after"])  # wait as told, then try again
        else:
            raise AssertionError("the socket never took a frame again")


async def test_a_full_session_queue_answers_busy_and_stores_nothing(service: Service) -> None:
    # The limit lives in the shards, which every app shares, so it is tested at the shared
    # app's value (RAYCHAT_MAX_QUEUED_PER_SESSION, 16): one active run and 16 queued.
    limit = service.settings.max_queued_per_session
    async with ChatClient(service.ws_url("u-queue-cap")) as client:

        async def answer(text: str, session_id: str = "q") -> dict[str, Any]:
            """`run.accepted` or the `error` a chat gets, pacing past the per-user rate limit."""
            for _ in range(60):
                await client.chat(text, session_id=session_id)
                event = await client.next_of("run.accepted", "error")
                if event.get("code") != "rate_limited":
                    return event
                # The message rate limit answers before the queue check: wait as told.
                await asyncio.sleep(event["retry_after"])
            raise AssertionError("still rate limited")

        active = await answer("hold the session for a while, in 3000 words")
        assert active["type"] == "run.accepted"
        queued = []
        for i in range(limit):
            event = await answer(f"queued {i}")
            assert event["type"] == "run.accepted", event
            queued.append(event["run_id"])
        refused = await answer("one too many")
        assert refused["type"] == "error" and refused["code"] == "busy", refused
        other = await answer("another session is not held up", session_id="other")
        assert other["type"] == "run.accepted"
        positions = [
            e["position"]
            for e in client.received
            if e["type"] == "run.queued" and e["run_id"] in queued
        ]
        assert positions == list(range(1, limit + 1))
        # A cancelled queued run frees its place.
        await client.send({"type": "cancel", "run_id": queued[-1]})
        freed = (await client.until_final(queued[-1])).final
        assert freed is not None and freed["type"] == "run.cancelled"
        fits = await answer("fits again")
        assert fits["type"] == "run.accepted"
        for run_id in [fits["run_id"], *queued[:-1], active["run_id"]]:
            await client.send({"type": "cancel", "run_id": run_id})
            assert (await client.until_final(run_id)).final is not None
        await client.until_final(other["run_id"])
    stored = service.query(
        "SELECT role FROM messages WHERE user_id = ? AND text = 'one too many'", "u-queue-cap"
    )
    assert stored == []  # a refused chat stores nothing
    statuses = dict(
        service.query(
            "SELECT run_id, status FROM messages WHERE user_id = ? AND role = 'assistant'",
            "u-queue-cap",
        )
    )
    cancelled = [active["run_id"], *queued, fits["run_id"]]
    assert statuses == {**dict.fromkeys(cancelled, "cancelled"), other["run_id"]: "completed"}
