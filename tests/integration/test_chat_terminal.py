"""`raychat chat` in a pseudo-terminal (pexpect) against the running service.

Keys are real key presses on a pty: Ctrl-C is the terminal's interrupt
character (SIGINT from the line discipline), Ctrl-D its end of file. The
dropped connection is a real one: the client talks to the service through a
local TCP proxy that the test cuts (both sides aborted, no close frame), so the
client sees what a lost network looks like and nothing in it knows about tests.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import sys
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pexpect
import pytest

from tests.integration.chat_client import ChatClient
from tests.integration.conftest import Service

pytestmark = pytest.mark.ray

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
PROMPT = "you> "
EXPECT_TIMEOUT_S = 30
# Client lines that may interrupt a reply on screen (not reply text).
NOTICES = ("connection ", "reconnected;", "cancelling", "[cancelled]")


class Terminal:
    """One `raychat chat` process on a pty, with everything it printed."""

    def __init__(self, url: str, secret: str, user: str, *extra: str) -> None:
        env = {**os.environ, "RAYCHAT_SECRET": secret, "TERM": "xterm"}
        self.log = io.StringIO()
        args = ["-m", "actors.cli", "chat", "--url", url, "--user", user, *extra]
        self.child = pexpect.spawn(
            sys.executable,
            args,
            cwd=str(ROOT),
            env=env,
            encoding="utf-8",
            timeout=EXPECT_TIMEOUT_S,
            dimensions=(24, 250),  # wide: notices stay on one line
        )
        self.child.logfile_read = self.log

    def expect(self, text: str) -> None:
        """Wait until `text` is printed."""
        self.child.expect_exact(text)

    def mark(self) -> int:
        """The position in the output right after the last match, for `since`."""
        return len(self.log.getvalue()) - len(self.child.buffer)  # read, not yet matched

    def since(self, mark: int) -> str:
        """What was printed after `mark`, without colours and carriage returns."""
        return ANSI.sub("", self.log.getvalue()[mark:]).replace("\r", "")

    def exit_status(self) -> int | None:
        """Wait for the process to end; its exit status."""
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@contextmanager
def terminal(url: str, secret: str, user: str, *extra: str) -> Iterator[Terminal]:
    term = Terminal(url, secret, user, *extra)
    try:
        yield term
    finally:
        term.close()


def screen_reply(output: str, agent: str = "assistant") -> str:
    """The reply text as shown: after the agent header, notices and echoed ^C left out."""
    body = output.split(f"{agent}: ", 1)[1].rsplit(PROMPT, 1)[0].replace("^C", "")
    return "".join(line for line in body.split("\n") if not line.startswith(NOTICES))


def stored_replies(service: Service, user: str) -> list[tuple[str, str]]:
    rows = service.query(
        "SELECT text, status FROM messages WHERE user_id = ? AND role = 'assistant' ORDER BY id",
        user,
    )
    return [(str(text), str(status)) for text, status in rows]


class CuttableProxy:
    """A local TCP proxy to `target_port` whose connections the test can cut at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> CuttableProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def cut(self) -> int:
        """Abort every connection through the proxy (both sides); how many there were."""
        return self._call(self._cut())

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            raise
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass  # cut: the other pipe's abort ends this one too
        finally:
            sink.close()

    async def _cut(self) -> int:
        count = len(self._writers) // 2
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        return count

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._cut()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()


def ws_base(service: Service) -> str:
    return f"ws://127.0.0.1:{service.port}"


def secret(service: Service) -> str:
    """The service's token secret: the client signs its own token with it, as `raychat token`."""
    assert service.settings.secret is not None
    return service.settings.secret.get_secret_value()


