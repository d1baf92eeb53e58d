"""RunBuffer: contiguous seqs, prelude seeding and delta coalescing."""

from __future__ import annotations

import pytest

from actors.events import Event
from actors.run_buffer import RunBuffer


def delta(text: str) -> Event:
    return {"type": "message.delta", "text": text}


def started() -> Event:
    return {"type": "run.started", "agent": "assistant"}


def completed(text: str) -> Event:
    return {"type": "run.completed", "message_id": 1, "text": text}


def test_empty_buffer() -> None:
    buffer = RunBuffer("r1", "alice")
    assert buffer.last_seq == 0
    assert not buffer.finished
    assert buffer.text == ""
    assert buffer.after(0) == []
    assert buffer.final_event() is None


def test_seq_is_contiguous_from_one_and_events_get_run_id() -> None:
    buffer = RunBuffer("r1", "alice")
    stored = [
        buffer.append(started()),
        buffer.append({"type": "tool.called", "name": "t", "arguments": "{}"}),
        buffer.append({"type": "tool.output", "name": "t", "output": "x"}),
        buffer.append(completed("")),
    ]
    assert [e["seq"] for e in stored] == [1, 2, 3, 4]
    assert {e["run_id"] for e in stored} == {"r1"}
    assert buffer.last_seq == 4


def test_append_does_not_mutate_the_callers_event() -> None:
    buffer = RunBuffer("r1", "alice")
    event = started()
    buffer.append(event)
    assert "seq" not in event
    assert "run_id" not in event


def test_prelude_seeds_the_first_seqs() -> None:
    prelude = [{"type": "run.accepted", "session_id": "s"}, {"type": "run.queued", "position": 1}]
    buffer = RunBuffer("r1", "alice", prelude)
    assert [e["seq"] for e in buffer.after(0)] == [1, 2]
    assert buffer.append(started())["seq"] == 3


def test_unsealed_delta_is_merged() -> None:
    buffer = RunBuffer("r1", "alice")
    buffer.append(started())
    first = buffer.append(delta("Hel"))
    second = buffer.append(delta("lo"))
    assert first["seq"] == second["seq"] == 2
    assert second["text"] == "Hello"
    assert buffer.last_seq == 2
    assert buffer.after(0)[-1] == {
        "type": "message.delta",
        "text": "Hello",
        "run_id": "r1",
        "seq": 2,
    }


def test_delta_after_a_non_delta_gets_a_new_seq() -> None:
    buffer = RunBuffer("r1", "alice")
    buffer.append(delta("a"))
    buffer.append({"type": "tool.called", "name": "t", "arguments": "{}"})
    assert buffer.append(delta("b"))["seq"] == 3


def test_after_seals_so_new_delta_gets_new_seq() -> None:
    buffer = RunBuffer("r1", "alice")
    buffer.append(started())
    buffer.append(delta("one "))
    sent = buffer.after(0)
    assert [e["seq"] for e in sent] == [1, 2]
    assert buffer.sealed == 2
    new = buffer.append(delta("two"))
    assert new["seq"] == 3
    # What was handed out never changes.
    assert sent[-1]["text"] == "one "
    assert buffer.after(2) == [{"type": "message.delta", "text": "two", "run_id": "r1", "seq": 3}]


def test_after_with_nothing_new_does_not_seal() -> None:
    buffer = RunBuffer("r1", "alice")
    buffer.append(delta("a"))
    assert buffer.after(1) == []
    assert buffer.append(delta("b"))["seq"] == 1
    assert buffer.after(0)[0]["text"] == "ab"


def test_after_returns_only_newer_events() -> None:
    buffer = RunBuffer("r1", "alice")
    for i in range(5):
        buffer.append({"type": "tool.called", "name": f"t{i}", "arguments": "{}"})
    assert [e["seq"] for e in buffer.after(3)] == [4, 5]
    assert [e["seq"] for e in buffer.after(-7)] == [1, 2, 3, 4, 5]
    assert buffer.after(5) == []
    assert buffer.after(99) == []


def test_concatenated_text_is_preserved_across_merges_and_seals() -> None:
    buffer = RunBuffer("r1", "alice")
    parts = ["The ", "quick ", "brown ", "fox ", "jumps."]
    received: list[Event] = []
    for index, part in enumerate(parts):
        buffer.append(delta(part))
        if index % 2 == 1:
            received.extend(buffer.after(received[-1]["seq"] if received else 0))
    received.extend(buffer.after(received[-1]["seq"] if received else 0))
    assert buffer.text == "The quick brown fox jumps."
    assert "".join(e["text"] for e in received) == buffer.text
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert len(received) < len(parts)


def test_final_event_finishes_the_run() -> None:
    buffer = RunBuffer("r1", "alice")
    buffer.append(delta("hi"))
    final = buffer.append(completed("hi"))
    assert buffer.finished
    assert buffer.final_event() == final
    assert final["seq"] == 2


@pytest.mark.parametrize(
    "final",
    [
        {"type": "run.completed", "message_id": 1, "text": ""},
        {"type": "run.cancelled", "message_id": 1, "text": ""},
        {"type": "run.failed", "error": {"code": "model_error", "message": "x"}},
    ],
)
def test_append_after_a_final_event_raises(final: Event) -> None:
    buffer = RunBuffer("r1", "alice")
    buffer.append(final)
    with pytest.raises(RuntimeError):
        buffer.append(delta("late"))
    with pytest.raises(RuntimeError):
        buffer.append(started())
    assert buffer.last_seq == 1
    assert buffer.text == ""


def test_nbytes_counts_the_utf8_text_held() -> None:
    buffer = RunBuffer("r1", "alice")
    buffer.append(delta("héllo"))  # 6 bytes, held in the reply and in its delta event
    assert buffer.nbytes == 12
    buffer.append(delta("!"))  # merged into the same event: still held twice
    assert buffer.nbytes == 14
    before = buffer.nbytes
    buffer.append(completed("héllo!"))
    assert buffer.nbytes - before > len("héllo!".encode())  # the final event, encoded
