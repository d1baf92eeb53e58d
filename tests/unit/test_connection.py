"""Connection: at-most-once, in-order delivery, replay hand-over, overflow and the sender."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from actors.connection import Connection
from actors.events import Event, encode


def run_event(run_id: str, seq: int, kind: str = "message.delta") -> Event:
    event: Event = {"type": kind, "run_id": run_id, "seq": seq}
    if kind == "message.delta":
        event["text"] = f"t{seq} "
    return event


def texts(run_id: str, first: int, last: int) -> list[str]:
    """Encoded events of `run_id` with seqs first..last."""
    return [encode(run_event(run_id, seq)) for seq in range(first, last + 1)]


def drain(conn: Connection) -> list[dict[str, Any]]:
    """Everything queued so far, decoded (without a sender task)."""
    out = []
    while conn.queued:
        out.append(json.loads(conn._queue.get_nowait()))
    return out


def seqs(events: list[dict[str, Any]], run_id: str = "r1") -> list[int]:
    return [e["seq"] for e in events if e.get("run_id") == run_id]


@pytest.fixture
def conn() -> Connection:
    async def send(_text: str) -> None:  # never called: tests drain the queue directly
        raise AssertionError("no sender in this test")

    return Connection("alice", send, queue_max=1000)


# -- live delivery ------------------------------------------------------------


def test_deliver_queues_events_in_order(conn: Connection) -> None:
    conn.deliver("r1", 1, texts("r1", 1, 3))
    conn.deliver("r1", 4, texts("r1", 4, 5))
    assert seqs(drain(conn)) == [1, 2, 3, 4, 5]
    assert conn.seen["r1"] == 5


def test_deliver_drops_already_seen_seqs(conn: Connection) -> None:
    conn.deliver("r1", 1, texts("r1", 1, 3))
    conn.deliver("r1", 2, texts("r1", 2, 5))  # 2 and 3 overlap
    conn.deliver("r1", 1, texts("r1", 1, 5))  # all seen
    assert seqs(drain(conn)) == [1, 2, 3, 4, 5]
    assert conn.seen["r1"] == 5


def test_deliver_tracks_runs_separately(conn: Connection) -> None:
    conn.deliver("r1", 1, texts("r1", 1, 2))
    conn.deliver("r2", 1, texts("r2", 1, 2))
    events = drain(conn)
    assert seqs(events, "r1") == [1, 2]
    assert seqs(events, "r2") == [1, 2]


def test_deliver_of_empty_list_changes_nothing(conn: Connection) -> None:
    conn.deliver("r1", 1, [])
    assert conn.queued == 0
    assert "r1" not in conn.seen


# -- direct events ------------------------------------------------------------


def test_send_event_queues_non_run_events(conn: Connection) -> None:
    conn.send_event({"type": "pong"})
    conn.send_event({"type": "error", "code": "bad_json", "message": "x"})
    assert drain(conn) == [
        {"type": "pong"},
        {"type": "error", "code": "bad_json", "message": "x"},
    ]
    assert len(conn.seen) == 0


def test_send_event_of_a_run_event_marks_its_seq_seen(conn: Connection) -> None:
    conn.send_event(run_event("r1", 1, "run.accepted"))
    conn.deliver("r1", 1, texts("r1", 1, 3))
    events = drain(conn)
    assert [(e["type"], e["seq"]) for e in events] == [
        ("run.accepted", 1),
        ("message.delta", 2),
        ("message.delta", 3),
    ]


def test_send_event_never_lowers_the_seen_seq(conn: Connection) -> None:
    conn.deliver("r1", 1, texts("r1", 1, 4))
    conn.send_event(run_event("r1", 2, "run.accepted"))
    assert conn.seen["r1"] == 4


# -- replay -------------------------------------------------------------------


def test_replay_holds_live_events_then_sends_replay_then_held(conn: Connection) -> None:
    conn.begin_replay("r1")
    conn.deliver("r1", 4, texts("r1", 4, 5))  # live, arrives before the replay
    assert conn.queued == 0
    conn.deliver("r1", 6, texts("r1", 6, 6))
    assert conn.queued == 0
    replayed = [run_event("r1", seq) for seq in range(3, 6)]  # 3..5 overlaps the held 4..5
    conn.finish_replay("r1", 2, replayed)
    assert seqs(drain(conn)) == [3, 4, 5, 6]
    assert conn.seen["r1"] == 6


def test_replay_skips_events_at_or_before_after_seq(conn: Connection) -> None:
    conn.begin_replay("r1")
    conn.finish_replay("r1", 3, [run_event("r1", seq) for seq in range(1, 6)])
    assert seqs(drain(conn)) == [4, 5]


def test_live_events_after_replay_continue_without_gap_or_duplicate(conn: Connection) -> None:
    conn.begin_replay("r1")
    conn.deliver("r1", 3, texts("r1", 3, 4))
    conn.finish_replay("r1", 0, [run_event("r1", seq) for seq in range(1, 4)])
    conn.deliver("r1", 4, texts("r1", 4, 6))  # 4 already sent from the held events
    assert seqs(drain(conn)) == [1, 2, 3, 4, 5, 6]


def test_replay_of_one_run_does_not_hold_another(conn: Connection) -> None:
    conn.begin_replay("r1")
    conn.deliver("r2", 1, texts("r2", 1, 2))
    conn.deliver("r1", 1, texts("r1", 1, 1))
    assert seqs(drain(conn), "r2") == [1, 2]
    conn.finish_replay("r1", 0, [])
    assert seqs(drain(conn)) == [1]


def test_abandon_replay_drops_held_events_and_resumes_live(conn: Connection) -> None:
    conn.begin_replay("r1")
    conn.deliver("r1", 1, texts("r1", 1, 2))
    conn.abandon_replay("r1")
    assert conn.queued == 0
    conn.deliver("r1", 3, texts("r1", 3, 3))
    assert seqs(drain(conn)) == [3]


def test_begin_replay_twice_keeps_the_held_events(conn: Connection) -> None:
    conn.begin_replay("r1")
    conn.deliver("r1", 2, texts("r1", 2, 2))
    conn.begin_replay("r1")
    conn.finish_replay("r1", 0, [run_event("r1", 1)])
    assert seqs(drain(conn)) == [1, 2]


# -- overflow -----------------------------------------------------------------


async def test_overflow_sets_the_event_when_the_queue_is_full() -> None:
    async def send(_text: str) -> None:
        raise AssertionError("no sender in this test")

    conn = Connection("alice", send, queue_max=3)
    conn.deliver("r1", 1, texts("r1", 1, 3))
    assert not conn.overflowed.is_set()
    conn.send_event({"type": "pong"})
    assert conn.overflowed.is_set()
    assert conn.queued == 3
    assert seqs(drain(conn)) == [1, 2, 3]


async def test_overflow_from_deliver() -> None:
    async def send(_text: str) -> None:
        raise AssertionError("no sender in this test")

    conn = Connection("alice", send, queue_max=2)
    conn.deliver("r1", 1, texts("r1", 1, 5))
    assert conn.overflowed.is_set()
    assert conn.queued == 2


# -- the sender ---------------------------------------------------------------


async def test_run_sender_writes_everything_in_order() -> None:
    written: list[str] = []
    all_written = asyncio.Event()
    expected = 7

    async def send(text: str) -> None:
        written.append(text)
        if len(written) == expected:
            all_written.set()

    conn = Connection("alice", send, queue_max=100)
    sender = asyncio.create_task(conn.run_sender())
    try:
        conn.send_event(run_event("r1", 1, "run.accepted"))
        conn.deliver("r1", 2, texts("r1", 2, 4))
        conn.send_event({"type": "pong"})
        conn.deliver("r1", 3, texts("r1", 3, 6))  # 3 and 4 are duplicates
        await asyncio.wait_for(all_written.wait(), 5)
    finally:
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender
    decoded = [json.loads(text) for text in written]
    assert [(e["type"], e.get("seq")) for e in decoded] == [
        ("run.accepted", 1),
        ("message.delta", 2),
        ("message.delta", 3),
        ("message.delta", 4),
        ("pong", None),
        ("message.delta", 5),
        ("message.delta", 6),
    ]
    assert conn.sent == expected
    assert conn.queued == 0
