"""`raychat chat`: the terminal client's event loop and its command line.

One asyncio loop runs three things: the `Link` (the chat socket, reconnected
with backoff), the prompt (lines read from stdin while the prompt is shown)
and SIGINT (Ctrl-C cancels the reply in flight; at the prompt, or a second time
during a reply, it quits). Everything wakes the main loop through one event;
the protocol bookkeeping and the rendering are in `actors.chat_terminal`, the
socket in `actors.chat_link`, the keyboard in `actors.chat_keyboard`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from rich.console import Console

from actors.auth import codec_for
from actors.chat_keyboard import StdinLines
from actors.chat_link import ChatError, Link
from actors.chat_terminal import (
    HISTORY_PATH,
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

__all__ = ["ChatApp", "ChatError", "ChatOptions", "Link", "Quit", "StdinLines", "main"]

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 20
EXIT_INTERRUPTED = 130


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
