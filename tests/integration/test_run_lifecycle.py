"""Runs owned by actors: resume, queueing, cancel, idempotency, many devices, isolation."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import pytest

from tests.integration.chat_client import ChatClient, RunLog
from tests.integration.conftest import BOTH_DATABASES, Service

pytestmark = [pytest.mark.ray, BOTH_DATABASES]


def contiguous(events: list[dict[str, Any]]) -> bool:
    return [e["seq"] for e in events] == list(range(1, len(events) + 1))


def final_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    return events[-1]


def delta_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "message.delta")


async def test_resume_after_a_drop_at_20_random_points(service: Service) -> None:
    rng = random.Random(2026)
    for attempt in range(20):
        user = f"u-drop-{attempt}"
        async with ChatClient(service.ws_url(user)) as first:
            run_id = await first.start(f"attempt {attempt}, in 80 words")
            cut = rng.randint(1, 20)  # events after run.accepted before the drop
            while len(first.runs[run_id].events) < 1 + cut and not first.runs[run_id].final:
                await first.recv()
            seen = list(first.runs[run_id].events)
        if seen[-1] is first.runs[run_id].final:
            seen.pop()  # dropped right at the end: the resume must bring the final event back
        async with ChatClient(service.ws_url(user)) as second:
            await second.send({"type": "resume", "run_id": run_id, "after_seq": seen[-1]["seq"]})
            rest = await second.until_final(run_id)
        events = seen + rest.events
        assert contiguous(events), (attempt, cut, [e["seq"] for e in events])
        final = final_of(events)
        assert final["type"] == "run.completed"
        assert delta_text(events) == final["text"]
        assert len(final["text"].split()) == 80


async def _wait_all_buffers_expired(service: Service) -> int:
    """Call cleanup until no run buffer is left (bounded); return how many it reported."""
    deadline = time.monotonic() + 60
    removed = 0
    async with httpx.AsyncClient(base_url=service.http, headers=service.admin_headers()) as http:
        while time.monotonic() < deadline:
            response = await http.post("/api/websocket/performance/cleanup")
            removed += response.json()["removed"]["run_buffers"]
            stats = (await http.get("/api/websocket/performance/stats")).json()
            if stats["agent_manager"]["buffered_runs"] == 0:
                return removed
            await asyncio.sleep(0.25)  # the grace period is wall-clock time in a real cluster
    raise AssertionError("run buffers never expired")


async def test_resume_after_the_run_finished_from_buffer_then_database(service: Service) -> None:
    user = "u-late"
    async with ChatClient(service.ws_url(user)) as first:
        run_id = await first.start("answer me in 30 words")
        await first.next_of("message.delta")
        seen = list(first.runs[run_id].events)
    async with ChatClient(service.ws_url(user)) as listener:  # wait for the end elsewhere
        await listener.send({"type": "resume", "run_id": run_id, "after_seq": 0})
        whole = await listener.until_final(run_id)
    async with ChatClient(service.ws_url(user)) as late:
        await late.send({"type": "resume", "run_id": run_id, "after_seq": seen[-1]["seq"]})
        rest = await late.until_final(run_id)
    events = seen + rest.events
    assert contiguous(events) and events == whole.events
    final = final_of(events)
    assert delta_text(events) == final["text"]

    await _wait_all_buffers_expired(service)
    async with ChatClient(service.ws_url(user)) as later:
        await later.send({"type": "resume", "run_id": run_id, "after_seq": seen[-1]["seq"]})
        stored = await later.until_final(run_id)
    # From the database: only the final event, with its original seq and the whole text.
    assert stored.events == [final]


async def test_enqueue_runs_strictly_in_order(service: Service) -> None:
    async with ChatClient(service.ws_url("u-queue")) as client:
        # The first run outlasts the test (30 s of tokens), so the second one is queued
        # behind it whatever the machine's load; the test then ends the first itself.
        first = await client.start("first, in 3000 words", session_id="q")
        second = await client.start("second one", session_id="q")
        queued = await client.next_of("run.queued")
        assert queued == {"type": "run.queued", "position": 1, "run_id": second, "seq": 2}
        await client.next_of("message.delta")
        await client.send({"type": "cancel", "run_id": first})
        # Runs of a session run strictly in order: the second starts only once the
        # first one's reply is stored. Events of different runs may reach the socket
        # in either order (each agent actor is polled on its own), so the order is
        # judged from the store at the moment the second run has started.
        while not any(e["type"] == "run.started" for e in client.runs[second].events):
            await client.recv()
        first_reply = service.query(
            "SELECT status FROM messages WHERE run_id = ? AND role = 'assistant'", first
        )
        assert first_reply == [("cancelled",)]
        a = await client.until_final(first)
        b = await client.until_final(second)
    assert a.final is not None and a.final["type"] == "run.cancelled"
    assert b.final is not None and b.final["type"] == "run.completed"
    assert contiguous(a.events) and contiguous(b.events)
    rows = service.query(
        "SELECT run_id, role, status FROM messages WHERE user_id = 'u-queue' ORDER BY id"
    )
    assert [r[0] for r in rows] == [first, first, second, second]
    assert [r[2] for r in rows if r[1] == "assistant"] == ["cancelled", "completed"]


async def test_reject_and_interrupt(service: Service) -> None:
    async with ChatClient(service.ws_url("u-busy")) as client:
        active = await client.start("long one, in 200 words", session_id="b")
        await client.chat("not now", session_id="b", on_busy="reject", client_msg_id="rej-1")
        error = await client.next_of("error")
        assert error["code"] == "busy" and error["ref"] == "rej-1"
        assert service.query("SELECT COUNT(*) FROM messages WHERE text = 'not now'") == [(0,)]

        await client.next_of("message.delta")
        newer = await client.start("stop that and answer this", session_id="b", on_busy="interrupt")
        old = await client.until_final(active)
        new = await client.until_final(newer)
    assert old.final is not None and old.final["type"] == "run.cancelled"
    assert old.final["text"] == old.deltas_text and len(old.final["text"].split()) < 200
    assert new.final is not None and new.final["type"] == "run.completed"
    stored = dict(
        service.query(
            "SELECT run_id, status FROM messages WHERE user_id = 'u-busy' AND role = 'assistant'"
        )
    )
    assert stored == {active: "cancelled", newer: "completed"}
    text = service.query(
        "SELECT text FROM messages WHERE run_id = ? AND role = 'assistant'", active
    )
    assert text == [(old.final["text"],)]


async def test_two_sessions_of_one_user_stream_at_the_same_time(service: Service) -> None:
    async with ChatClient(service.ws_url("u-sessions")) as client:
        long_run = await client.start("in 200 words please", session_id="one")
        await client.next_of("message.delta")
        short_run = await client.start("quick", session_id="two")
        short = await client.until_final(short_run)
        assert client.runs[long_run].final is None  # still streaming in session one
        long = await client.until_final(long_run)
    assert short.final and long.final
    assert all(e["type"] != "run.queued" for e in short.events)


async def test_cancel_stops_the_model_and_keeps_the_partial_reply(service: Service) -> None:
    async with ChatClient(service.ws_url("u-cancel")) as client:
        run_id = await client.start("a very long answer in 1000 words")
        for _ in range(3):
            await client.next_of("message.delta")
        await client.send({"type": "cancel", "run_id": run_id})
        run = await client.until_final(run_id)
        assert run.final is not None and run.final["type"] == "run.cancelled"
        assert run.events[-1] is run.final  # nothing of that run after its final event
        stored = service.query(
            "SELECT text, status FROM messages WHERE run_id = ? AND role = 'assistant'", run_id
        )
        assert stored == [(run.deltas_text, "cancelled")]
        assert run.final["text"] == run.deltas_text

        # The model stopped: once no run is active anywhere (runs of earlier tests
        # included), a 50-token turn adds exactly 50 emitted tokens. A model still
        # streaming for a cancelled run would add more.
        await _until_no_run_is_active(service)
        before = service.stats()["agent_manager"]["tokens_emitted"]
        turn = await client.turn("now a normal one in 50 words")
        after = service.stats()["agent_manager"]["tokens_emitted"]
        assert turn.final is not None and len(turn.final["text"].split()) == 50
        assert after - before == 50

        # Cancelling a finished run answers with its final event.
        await client.send({"type": "cancel", "run_id": run_id})
        again = await client.next_of("run.cancelled")
        assert again == run.final


async def _until_no_run_is_active(service: Service) -> None:
    """Poll the stats until no agent actor executes a run (bounded)."""
    deadline = time.monotonic() + 60
    while service.stats()["runs"]["active"] != 0:
        assert time.monotonic() < deadline, "runs of earlier tests are still active"
        await asyncio.sleep(0.2)  # poll for the condition, bounded by the deadline


async def test_same_client_msg_id_twice_also_across_a_reconnect(service: Service) -> None:
    async with ChatClient(service.ws_url("u-idem")) as client:
        run_id = await client.start("pay the bill", client_msg_id="m-1")
        await client.chat("pay the bill", client_msg_id="m-1")
        dup = await client.next_of("run.accepted")
        assert dup["duplicate"] is True and dup["run_id"] == run_id and dup["seq"] == 1
        await client.until_final(run_id)
    async with ChatClient(service.ws_url("u-idem")) as again:
        await again.chat("pay the bill", client_msg_id="m-1")
        accepted = await again.next_of("run.accepted")
        assert accepted["duplicate"] is True and accepted["run_id"] == run_id
        replayed = await again.until_final(run_id)
    assert replayed.final is not None and replayed.final["type"] == "run.completed"
    assert service.query(
        "SELECT COUNT(*) FROM messages WHERE user_id = 'u-idem' AND role = 'user'"
    ) == [(1,)]


async def test_two_sockets_of_one_user_see_every_event(service: Service) -> None:
    async with (
        ChatClient(service.ws_url("u-devices")) as phone,
        ChatClient(service.ws_url("u-devices")) as laptop,
    ):
        run_a = await phone.start("from the phone")
        seen_a = await laptop.until_final(run_a)
        await phone.until_final(run_a)
        run_b = await laptop.start("from the laptop")
        seen_b = await phone.until_final(run_b)
        await laptop.until_final(run_b)
    assert phone.runs[run_a].events == seen_a.events and contiguous(seen_a.events)
    assert laptop.runs[run_b].events == seen_b.events and contiguous(seen_b.events)


async def test_history_shows_a_reply_in_flight(service: Service) -> None:
    headers = {"Authorization": f"Bearer {service.token('u-inflight')}"}
    async with ChatClient(service.ws_url("u-inflight")) as client:
        run_id = await client.start("tell me everything in 300 words", session_id="live")
        for _ in range(3):
            await client.next_of("message.delta")
        async with httpx.AsyncClient(base_url=service.http, headers=headers) as http:
            body = (await http.get("/api/history", params={"session_id": "live"})).json()
        run = await client.until_final(run_id)
    reply = body["messages"][-1]
    assert reply["run_id"] == run_id and reply["status"] == "streaming"
    assert reply["text"] and run.final is not None and run.final["text"].startswith(reply["text"])


async def test_a_user_cannot_reach_another_users_run(service: Service) -> None:
    async with ChatClient(service.ws_url("u-owner")) as owner:
        run: RunLog = await owner.turn("my secret plans", session_id="private")
    async with ChatClient(service.ws_url("u-intruder")) as intruder:
        for frame in (
            {"type": "resume", "run_id": run.run_id, "after_seq": 0},
            {"type": "cancel", "run_id": run.run_id},
        ):
            await intruder.send(frame)
            error = await intruder.next_of("error")
            assert error["code"] == "not_found" and error["ref"] == run.run_id
        assert not intruder.runs
    headers = {"Authorization": f"Bearer {service.token('u-intruder')}"}
    async with httpx.AsyncClient(base_url=service.http, headers=headers) as http:
        body = (await http.get("/api/history", params={"session_id": "private"})).json()
    assert body["messages"] == []


async def test_stats_count_queued_cancelled_and_resumed(service: Service) -> None:
    """The counters move by what this test itself does (earlier tests moved them too)."""
    before = service.stats()["runs"]
    assert {"queued", "cancelled", "resumed"} <= set(before)
    async with ChatClient(service.ws_url("u-counted")) as client:
        held = await client.start("hold the session in 3000 words", session_id="c")
        waiting = await client.start("wait behind it", session_id="c")
        await client.next_of("run.queued")
        # `queued` counts the runs waiting now: this one at least.
        assert service.stats()["runs"]["queued"] >= 1
        await client.send({"type": "cancel", "run_id": held})
        cancelled = await client.until_final(held)
        assert cancelled.final is not None and cancelled.final["type"] == "run.cancelled"
        await client.until_final(waiting)
        await client.send({"type": "resume", "run_id": held, "after_seq": 1})
        await client.next_of("run.cancelled")
    after = service.stats()["runs"]
    assert after["cancelled"] - before["cancelled"] >= 1
    assert after["resumed"] - before["resumed"] >= 1
