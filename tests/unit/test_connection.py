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


def test_a_resume_after_a_lost_runs_end_sends_no_second_final(conn: Connection) -> None:
    # The end of a lost run (numbered 1, 2) reached the socket while it resumed the run;
    # the database's answer to the resume is that final again, numbered after 2.
    conn.begin_replay("r1", after_seq=1)
    lost_end = [run_event("r1", 1, "run.accepted"), run_event("r1", 2, "run.failed")]
    conn.deliver("r1", 0, [encode(e) for e in lost_end])
    conn.finish_replay("r1", 2, [run_event("r1", 3, "run.failed")])
    assert [(e["type"], e["seq"]) for e in drain(conn)] == [("run.failed", 2)]
    assert conn.has_ended("r1")
    # A resume the client asks for later still replays what it asks for.
    conn.begin_replay("r1", after_seq=1)
    conn.finish_replay("r1", 1, [run_event("r1", 2, "run.failed")])
    assert [(e["type"], e["seq"]) for e in drain(conn)] == [("run.failed", 2)]


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


def test_a_lost_runs_end_after_a_resume_on_a_new_socket_follows_the_clients_seq(
    conn: Connection,
) -> None:
    # The client saw 1..27 on a socket that dropped; on this one it resumes after 27,
    # and the run turns out lost with its actor: its prelude and final come relative.
    conn.begin_replay("r1", after_seq=27)
    prelude = encode(run_event("r1", 1, "run.accepted"))
    conn.deliver("r1", 0, [prelude, encode(run_event("r1", 2, "run.failed"))])
    events = drain(conn)
    assert [(e["type"], e["seq"]) for e in events] == [("run.failed", 28)]


def test_begin_replay_twice_keeps_the_held_events(conn: Connection) -> None:
    conn.begin_replay("r1")
    conn.deliver("r1", 2, texts("r1", 2, 2))
    conn.begin_replay("r1")
    conn.finish_replay("r1", 0, [run_event("r1", 1)])
    assert seqs(drain(conn)) == [1, 2]


# -- overflow -----------------------------------------------------------------


async def test_direct_events_past_a_full_queue_overflow() -> None:
    async def send(_text: str) -> None:
        raise AssertionError("no sender in this test")

    conn = Connection("alice", send, queue_max=4)
    conn.deliver("r1", 1, texts("r1", 1, 3))  # up to the high watermark (3)
    for _ in range(2):
        conn.send_event({"type": "pong"})
    assert conn.overflowed.is_set() and conn.wakeup.is_set()
    assert conn.queued == 4


async def test_live_events_past_the_high_watermark_pause_the_run_not_the_memory() -> None:
    async def send(_text: str) -> None:
        raise AssertionError("no sender in this test")

    conn = Connection("alice", send, queue_max=8)  # high watermark 6, low 2
    conn.deliver("r1", 1, texts("r1", 1, 5))
    conn.deliver("r1", 6, texts("r1", 6, 20))  # would pass the high watermark
    conn.deliver("r1", 21, texts("r1", 21, 22))  # dropped: the run is behind
    assert not conn.overflowed.is_set()
    assert conn.queued == 5
    assert conn.take_behind() == {}  # not read down to the low watermark yet
    assert seqs(drain(conn)) == [1, 2, 3, 4, 5]
    assert conn.take_behind() == {"r1": 5}  # replay after the last seq sent
    assert conn.take_behind() == {}


async def test_replay_stops_at_the_high_watermark_and_continues_later() -> None:
    async def send(_text: str) -> None:
        raise AssertionError("no sender in this test")

    conn = Connection("alice", send, queue_max=8)  # high watermark 6
    conn.begin_replay("r1")
    conn.deliver("r1", 12, texts("r1", 12, 12))  # live, held during the replay
    conn.finish_replay("r1", 0, [run_event("r1", seq) for seq in range(1, 12)])
    first = drain(conn)
    assert seqs(first) == [1, 2, 3, 4, 5, 6]
    assert conn.take_behind() == {"r1": 6}
    conn.finish_replay("r1", 6, [run_event("r1", seq) for seq in range(7, 13)])
    assert seqs(drain(conn)) == [7, 8, 9, 10, 11, 12]


async def test_a_client_that_stops_reading_is_marked_stuck() -> None:
    now = [100.0]

    async def send(_text: str) -> None:
        raise AssertionError("no sender in this test")

    conn = Connection("alice", send, queue_max=64, stuck_s=30, clock=lambda: now[0])
    conn.deliver("r1", 1, texts("r1", 1, 2))
    now[0] += 29
    conn.deliver("r1", 3, texts("r1", 3, 3))
    assert not conn.overflowed.is_set()
    now[0] += 2  # 31 s without the client reading anything
    conn.deliver("r1", 4, texts("r1", 4, 4))
    assert conn.overflowed.is_set()


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
