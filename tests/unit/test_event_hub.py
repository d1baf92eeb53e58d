"""EventHub: subscriptions, the long poll, delta coalescing, urgency and cleanup."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from actors.errors import Unavailable
from actors.event_hub import EventHub, PollBatch
from actors.events import FINAL_TYPES, Event

LONG = 60.0  # a coalescing interval no test run ever reaches
NOTHING = 0.01  # a poll timeout: with nothing pending the poll answers [] when it ends
GUARD = 5.0  # upper bound for something that must happen at once


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def delta(text: str) -> Event:
    return {"type": "message.delta", "text": text}


STARTED: Event = {"type": "run.started", "agent": "assistant"}
ACCEPTED: Event = {"type": "run.accepted", "session_id": "s", "duplicate": False}


def completed(text: str = "") -> Event:
    return {"type": "run.completed", "message_id": 1, "text": text}


def decode(batch: PollBatch) -> dict[str, list[dict[str, Any]]]:
    """run_id -> decoded events, checking each entry's shape and contiguous seqs."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for user_id, run_id, first_seq, encoded, end in batch:
        assert isinstance(user_id, str)
        assert all(isinstance(text, str) for text in encoded)
        events = [json.loads(text) for text in encoded]
        last = events[-1]
        if first_seq == 0 or last["type"] not in FINAL_TYPES:
            assert end is None  # only a real run's final event carries its end
        else:
            status = last["type"].removeprefix("run.")
            assert end is not None and end[0] == status
            assert end[1] == last.get("text", end[1])
        assert [e["seq"] for e in events] == list(range(first_seq, first_seq + len(events)))
        assert {e["run_id"] for e in events} == {run_id}
        assert run_id not in runs
        runs[run_id] = events
    return runs


async def poll_now(hub: EventHub, replica: str) -> PollBatch:
    """A poll that must answer at once (it would otherwise block for LONG)."""
    return await asyncio.wait_for(hub.poll(replica, LONG), GUARD)


async def still_waiting(task: asyncio.Task[PollBatch]) -> bool:
    """After every task that can run has run (event-loop turns, not time): not answered."""
    for _ in range(100):
        await asyncio.sleep(0)
    return not task.done()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> EventHub:
    return EventHub(coalesce_s=0, grace_s=30, replica_expiry_s=120, clock=clock)


@pytest.fixture
def slow_hub(clock: FakeClock) -> EventHub:
    """A hub whose coalescing interval never passes during a test."""
    return EventHub(coalesce_s=LONG, grace_s=30, clock=clock)


# -- runs and subscriptions ---------------------------------------------------


def test_open_run_twice_raises(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [])
    with pytest.raises(ValueError):
        hub.open_run("r1", "alice", [])


def test_subscribe_to_unknown_run_is_false(hub: EventHub) -> None:
    assert hub.subscribe("replica", "missing", 0) is False


async def test_subscribe_then_poll_returns_the_batch_shape(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.emit("r1", STARTED)
    assert hub.subscribe("replica", "r1", 0) is True
    batch = await poll_now(hub, "replica")
    assert len(batch) == 1
    user_id, run_id, first_seq, encoded, end = batch[0]
    assert (user_id, run_id, first_seq, end) == ("alice", "r1", 1, None)
    events = [json.loads(text) for text in encoded]
    assert [(e["type"], e["seq"]) for e in events] == [("run.accepted", 1), ("run.started", 2)]
    assert hub.events_sent == 2
    assert hub.polls == 1


async def test_the_entry_with_the_final_event_carries_the_run_end(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED, STARTED, delta("Hel")])
    hub.subscribe("replica", "r1", 0)
    assert [entry[4] for entry in await poll_now(hub, "replica")] == [None]
    hub.emit("r1", delta("lo"))
    hub.emit("r1", completed("Hello"))
    assert [entry[4] for entry in await poll_now(hub, "replica")] == [("completed", "Hello")]
    hub.open_run("r2", "alice", [ACCEPTED, STARTED, delta("part")])
    hub.subscribe("replica", "r2", 0)
    hub.emit("r2", {"type": "run.failed", "error": {"code": "model_error", "message": "x"}})
    assert [entry[4] for entry in await poll_now(hub, "replica")] == [("failed", "part")]


