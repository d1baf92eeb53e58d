"""HttpTurn: one run's events for an HTTP response, catch-up replay, closing and abandonment."""

from __future__ import annotations

import asyncio

import pytest

from actors.connection import Connection
from actors.events import Event, encode
from actors.http_turn import EVENTS_MAX, HttpTurn, TurnBroken


def event(run_id: str, seq: int, kind: str = "message.delta") -> Event:
    item: Event = {"type": kind, "run_id": run_id, "seq": seq}
    if kind == "message.delta":
        item["text"] = f"t{seq} "
    return item


class Ingress:
    """What a turn calls back: replays from a stored run, and the finish (recorded)."""

    def __init__(self, stored: list[Event] | None = None) -> None:
        self.stored = stored or []
        self.resumed: list[tuple[str, int]] = []
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def resume(self, conn: Connection, run_id: str, after_seq: int) -> None:
        self.resumed.append((run_id, after_seq))
        conn.begin_replay(run_id, after_seq)
        conn.finish_replay(run_id, after_seq, [e for e in self.stored if e["seq"] > after_seq])

    async def finish(self, turn: HttpTurn, cancel: bool) -> None:
        assert not self.finished.done(), "finished twice"
        self.finished.set_result(cancel)


def make_turn(ingress: Ingress, queue_max: int = 64, stuck_s: float = 30.0) -> HttpTurn:
    turn = HttpTurn(
        "alice",
        "r1",
        queue_max=queue_max,
        stuck_s=stuck_s,
        resume=ingress.resume,
        finish=ingress.finish,
    )
    turn.start()
    return turn


def deliver(turn: HttpTurn, run_id: str, first: int, last: int, final: bool = False) -> None:
    events = [event(run_id, seq) for seq in range(first, last + 1)]
    if final:
        events[-1] = event(run_id, last, "run.completed")
    turn.conn.deliver(run_id, first, [encode(e) for e in events])


async def test_only_its_run_and_up_to_the_final_event() -> None:
    ingress = Ingress()
    turn = make_turn(ingress)
    deliver(turn, "other", 1, 3)
    deliver(turn, "r1", 1, 3)
    deliver(turn, "other", 4, 5, final=True)
    deliver(turn, "r1", 4, 4, final=True)
    got = [e async for e in turn]
    assert [(e["run_id"], e["seq"]) for e in got] == [("r1", s) for s in range(1, 5)]
    assert got[-1]["type"] == "run.completed" and turn.ended
    await turn.aclose()
    assert await ingress.finished is False  # ended: nothing to cancel
    await turn.aclose()  # idempotent


async def test_closed_before_the_end_cancels_the_run() -> None:
    ingress = Ingress()
    turn = make_turn(ingress)
    deliver(turn, "r1", 1, 2)
    assert (await anext(turn))["seq"] == 1
    await turn.aclose()
    assert await ingress.finished is True


async def test_a_refused_chat_closes_without_cancelling() -> None:
    ingress = Ingress()
    turn = make_turn(ingress)
    await turn.aclose(cancel=False)
    assert await ingress.finished is False


async def test_a_slow_reader_gets_every_event_once_by_replay() -> None:
    """Past the high watermark live events are dropped; the run is replayed once read down."""
    total = 200
    stored = [event("r1", seq) for seq in range(1, total)] + [event("r1", total, "run.completed")]
    ingress = Ingress(stored)
    turn = make_turn(ingress, queue_max=16)
    for seq in range(1, total + 1, 10):  # live batches arrive while nobody reads
        turn.conn.deliver("r1", seq, [encode(e) for e in stored[seq - 1 : seq + 9]])
    assert turn.conn.behind == 1
    got = [e["seq"] async for e in turn]
    assert got == list(range(1, total + 1))
    assert ingress.resumed and all(run == "r1" for run, _ in ingress.resumed)
    await turn.aclose()


async def test_a_reader_that_stops_reading_is_abandoned_and_its_run_cancelled() -> None:
    ingress = Ingress()
    turn = make_turn(ingress, stuck_s=0.05)
    deliver(turn, "r1", 1, EVENTS_MAX + 5)  # more than the response's queue holds
    assert await asyncio.wait_for(ingress.finished, 10) is True
    with pytest.raises(TurnBroken):
        async for _ in turn:
            pass
    await turn.aclose()  # the finish is not repeated


async def test_a_failed_replay_breaks_the_turn() -> None:
    class FailingIngress(Ingress):
        async def resume(self, conn: Connection, run_id: str, after_seq: int) -> None:
            raise RuntimeError("shard gone")

    ingress = FailingIngress()
    turn = make_turn(ingress, queue_max=16)
    for seq in range(1, 60, 10):
        deliver(turn, "r1", seq, seq + 9)
    with pytest.raises(TurnBroken):
        async for _ in turn:
            pass
    assert await ingress.finished is False
    await turn.aclose()
