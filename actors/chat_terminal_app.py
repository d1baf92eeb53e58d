"""`raychat chat`: the terminal client's event loop, socket and keyboard.

One asyncio loop runs three things: the `Link` (the chat socket, reconnected
with backoff), the prompt (lines read from stdin while the prompt is shown)
and SIGINT (Ctrl-C cancels the reply in flight; at the prompt, or a second time
during a reply, it quits). Everything wakes the main loop through one event;
the protocol bookkeeping and the rendering are in `actors.chat_terminal`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import websockets
from rich.console import Console
from websockets.asyncio.client import ClientConnection, connect

from actors.auth import codec_for
from actors.chat_terminal import (
    HISTORY_PATH,
    Backoff,
    Endpoints,
    Frame,
    Interrupt,
    Renderer,
    Turn,
    endpoints,
    event_line,
    interrupt_action,
)
from actors.events import Event
from config import Settings

logger = logging.getLogger(__name__)

CLOSE_ABNORMAL = 1006  # no close frame: the connection broke
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
HISTORY_LIMIT = 20
MAX_LINE_BYTES = 64 * 1024
EXIT_INTERRUPTED = 130


class ChatError(Exception):
    """Ends the client with this message and exit status 1."""


class Quit(Exception):
    """The user asked to leave (Ctrl-C, Ctrl-D); `code` is the exit status."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class ChatOptions:
    """What `raychat chat` was asked to do."""

    endpoints: Endpoints
    token: str
    user: str
    session_id: str = "default"
    history: bool = True
    give_up_after_s: float = 60.0


