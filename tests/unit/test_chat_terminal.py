"""The terminal client's logic: addresses, resume bookkeeping, backoff, rendering, the socket loop.

`Link` and `StdinLines` run against real sockets and pipes (a local websockets
server, `os.pipe`); no terminal, no Ray.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from rich.console import Console
from websockets.asyncio.server import Server, ServerConnection, serve

from actors.chat_keyboard import StdinLines
from actors.chat_link import ChatError, Link
from actors.chat_terminal import (
    Backoff,
    Interrupt,
    Renderer,
    Turn,
    endpoints,
    event_line,
    interrupt_action,
    shown,
)

# --- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ws", "http"),
    [
        ("ws://127.0.0.1:8000", "ws://127.0.0.1:8000/api/websocket/ws", "http://127.0.0.1:8000"),
        ("ws://h:1/", "ws://h:1/api/websocket/ws", "http://h:1"),
        ("http://h:1/side", "ws://h:1/side/api/websocket/ws", "http://h:1/side"),
        ("wss://h/api/websocket/ws", "wss://h/api/websocket/ws", "https://h"),
        ("https://h/p/", "wss://h/p/api/websocket/ws", "https://h/p"),
    ],
)
def test_endpoints(url: str, ws: str, http: str) -> None:
    found = endpoints(url)
    assert (found.ws, found.http) == (ws, http)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h", "ws://", ""])
def test_endpoints_refuse_other_addresses(url: str) -> None:
    with pytest.raises(ValueError, match="--url"):
        endpoints(url)


# --- the resume bookkeeping ----------------------------------------------------------------


def run_event(kind: str, seq: int, run_id: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "run_id": run_id, "seq": seq, **fields}


def accepted(turn: Turn, run_id: str = "r1", duplicate: bool = False) -> dict[str, Any]:
    return run_event(
        "run.accepted",
        1,
        run_id,
        session_id=turn.session_id,
        client_msg_id=turn.client_msg_id,
        duplicate=duplicate,
    )


def test_a_chat_is_resent_with_its_client_msg_id_until_accepted_then_resumed() -> None:
    turn = Turn.chat("hello", "s1")
    first = turn.reconnect_frames()
    assert first == [
        {
            "type": "chat",
            "text": "hello",
            "session_id": "s1",
            "client_msg_id": turn.client_msg_id,
        }
    ]
    assert turn.reconnect_frames() == first  # same idempotency key on every socket
    assert turn.owns(accepted(turn))
    assert turn.admit(accepted(turn))
    assert turn.admit(run_event("run.started", 2, agent="assistant"))
    assert turn.admit(run_event("message.delta", 3, text="Hel"))
    assert turn.reconnect_frames() == [{"type": "resume", "run_id": "r1", "after_seq": 3}]


def test_repeated_events_are_not_admitted_twice() -> None:
    turn = Turn.attach("r1", "default")
    assert turn.reconnect_frames() == [{"type": "resume", "run_id": "r1", "after_seq": 0}]
    for seq, text in ((1, None), (2, "a "), (3, "b ")):
        kind = "run.accepted" if text is None else "message.delta"
        assert turn.admit(run_event(kind, seq, text=text or ""))
    # A resume after seq 2 that raced with live delivery: 3 comes again, then 4.
    assert not turn.admit(run_event("message.delta", 3, text="b "))
    assert turn.admit(run_event("message.delta", 4, text="c"))
    assert turn.reply == "a b c"
    assert turn.last_seq == 4
    final = run_event("run.completed", 5, text="a b c", message_id=7)
    assert turn.admit(final)
    assert turn.done and turn.final == final
    assert not turn.admit(run_event("run.completed", 5, text="a b c"))
    assert turn.reconnect_frames() == []


def test_live_events_ahead_of_the_replay_wait_for_it() -> None:
    turn = Turn.attach("r1", "default")
    for seq, text in ((1, "a "), (2, "b ")):
        assert turn.admit(run_event("message.delta", seq, text=text))
    # A new socket got live events 5 and 6 before the server handled its resume after 2.
    assert not turn.admit(run_event("message.delta", 5, text="e "))
    assert not turn.admit(run_event("message.delta", 6, text="f "))
    for seq, text in ((3, "c "), (4, "d "), (5, "e "), (6, "f ")):  # the replay
        assert turn.admit(run_event("message.delta", seq, text=text))
    assert turn.reply == "a b c d e f "
    assert turn.last_seq == 6


def test_a_final_event_alone_from_the_database_is_admitted_after_a_gap() -> None:
    turn = Turn.attach("r1", "default")
    assert turn.admit(run_event("message.delta", 1, text="a "))
    final = run_event("run.completed", 9, text="a b c", message_id=3)
    assert turn.admit(final)
    assert turn.done and turn.last_seq == 9
    assert turn.missing_text(final) == "b c"


def test_a_duplicate_acceptance_replays_nothing_already_seen() -> None:
    turn = Turn.chat("x", "default")
    assert turn.admit(accepted(turn))
    assert turn.admit(run_event("message.delta", 2, text="one "))
    # The chat was sent again on a new socket: duplicate acceptance, replay from seq 2.
    assert turn.owns(accepted(turn, duplicate=True))
    assert not turn.admit(accepted(turn, duplicate=True))
    assert not turn.admit(run_event("message.delta", 2, text="one "))
    assert turn.admit(run_event("message.delta", 3, text="two"))
    assert turn.reply == "one two"


def test_ownership() -> None:
    turn = Turn.chat("x", "default")
    other = {**accepted(turn), "client_msg_id": "someone-else"}
    assert not turn.owns(other)
    assert not turn.owns(run_event("message.delta", 2, run_id="r9", text="x"))
    # Before acceptance, an error naming our chat, or naming nothing, is ours.
    assert turn.owns({"type": "error", "code": "busy", "message": "m", "ref": turn.client_msg_id})
    assert turn.owns({"type": "error", "code": "too_large", "message": "m"})
    assert not turn.owns({"type": "error", "code": "busy", "message": "m", "ref": "other"})
    turn.admit(accepted(turn))
    assert turn.owns(run_event("message.delta", 2, text="x"))
    assert not turn.owns(run_event("message.delta", 2, run_id="r9", text="x"))
    assert not turn.owns({"type": "error", "code": "rate_limited", "message": "m"})
    assert turn.owns({"type": "error", "code": "not_found", "message": "m", "ref": "r1"})
    assert not turn.owns({"type": "pong"})


def test_an_error_ends_the_turn() -> None:
    turn = Turn.chat("x", "default")
    error = {"type": "error", "code": "rate_limited", "message": "slow down", "retry_after": 1}
    assert turn.admit(error)
    assert turn.done and turn.failed == error and turn.final is None
    assert turn.reconnect_frames() == []


def test_cancel_waits_for_the_run_id_and_is_due_again_on_a_new_socket() -> None:
    turn = Turn.chat("x", "default")
    turn.cancel_requested = True
    assert turn.due_cancel() is None  # no run id yet: nothing to name
    turn.admit(accepted(turn))
    assert turn.due_cancel() == {"type": "cancel", "run_id": "r1"}
    turn.cancel_sent = True
    assert turn.due_cancel() is None
    turn.reconnect_frames()  # the socket that carried it may have lost it
    assert turn.due_cancel() == {"type": "cancel", "run_id": "r1"}
    turn.admit(run_event("run.cancelled", 2, text=""))
    assert turn.due_cancel() is None


@pytest.mark.parametrize(
    ("shown_text", "stored", "missing"),
    [
        ("abc", "abc", ""),
        ("ab", "abc", "c"),
        ("", "abc", "abc"),
        ("xy", "abc", "\nabc"),
    ],
)
def test_the_stored_text_completes_or_replaces_what_was_shown(
    shown_text: str, stored: str, missing: str
) -> None:
    turn = Turn.attach("r1", "default")
    turn.reply = shown_text
    assert turn.missing_text({"type": "run.completed", "text": stored}) == missing


def test_ctrl_c_cancels_a_reply_then_quits() -> None:
    assert interrupt_action(None) is Interrupt.QUIT  # at the prompt
    turn = Turn.chat("x", "default")
    assert interrupt_action(turn) is Interrupt.CANCEL
    turn.cancel_requested = True
    assert interrupt_action(turn) is Interrupt.ABORT  # again before the run has ended
    turn.admit({"type": "run.cancelled", "run_id": "r1", "seq": 1, "text": ""})
    assert interrupt_action(turn) is Interrupt.QUIT


# --- backoff ------------------------------------------------------------------------------


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=4.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert base * 0.8 <= delay <= base
    backoff.reset()
    assert 0.4 <= backoff.next_delay() <= 0.5


# --- rendering ------------------------------------------------------------------------------


def rendered() -> tuple[Renderer, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=60, color_system=None, highlight=False)
    return Renderer(console), out


def show(renderer: Renderer, turn: Turn, *events: dict[str, Any]) -> None:
    for event in events:
        assert turn.admit(event)
        renderer.event(event, turn)


def test_a_reply_streams_inline_with_tool_and_handoff_lines() -> None:
    renderer, out = rendered()
    turn = Turn.attach("r1", "default")
    renderer.start_reply()
    show(
        renderer,
        turn,
        run_event("run.accepted", 1),
        run_event("run.started", 2, agent="assistant"),
        run_event("agent.handoff", 3, agent="organizer"),
        run_event("tool.called", 4, name="add_todo", arguments={"text": "buy milk"}),
        run_event("tool.output", 5, name="add_todo", output={"id": 3, "text": "buy milk"}),
        run_event("message.delta", 6, text="Done: "),
        run_event("message.delta", 7, text="added."),
        run_event("run.completed", 8, text="Done: added.", message_id=1),
    )
    assert out.getvalue().splitlines() == [
        "  [handoff] -> organizer",
        '  [tool] add_todo({"text": "buy milk"})',
        '  [tool] add_todo -> {"id": 3, "text": "buy milk"}',
        "organizer: Done: added.",
    ]


def test_a_notice_mid_reply_breaks_the_line_and_the_reply_goes_on_without_a_header() -> None:
    renderer, out = rendered()
    turn = Turn.attach("r1", "default")
    renderer.start_reply()
    show(renderer, turn, run_event("message.delta", 1, text="one "))
    renderer.notice("connection lost; reconnecting")
    show(
        renderer,
        turn,
        run_event("message.delta", 2, text="two"),
        run_event("run.cancelled", 3, text="one two three"),
    )
    assert out.getvalue().splitlines() == [
        "assistant: one ",
        "connection lost; reconnecting",
        "two three",
        "[cancelled]",
    ]


def test_a_failed_run_and_an_error_are_shown_as_lines() -> None:
    renderer, out = rendered()
    turn = Turn.attach("r1", "default")
    renderer.start_reply()
    show(
        renderer,
        turn,
        run_event("message.delta", 1, text="par"),
        run_event("run.failed", 2, error={"code": "internal", "message": "agent lost"}),
    )
    assert out.getvalue().splitlines() == ["assistant: par", "[failed] internal: agent lost"]
    line = event_line({"type": "error", "code": "busy", "message": "m", "retry_after": 0.5})
    assert line is not None and line.plain == "[error] busy: m (retry after 0.5 s)"


def test_the_prompt_and_history() -> None:
    renderer, out = rendered()
    renderer.history(
        [
            {"role": "user", "text": "hi", "status": "stored"},
            {"role": "assistant", "text": "hello", "status": "completed"},
            {"role": "user", "text": "long", "status": "stored"},
            {"role": "assistant", "text": "par", "status": "cancelled"},
            {"role": "user", "text": "more", "status": "stored"},
            {"role": "assistant", "text": "go", "status": "streaming"},
        ]
    )
    renderer.prompt("you")
    renderer.notice("bye")  # the cursor was after the prompt: a fresh line first
    assert out.getvalue().splitlines() == [
        "--- history ---",
        "you: hi",
        "assistant: hello",
        "you: long",
        "assistant: par [cancelled]",
        "you: more",
        "---",
        "you> ",
        "bye",
    ]


def test_long_tool_values_are_cut_to_one_line() -> None:
    assert shown({"a": "x\ny"}) == '{"a": "x\\ny"}'
    assert shown("a\n  b") == "a b"
    long = shown("x" * 500)
    assert len(long) == 200 and long.endswith("...")


# --- stdin ---------------------------------------------------------------------------------


async def wait_for(condition: Callable[[], bool], event: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        while not condition():
            event.clear()
            await event.wait()


async def test_stdin_lines_from_a_pipe_and_the_end_of_input() -> None:
    read_fd, write_fd = os.pipe()
    ready = asyncio.Event()
    lines = StdinLines(read_fd, ready.set)
    try:
        os.write(write_fd, b"first line\nsec")
        lines.start()
        await wait_for(lambda: lines.ready, ready)
        assert lines.pop() == "first line"
        assert not lines.ready
        lines.start()
        os.write(write_fd, b"ond\nthird\n")
        await wait_for(lambda: lines.ready, ready)
        assert lines.pop() == "second"
        assert lines.pop() == "third"
        lines.start()
        os.write(write_fd, b"no newline")
        os.close(write_fd)
        await wait_for(lambda: lines.eof, ready)
        assert lines.pop() == "no newline"
        assert lines.pop() is None and lines.ready  # end of input
    finally:
        lines.stop()
        os.close(read_fd)


async def test_stdin_lines_from_a_regular_file(tmp_path: Any) -> None:
    path = tmp_path / "input.txt"
    path.write_text("a\nb\n")
    ready = asyncio.Event()
    fd = os.open(path, os.O_RDONLY)
    lines = StdinLines(fd, ready.set)
    try:
        got = []
        while True:
            lines.start()
            await wait_for(lambda: lines.ready, ready)
            line = lines.pop()
            if line is None:
                break
            got.append(line)
        assert got == ["a", "b"]
    finally:
        os.close(fd)


# --- the socket loop against a local server --------------------------------------------------


PING = {"type": "ping"}


class FakeService:
    """A local WebSocket server: records frames, closes sockets as a test asks."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.sockets: list[ServerConnection] = []
        self.changed = asyncio.Event()
        self.close_code: int | None = None  # close each new socket at once with this code

    async def handler(self, ws: ServerConnection) -> None:
        self.sockets.append(ws)
        self.changed.set()
        if self.close_code is not None:
            await ws.close(self.close_code, "test")
            return
        async for raw in ws:
            frame = json.loads(raw)
            self.frames.append(frame)
            self.changed.set()
            if frame["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeService, str]]:
    service = FakeService()
    server: Server
    async with serve(service.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield service, f"ws://127.0.0.1:{port}/api/websocket/ws"


class Recorder:
    """The callbacks of a `Link`, recorded."""

    def __init__(self, frames: list[dict[str, Any]] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.notices: list[str] = []
        self.disconnects: list[str] = []
        self.connects = 0
        self.frames = frames or []
        self.changed = asyncio.Event()

    def link(self, url: str, give_up_after_s: float = 30.0) -> Link:
        return Link(
            url,
            "token",
            on_event=self._event,
            on_connect=self._connect,
            on_disconnect=self._disconnect,
            notice=self.notices.append,
            give_up_after_s=give_up_after_s,
        )

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()

    def _connect(self) -> list[dict[str, Any]]:
        self.connects += 1
        self.changed.set()
        return self.frames

    def _disconnect(self, why: str) -> None:
        self.disconnects.append(why)
        self.changed.set()


async def test_link_reconnects_after_a_drop_and_sends_its_resume_frames_again(
    fake: tuple[FakeService, str],
) -> None:
    service, url = fake
    resume = {"type": "resume", "run_id": "r1", "after_seq": 4}
    recorder = Recorder([resume])
    link = recorder.link(url)
    task = asyncio.create_task(link.run())
    try:
        # The first frame checks the token; the resume goes once the server has answered.
        await wait_for(lambda: service.frames == [PING, resume], service.changed)
        assert link.connected
        chat = {"type": "chat", "text": "x"}
        assert await link.send(chat)
        await wait_for(lambda: len(service.frames) == 3, service.changed)
        service.sockets[0].transport.abort()  # the connection drops, no close frame
        await wait_for(lambda: service.frames[3:] == [PING, resume], service.changed)
        assert recorder.connects == 2 and len(service.sockets) == 2
        assert recorder.disconnects and not recorder.notices  # reconnected at the first try
        assert {"type": "pong"} in recorder.events
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not link.connected
    assert not await link.send(PING)


@pytest.mark.parametrize("code", [4401, 4403])
async def test_link_stops_on_a_refused_token(fake: tuple[FakeService, str], code: int) -> None:
    service, url = fake
    service.close_code = code
    with pytest.raises(ChatError, match=f"refused.*{code}"):
        await asyncio.wait_for(Recorder().link(url).run(), 10)


async def test_link_gives_up_on_an_unreachable_service() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        recorder = Recorder()
        link = recorder.link(f"ws://127.0.0.1:{port}/api/websocket/ws", give_up_after_s=0.5)
        with pytest.raises(ChatError, match="no connection"):
            await asyncio.wait_for(link.run(), 10)
    assert len(recorder.notices) == 1 and "cannot reach" in recorder.notices[0]
    assert recorder.connects == 0