def test_a_tool_reply_streams_and_history_shows_on_the_next_start(service: Service) -> None:
    user = f"term-{uuid.uuid4().hex[:8]}"
    with terminal(ws_base(service), secret(service), user) as term:
        term.expect("connected")
        term.expect(PROMPT)
        mark = term.mark()
        term.child.sendline("remind me to buy milk")
        term.expect("[handoff] -> organizer")
        term.expect('[tool] add_todo({"text": "buy milk"})')
        term.expect("[tool] add_todo -> ")
        term.expect(PROMPT)
        shown = screen_reply(term.since(mark), agent="organizer")
        term.child.sendeof()  # Ctrl-D
        assert term.exit_status() == 0
    [(stored, status)] = stored_replies(service, user)
    assert status == "completed" and "buy milk" in stored
    assert shown == stored

    with terminal(ws_base(service), secret(service), user) as term:
        term.expect("--- history ---")
        term.expect("you: remind me to buy milk")
        term.expect(f"assistant: {stored}")
        term.expect(PROMPT)
        term.child.sendintr()  # Ctrl-C at the prompt quits
        assert term.exit_status() == 0


def test_ctrl_c_cancels_a_streaming_reply_and_the_prompt_comes_back(service: Service) -> None:
    user = f"term-{uuid.uuid4().hex[:8]}"
    with terminal(ws_base(service), secret(service), user, "--no-history") as term:
        term.expect(PROMPT)
        mark = term.mark()
        term.child.sendline("tell me a story in 400 words")
        term.expect("assistant: ")
        # Words of the reply on screen while the run goes on (4 s at 100 tokens/s).
        term.child.expect(r"(\S+ ){3}")
        term.child.sendintr()
        term.expect("cancelling")
        term.expect("[cancelled]")
        term.expect(PROMPT)
        shown = screen_reply(term.since(mark))
        term.child.sendeof()
        assert term.exit_status() == 0
    [(stored, status)] = stored_replies(service, user)
    assert status == "cancelled"
    assert shown == stored
    assert 3 <= len(stored.split()) < 400


def test_a_dropped_connection_reconnects_and_the_reply_finishes(service: Service) -> None:
    user = f"term-{uuid.uuid4().hex[:8]}"
    with (
        CuttableProxy(service.port) as proxy,
        terminal(f"ws://127.0.0.1:{proxy.port}", secret(service), user, "--no-history") as term,
    ):
        term.expect(PROMPT)
        mark = term.mark()
        term.child.sendline("tell me a story in 400 words")
        term.expect("assistant: ")
        term.child.expect(r"(\S+ ){3}")
        assert proxy.cut() == 1
        term.expect("reconnecting")
        term.expect("reconnected; resuming after event ")
        term.expect(PROMPT)
        shown = screen_reply(term.since(mark))
        term.child.sendeof()
        assert term.exit_status() == 0
    [(stored, status)] = stored_replies(service, user)
    assert status == "completed" and len(stored.split()) == 400
    assert shown == stored  # no gap, no repeat across the reconnect


def test_a_reply_still_streaming_at_start_is_shown_to_its_end(service: Service) -> None:
    user = f"term-{uuid.uuid4().hex[:8]}"

    async def start_and_leave() -> None:  # another device starts a reply and goes away
        async with ChatClient(service.ws_url(user)) as client:
            run_id = await client.start("tell me a story in 600 words")  # 6 s
            while not client.runs[run_id].deltas_text:
                await client.recv()

    asyncio.run(start_and_leave())
    with terminal(ws_base(service), secret(service), user) as term:
        term.expect("--- history ---")
        term.expect("you: tell me a story in 600 words")
        mark = term.mark()
        term.expect("assistant: ")
        term.expect(PROMPT)
        output = term.since(mark)
        term.child.sendeof()
        assert term.exit_status() == 0
    # The reply was still streaming: not in the history block but followed after it.
    assert output.split("assistant: ", 1)[0].strip() == "---"
    [(stored, status)] = stored_replies(service, user)
    assert status == "completed" and len(stored.split()) == 600
    assert screen_reply(output) == stored  # from its first word to its end


def test_a_bad_token_is_refused_with_exit_status_1(service: Service) -> None:
    with terminal(ws_base(service), secret(service), "nobody", "--token", "not-a-token") as term:
        term.expect("refused the token (close 4401")
        assert term.exit_status() == 1


def test_an_unreachable_service_is_reported_and_the_client_gives_up() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}"
        with terminal(
            url, "a-secret-no-service-will-check-" * 2, "nobody", "--give-up-after", "1"
        ) as term:
            term.expect("cannot reach")
            term.expect("no connection to")
            assert term.exit_status() == 1