async def test_subscribe_after_seq_skips_earlier_events(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED, STARTED, delta("a")])
    hub.subscribe("replica", "r1", 2)
    runs = decode(await poll_now(hub, "replica"))
    assert [e["seq"] for e in runs["r1"]] == [3]


async def test_seqs_stay_contiguous_across_polls(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.subscribe("replica", "r1", 0)
    received: list[dict[str, Any]] = []
    received += decode(await poll_now(hub, "replica"))["r1"]
    hub.emit("r1", STARTED)
    hub.emit("r1", delta("Hello "))
    received += decode(await poll_now(hub, "replica"))["r1"]
    hub.emit("r1", delta("world"))
    hub.emit("r1", {"type": "tool.called", "name": "t", "arguments": "{}"})
    received += decode(await poll_now(hub, "replica"))["r1"]
    hub.emit("r1", completed("Hello world"))
    received += decode(await poll_now(hub, "replica"))["r1"]
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert "".join(e["text"] for e in received if e["type"] == "message.delta") == "Hello world"
    assert received[-1]["type"] == "run.completed"


async def test_replica_gets_only_its_subscribed_runs(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.open_run("r2", "bob", [ACCEPTED])
    hub.open_run("r3", "carol", [ACCEPTED])
    hub.subscribe("A", "r1", 0)
    hub.subscribe("B", "r2", 0)
    hub.subscribe("B", "r3", 0)
    assert set(decode(await poll_now(hub, "A"))) == {"r1"}
    batch_b = await poll_now(hub, "B")
    assert set(decode(batch_b)) == {"r2", "r3"}
    assert {(user, run) for user, run, _, _, _ in batch_b} == {("bob", "r2"), ("carol", "r3")}
    hub.emit("r2", STARTED)
    assert await hub.poll("A", NOTHING) == []
    assert set(decode(await poll_now(hub, "B"))) == {"r2"}


async def test_poll_with_nothing_pending_returns_empty_after_timeout(hub: EventHub) -> None:
    assert await hub.poll("replica", NOTHING) == []
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.subscribe("replica", "r1", 0)
    await poll_now(hub, "replica")
    assert await hub.poll("replica", NOTHING) == []


async def test_subscribe_up_to_date_has_nothing_pending(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED, STARTED])
    hub.subscribe("replica", "r1", 2)
    assert await hub.poll("replica", NOTHING) == []
    hub.emit("r1", delta("x"))
    assert [e["seq"] for e in decode(await poll_now(hub, "replica"))["r1"]] == [3]


async def test_resubscribe_with_lower_seq_resends(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED, STARTED])
    hub.subscribe("replica", "r1", 0)
    await poll_now(hub, "replica")
    hub.subscribe("replica", "r1", 1)
    assert [e["seq"] for e in decode(await poll_now(hub, "replica"))["r1"]] == [2]