class Link:
    """Keeps one chat socket open: connects, reconnects with backoff, hands on each event.

    `run` returns only by raising `ChatError`: the token was refused (close
    4401/4403, HTTP 401/403), the address is wrong (another HTTP status), or
    no connection could be made for `give_up_after_s`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        on_event: Callable[[Event], None],
        on_connect: Callable[[], list[Frame]],
        on_disconnect: Callable[[str], None],
        notice: Callable[[str], None],
        give_up_after_s: float,
    ) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._on_event = on_event
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._notice = notice
        self._give_up_after_s = give_up_after_s
        self._backoff = Backoff()
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        """True while a socket is open and the server has answered on it."""
        return self._ws is not None

    async def send(self, frame: Frame) -> bool:
        """Send a frame on the open socket; False if there is none (the caller retries later)."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            return False
        return True

    async def run(self) -> None:
        """Connect and read until the socket closes, then reconnect; forever."""
        outage_since: float | None = None
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)  # reconnect backoff
            try:
                problem = await self._connect_and_serve()
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise ChatError(f"the server refused the token (HTTP {status})") from None
                if status < 500 and status != 429:
                    raise ChatError(f"{self.url} answered HTTP {status}: is --url right?") from None
                problem = f"HTTP {status}"
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                problem = str(exc) or type(exc).__name__
            if problem is None:  # a good connection ended: reconnect at once
                outage_since, delay = None, 0.0
                self._backoff.reset()
                continue
            now = time.monotonic()
            if outage_since is None:
                outage_since = now
                self._notice(f"cannot reach {self.url}: {problem}; retrying (Ctrl-C to quit)")
            if now - outage_since >= self._give_up_after_s:
                raise ChatError(
                    f"no connection to {self.url} for {self._give_up_after_s:g} s: {problem}"
                )
            delay = self._backoff.next_delay()

    async def _connect_and_serve(self) -> str | None:
        """One socket's life; None if the server answered on it, else what went wrong."""
        frames = 0
        async with connect(self.url, additional_headers=self._headers) as ws:
            try:
                # The server answers only a socket whose token it took (else: close 4401),
                # so the socket counts as connected from its first frame on.
                await ws.send(json.dumps({"type": "ping"}))
                async for raw in ws:
                    if not frames:
                        self._ws = ws
                        for frame in self._on_connect():
                            await ws.send(json.dumps(frame))
                    frames += 1
                    self._handle(raw)
            except websockets.ConnectionClosed:
                pass
            finally:
                self._ws = None
        code = ws.close_code
        close = f"close {code} {ws.close_reason}" if ws.close_reason else f"close {code}"
        if code == CLOSE_UNAUTHENTICATED:
            raise ChatError(f"the server refused the token ({close})")
        if code == CLOSE_FORBIDDEN:
            raise ChatError(f"the server refused this client ({close})")
        why = "lost" if code in (None, CLOSE_ABNORMAL) else f"closed by the server ({close})"
        self._on_disconnect(why)
        return None if frames else why

    def _handle(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            self._notice(f"ignored a frame that is not JSON: {raw[:80]!r}")
            return
        if isinstance(event, dict):
            self._on_event(event)


class StdinLines:
    """Lines typed at the prompt, read without blocking the event loop.

    Reads only while `start`ed (the prompt is shown), so type-ahead waits in the
    terminal, and stops once a whole line is there. `on_ready` is called when
    a line or the end of input (Ctrl-D) arrives.
    """

    def __init__(self, fd: int, on_ready: Callable[[], None]) -> None:
        self._fd = fd
        self._on_ready = on_ready
        self._buffer = bytearray()
        self._lines: deque[str] = deque()
        self._reading = False
        self._polled = False  # a regular file: no reader callbacks, read on the next tick
        self.eof = False

    @property
    def ready(self) -> bool:
        """True when a line (or the end of input) is waiting."""
        return bool(self._lines) or self.eof

    def start(self) -> None:
        """Begin reading (the prompt is shown)."""
        if self._reading or self.ready:
            return
        loop = asyncio.get_running_loop()
        self._reading = True
        try:
            loop.add_reader(self._fd, self._readable)
        except PermissionError:  # stdin is a regular file: reading it never blocks
            self._polled = True
            loop.call_soon(self._readable)

    def stop(self) -> None:
        """Stop reading."""
        if self._reading and not self._polled:
            asyncio.get_running_loop().remove_reader(self._fd)
        self._reading = False

    def pop(self) -> str | None:
        """The next line (without its newline), or None at the end of input."""
        return self._lines.popleft() if self._lines else None

    def _readable(self) -> None:
        if not self._reading:
            return
        try:
            data = os.read(self._fd, 4096)
        except OSError as exc:  # the terminal went away (EIO): the end of input
            logger.debug("reading stdin failed: %s", exc)
            data = b""
        if not data:
            self.eof = True
            if self._buffer:  # a last line without a newline
                self._lines.append(self._buffer.decode(errors="replace"))
                self._buffer.clear()
        self._buffer += data
        while b"\n" in self._buffer or len(self._buffer) >= MAX_LINE_BYTES:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._lines.append(line.decode(errors="replace"))
            self._buffer = bytearray(rest)
        if self.ready:
            self.stop()
            self._on_ready()
        elif self._polled:
            asyncio.get_running_loop().call_soon(self._readable)


def fetch_history(http_base: str, token: str, session_id: str) -> list[dict[str, Any]]:
    """The session's recent messages from `GET /api/history` (blocking)."""
    query = urlencode({"session_id": session_id, "limit": HISTORY_LIMIT})
    request = urllib.request.Request(
        f"{http_base}{HISTORY_PATH}?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    messages = body.get("messages") if isinstance(body, dict) else None
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


class ChatApp:
    """The interactive chat: prompt, send, stream the reply, repeat."""

    def __init__(self, options: ChatOptions, console: Console, stdin_fd: int) -> None:
        self.options = options
        self.renderer = Renderer(console)
        self.turn: Turn | None = None
        self._wakeup = asyncio.Event()
        self._quit: int | None = None
        self._link_task: asyncio.Task[None] | None = None
        self.stdin = StdinLines(stdin_fd, self._wakeup.set)
        self.link = Link(
            options.endpoints.ws,
            options.token,
            on_event=self._on_event,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            notice=self.renderer.notice,
            give_up_after_s=options.give_up_after_s,
        )

    async def run(self) -> int:
        """Chat until the user quits; the exit status."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        self._link_task = asyncio.create_task(self.link.run())
        self._link_task.add_done_callback(lambda _: self._wakeup.set())
        try:
            await self._chat()
            return 0
        except Quit as leave:
            self.renderer.end_line()
            return leave.code
        except ChatError as exc:
            self.renderer.end_line()
            print(f"raychat: {exc}", file=sys.stderr)
            return 1
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            self.stdin.stop()
            self._link_task.cancel()
            await asyncio.gather(self._link_task, return_exceptions=True)

    async def _chat(self) -> None:
        options = self.options
        self.renderer.notice(f"connecting to {options.endpoints.ws} as {options.user} ...")
        await self._until(lambda: self.link.connected)
        self.renderer.notice(
            f"connected; session {options.session_id!r}. "
            "Ctrl-C cancels a reply, Ctrl-D (or Ctrl-C at the prompt) quits."
        )
        if options.history:
            for run_id in await self._show_history():
                await self._follow(Turn.attach(run_id, options.session_id))
        while True:
            self.renderer.prompt("you")
            line = await self._read_line()
            if line is None:  # Ctrl-D
                raise Quit(0)
            if line.strip():
                await self._follow(Turn.chat(line.strip(), options.session_id))

    async def _show_history(self) -> list[str]:
        """Show the session's history; the run ids of replies still streaming."""
        options = self.options
        try:
            messages = await asyncio.to_thread(
                fetch_history, options.endpoints.http, options.token, options.session_id
            )
        except (OSError, ValueError) as exc:  # urllib's errors are OSErrors
            self.renderer.notice(f"could not load the history: {exc}", style="yellow")
            return []
        self.renderer.history(messages)
        return [
            str(m["run_id"])
            for m in messages
            if m.get("role") == "assistant" and m.get("status") == "streaming" and m.get("run_id")
        ]

    async def _follow(self, turn: Turn) -> None:
        """Start or join a run and show it until its final event."""
        self.turn = turn
        self.renderer.start_reply()
        try:
            for frame in turn.reconnect_frames():  # not connected: the next socket sends them
                await self.link.send(frame)
            while not turn.done:
                cancel = turn.due_cancel()
                if cancel is not None and await self.link.send(cancel):
                    turn.cancel_sent = True
                await self._until(
                    lambda: turn.done or (turn.due_cancel() is not None and self.link.connected)
                )
        finally:
            self.turn = None

    async def _read_line(self) -> str | None:
        self.stdin.start()
        try:
            await self._until(lambda: self.stdin.ready)
        finally:
            self.stdin.stop()
        line = self.stdin.pop()
        if line is not None:
            self.renderer.line_entered()
        return line

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds; raises `Quit` or the link's `ChatError` first."""
        while True:
            if self._quit is not None:
                raise Quit(self._quit)
            task = self._link_task
            if task is not None and task.done():
                error = None if task.cancelled() else task.exception()
                if isinstance(error, ChatError):
                    raise error
                logger.error("the connection loop failed", exc_info=error)
                raise ChatError(f"internal error: {error!r}")
            if condition():
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    def _on_event(self, event: Event) -> None:
        turn = self.turn
        if turn is not None and turn.owns(event):
            if turn.admit(event):
                self.renderer.event(event, turn)
                self._wakeup.set()
        elif event.get("type") == "error":
            line = event_line(event)
            if line is not None:
                self.renderer.line(line)
        # Events of other runs of this user (other devices, other sessions) are not shown.

    def _on_connect(self) -> list[Frame]:
        self._wakeup.set()
        turn = self.turn
        if turn is None:
            return []
        if turn.run_id is not None:
            self.renderer.notice(f"reconnected; resuming after event {turn.last_seq}")
        return turn.reconnect_frames()

    def _on_disconnect(self, why: str) -> None:
        self._wakeup.set()
        if self.turn is not None and not self.turn.done:
            self.renderer.notice(f"connection {why}; reconnecting", style="yellow")

    def _on_interrupt(self) -> None:
        action = interrupt_action(self.turn)
        if action is Interrupt.CANCEL:
            assert self.turn is not None
            self.turn.cancel_requested = True
            self.renderer.notice("cancelling (Ctrl-C again to quit)", style="yellow")
        else:
            self._quit = 0 if action is Interrupt.QUIT else EXIT_INTERRUPTED
        self._wakeup.set()


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of `raychat chat`."""
    parser = argparse.ArgumentParser(prog="raychat chat", description="chat in the terminal")
    parser.add_argument("--url", default="ws://127.0.0.1:8000", help="the service's address")
    parser.add_argument("--user", help="user id of the token (default: the OS user name)")
    parser.add_argument("--session", default="default", help="chat session id")
    parser.add_argument(
        "--token", help="use this token (default: signed with the configured secret)"
    )
    parser.add_argument("--no-history", action="store_true", help="do not show recent messages")
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="quit when the service cannot be reached for this long (default 60)",
    )
    return parser.parse_args(argv)


def _token(args: argparse.Namespace) -> tuple[str, str]:
    """The token and the user it is for (as far as the client knows)."""
    if args.token:
        return args.token, args.user or "(from --token)"
    user = args.user
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            raise ValueError("cannot tell the OS user name: pass --user") from None
    return codec_for(Settings()).issue(user), user


def main(argv: list[str]) -> int:
    """`raychat chat [options]`; the exit status."""
    args = parse_args(argv)
    try:
        url = endpoints(args.url)
        token, user = _token(args)
    except ValueError as exc:
        print(f"raychat: {exc}", file=sys.stderr)
        return 2
    options = ChatOptions(
        endpoints=url,
        token=token,
        user=user,
        session_id=args.session,
        history=not args.no_history,
        give_up_after_s=args.give_up_after,
    )
    console = Console(highlight=False)
    return asyncio.run(ChatApp(options, console, sys.stdin.fileno()).run())