async def test_waiting_poll_is_woken_by_an_emit(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.subscribe("replica", "r1", 0)
    await poll_now(hub, "replica")
    task = asyncio.create_task(hub.poll("replica", LONG))
    assert await still_waiting(task)
    hub.emit("r1", STARTED)
    runs = decode(await asyncio.wait_for(task, GUARD))
    assert [e["type"] for e in runs["r1"]] == ["run.started"]


async def test_emit_to_another_run_does_not_wake_the_poll(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.open_run("r2", "bob", [ACCEPTED])
    hub.subscribe("replica", "r1", 0)
    await poll_now(hub, "replica")
    task = asyncio.create_task(hub.poll("replica", LONG))
    hub.emit("r2", STARTED)
    assert await still_waiting(task)
    hub.emit("r1", STARTED)
    assert set(decode(await asyncio.wait_for(task, GUARD))) == {"r1"}


# -- coalescing ---------------------------------------------------------------


async def test_deltas_between_polls_are_merged_into_one_event(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED, STARTED])
    hub.subscribe("replica", "r1", 0)
    hub.emit("r1", delta("a"))
    await poll_now(hub, "replica")
    hub.emit("r1", delta("b"))
    hub.emit("r1", delta("c"))
    hub.emit("r1", delta("d"))
    events = decode(await poll_now(hub, "replica"))["r1"]
    assert events == [{"type": "message.delta", "text": "bcd", "run_id": "r1", "seq": 4}]
    hub.emit("r1", delta("e"))
    events = decode(await poll_now(hub, "replica"))["r1"]
    assert [(e["seq"], e["text"]) for e in events] == [(5, "e")]


async def test_non_urgent_news_waits_for_the_coalescing_interval(
    slow_hub: EventHub,
) -> None:
    slow_hub.open_run("r1", "alice", [ACCEPTED, STARTED, delta("first ")])
    slow_hub.subscribe("replica", "r1", 0)
    await poll_now(slow_hub, "replica")  # answered at once: a new subscription is urgent
    task = asyncio.create_task(slow_hub.poll("replica", LONG))
    slow_hub.emit("r1", delta("second "))  # not the first delta: not urgent
    assert await still_waiting(task)
    slow_hub.emit("r1", delta("third"))
    assert await still_waiting(task)
    slow_hub.emit("r1", completed("first second third"))  # final: urgent
    events = decode(await asyncio.wait_for(task, GUARD))["r1"]
    assert [(e["type"], e["seq"]) for e in events] == [("message.delta", 4), ("run.completed", 5)]
    assert events[0]["text"] == "second third"


async def test_first_delta_wakes_a_poll_at_once(slow_hub: EventHub) -> None:
    slow_hub.open_run("r1", "alice", [ACCEPTED])
    slow_hub.subscribe("replica", "r1", 0)
    await poll_now(slow_hub, "replica")
    task = asyncio.create_task(slow_hub.poll("replica", LONG))
    slow_hub.emit("r1", STARTED)  # not urgent: held for the interval
    assert await still_waiting(task)
    slow_hub.emit("r1", delta("Hi"))  # the run's first delta: urgent
    events = decode(await asyncio.wait_for(task, GUARD))["r1"]
    assert [e["type"] for e in events] == ["run.started", "message.delta"]


async def test_pending_first_delta_is_answered_without_holding(slow_hub: EventHub) -> None:
    slow_hub.open_run("r1", "alice", [ACCEPTED])
    slow_hub.subscribe("replica", "r1", 0)
    await poll_now(slow_hub, "replica")
    slow_hub.emit("r1", delta("Hi"))
    events = decode(await poll_now(slow_hub, "replica"))["r1"]
    assert [e["type"] for e in events] == ["message.delta"]


async def test_final_event_wakes_a_poll_at_once(slow_hub: EventHub) -> None:
    slow_hub.open_run("r1", "alice", [ACCEPTED, STARTED, delta("x")])
    slow_hub.subscribe("replica", "r1", 0)
    await poll_now(slow_hub, "replica")
    slow_hub.emit("r1", {"type": "run.failed", "error": {"code": "model_error", "message": "m"}})
    events = decode(await poll_now(slow_hub, "replica"))["r1"]
    assert [e["type"] for e in events] == ["run.failed"]


async def test_replica_idle_past_the_interval_is_answered_at_once(
    slow_hub: EventHub, clock: FakeClock
) -> None:
    slow_hub.open_run("r1", "alice", [ACCEPTED, STARTED, delta("a")])
    slow_hub.subscribe("replica", "r1", 0)
    await poll_now(slow_hub, "replica")
    slow_hub.emit("r1", delta("b"))  # not urgent
    clock.now += LONG  # the interval since the last answer has passed
    events = decode(await poll_now(slow_hub, "replica"))["r1"]
    assert [(e["seq"], e["text"]) for e in events] == [(4, "b")]


# -- housekeeping -------------------------------------------------------------


def test_active_and_buffered_runs(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.open_run("r2", "bob", [ACCEPTED])
    hub.emit("r2", completed())
    assert hub.active_runs == 1
    assert hub.buffered_runs == 2


def test_emit_of_final_event_records_finished_at(hub: EventHub, clock: FakeClock) -> None:
    buffer = hub.open_run("r1", "alice", [ACCEPTED])
    hub.emit("r1", delta("x"))
    assert buffer.finished_at is None
    clock.now = 777.0
    hub.emit("r1", completed("x"))
    assert buffer.finished_at == 777.0


def test_cleanup_drops_finished_runs_after_grace_and_not_before(
    hub: EventHub, clock: FakeClock
) -> None:
    hub.open_run("done", "alice", [ACCEPTED])
    hub.open_run("live", "bob", [ACCEPTED])
    hub.emit("done", completed())
    clock.now += 29.999
    assert hub.cleanup() == 0
    assert hub.get("done") is not None
    clock.now += 0.001  # exactly grace_s after the final event
    assert hub.cleanup() == 1
    assert hub.get("done") is None
    assert hub.replay("done", 0) is None
    clock.now += 10_000
    assert hub.cleanup() == 0
    assert hub.get("live") is not None


async def test_cleanup_forgets_replicas_that_stopped_polling(
    hub: EventHub, clock: FakeClock
) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.subscribe("gone", "r1", 0)
    hub.subscribe("here", "r1", 0)
    await poll_now(hub, "gone")
    clock.now += 100
    await poll_now(hub, "here")
    clock.now += 20  # "gone" last polled 120 s ago, "here" 20 s ago
    hub.cleanup()
    hub.emit("r1", STARTED)
    assert await hub.poll("gone", NOTHING) == []
    assert set(decode(await poll_now(hub, "here"))) == {"r1"}


async def test_pending_run_dropped_by_cleanup_is_skipped(hub: EventHub, clock: FakeClock) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.open_run("r2", "bob", [ACCEPTED])
    hub.subscribe("replica", "r1", 0)
    hub.subscribe("replica", "r2", 0)
    hub.emit("r1", completed())
    clock.now += 30
    hub.cleanup()
    assert set(decode(await poll_now(hub, "replica"))) == {"r2"}


def test_replay_returns_events_after_seq(hub: EventHub) -> None:
    hub.open_run("r1", "alice", [ACCEPTED, STARTED, delta("a")])
    replayed = hub.replay("r1", 1)
    assert replayed is not None
    assert [e["seq"] for e in replayed] == [2, 3]
    assert hub.replay("unknown", 0) is None


def test_finished_buffers_beyond_the_cap_are_evicted_oldest_first(clock: FakeClock) -> None:
    hub = EventHub(coalesce_s=0.0, grace_s=1000.0, max_finished=2, clock=clock)
    for name in ("a", "b", "c"):
        hub.open_run(name, "u", [])
        hub.emit(name, completed(name))
    hub.open_run("live", "u", [])
    assert hub.get("a") is None and hub.evicted == 1
    assert hub.get("b") is not None and hub.get("c") is not None
    assert hub.get("live") is not None  # runs in flight are never evicted


# -- bounded in bytes, cursors collected --------------------------------------

KIB = "x" * 1024


def test_bytes_held_are_counted_and_released(clock: FakeClock) -> None:
    hub = EventHub(coalesce_s=0.0, grace_s=30.0, clock=clock)
    hub.open_run("r1", "u", [ACCEPTED])
    hub.emit("r1", delta(KIB))
    buffer = hub.get("r1")
    assert buffer is not None
    assert buffer.nbytes >= 2 * 1024 and hub.nbytes == buffer.nbytes
    hub.emit("r1", completed(KIB))
    assert hub.nbytes == buffer.nbytes >= 3 * 1024
    sizes = hub.sizes()
    assert (sizes["buffered_runs"], sizes["finished_runs"]) == (1, 1)
    assert sizes["buffer_bytes"] == hub.nbytes
    clock.now += 30
    assert hub.cleanup() == 1
    assert hub.nbytes == 0 and hub.sizes()["buffered_runs"] == 0


def test_finished_runs_are_evicted_oldest_first_to_stay_within_the_bytes(
    clock: FakeClock,
) -> None:
    hub = EventHub(coalesce_s=0.0, grace_s=1000.0, max_bytes=12 * 1024, clock=clock)
    hub.open_run("live", "u", [])
    hub.emit("live", delta(KIB))
    for name in ("a", "b", "c", "d", "e"):
        hub.open_run(name, "u", [])
        hub.emit(name, delta(KIB))
        hub.emit(name, completed(KIB))  # about 3 KiB each
        assert hub.nbytes <= hub.max_bytes
    assert hub.get("live") is not None  # a live run is never evicted
    kept = [name for name in "abcde" if hub.get(name) is not None]
    assert kept and kept == list("abcde"[-len(kept) :]) and hub.evicted == 5 - len(kept)
    assert hub.evicted >= 1


def test_a_new_run_is_refused_when_live_runs_alone_hold_the_bytes(clock: FakeClock) -> None:
    hub = EventHub(coalesce_s=0.0, grace_s=1000.0, max_bytes=8 * 1024, clock=clock)
    hub.open_run("done", "u", [])
    hub.emit("done", completed(KIB))
    hub.open_run("live", "u", [])
    for _ in range(5):
        hub.emit("live", delta(KIB))  # the live run grows past the bound: it goes on
    assert hub.get("live") is not None and hub.get("done") is None  # finished went first
    with pytest.raises(Unavailable):
        hub.open_run("new", "u", [])
    assert hub.get("new") is None and hub.sizes()["buffers_refused"] == 1
    hub.emit("live", completed())
    hub.open_run("new", "u", [])  # the finished run made way
    assert hub.get("live") is None and hub.get("new") is not None


async def test_a_cursor_on_a_finished_run_is_collected(hub: EventHub, clock: FakeClock) -> None:
    hub.open_run("r1", "alice", [ACCEPTED])
    hub.emit("r1", completed())
    # A replica that has seen every event of a finished run keeps no cursor on it.
    assert hub.subscribe("replica", "r1", 2) is True
    assert hub.cursors == 0
    # One that subscribed but never polled before the run expired loses its cursor too.
    hub.open_run("r2", "alice", [ACCEPTED])
    hub.subscribe("replica", "r2", 0)
    hub.subscribe("other", "r2", 0)
    hub.emit("r2", completed())
    assert hub.cursors == 2
    clock.now += 30
    assert hub.cleanup() == 2
    assert hub.cursors == 0 and hub.sizes()["cursors"] == 0
    assert await hub.poll("replica", NOTHING) == []


async def test_a_finished_run_not_yet_sent_is_kept_until_its_replica_polls(
    clock: FakeClock,
) -> None:
    hub = EventHub(coalesce_s=0.0, grace_s=1000.0, max_bytes=4 * 1024, clock=clock)
    hub.open_run("live", "u", [])
    hub.open_run("r1", "u", [ACCEPTED])
    hub.subscribe("replica", "r1", 0)
    for _ in range(5):
        hub.emit("live", delta(KIB))  # live runs alone are over the bound
    hub.emit("r1", completed())
    assert hub.get("r1") is not None  # its final event has not been sent yet
    runs = decode(await poll_now(hub, "replica"))
    assert runs["r1"][-1]["type"] == "run.completed"
    with pytest.raises(Unavailable):
        hub.open_run("r2", "u", [])  # evicts the delivered run; live ones still too big
    assert hub.get("r1") is None and hub.get("live") is not None
