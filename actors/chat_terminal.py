"""The logic of `raychat chat` that needs no terminal and no socket (pure, unit-tested).

- `endpoints`: the WebSocket and HTTP addresses behind a `--url`.
- `Turn`: one reply the client waits for, with the resume bookkeeping of
  PROTOCOL.md (last seen run id and seq, a chat re-sent with its
  `client_msg_id` until it is accepted, a pending `cancel`).
- `Backoff`: reconnect delays.
- `Renderer`: events, history and notices as lines on a rich `Console`.

The event loop, the socket and the keyboard are in `actors.chat_terminal_app`.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.text import Text

from actors.events import (
    AGENT_HANDOFF,
    FINAL_TYPES,
    MESSAGE_DELTA,
    RUN_ACCEPTED,
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_QUEUED,
    RUN_STARTED,
    TOOL_CALLED,
    TOOL_OUTPUT,
    Event,
)

WS_PATH = "/api/websocket/ws"
HISTORY_PATH = "/api/history"
DEFAULT_AGENT = "assistant"
MAX_SHOWN_CHARS = 200  # tool arguments and outputs longer than this are cut on screen

Frame = dict[str, Any]


@dataclass(frozen=True)
class Endpoints:
    """Where the chat socket and the HTTP API of one service are."""

    ws: str
    http: str


def endpoints(url: str) -> Endpoints:
    """The socket and HTTP base addresses for `--url` (`ws://host:port[/prefix]`).

    `http(s)://` is accepted too; a path is kept as the prefix of the app's routes.
    """
    parts = urlsplit(url.strip())
    schemes = {"ws": ("ws", "http"), "http": ("ws", "http")}
    schemes |= {"wss": ("wss", "https"), "https": ("wss", "https")}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"--url must look like ws://HOST:PORT, not {url!r}")
    ws_scheme, http_scheme = schemes[parts.scheme]
    prefix = parts.path.rstrip("/")
    if prefix.endswith(WS_PATH):  # the full socket address was given
        prefix = prefix[: -len(WS_PATH)]
    return Endpoints(
        ws=urlunsplit((ws_scheme, parts.netloc, prefix + WS_PATH, "", "")),
        http=urlunsplit((http_scheme, parts.netloc, prefix, "", "")),
    )


@dataclass
class Turn:
    """One reply the client waits for, and how far the client has seen it.

    A turn starts with a `chat` (`Turn.chat`) or joins a run already going
    (`Turn.attach`, e.g. a reply still streaming in the history). Until the run
    is accepted, a new socket sends the same chat again (same `client_msg_id`,
    so the server starts nothing twice); afterwards it sends `resume` after the
    last seq seen. Events are admitted in seq order only: one at or below the
    last seq is a repeat; one further ahead is a live event that reached a new
    socket before the replay its `resume` asked for, and comes again with the
    replay. Only a final event may skip ahead: `resume` of a run that ended
    long ago answers with the final event alone.
    """

    session_id: str
    text: str | None = None
    client_msg_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    run_id: str | None = None
    last_seq: int = 0
    agent: str = DEFAULT_AGENT
    reply: str = ""  # the concatenated deltas admitted so far
    final: Event | None = None
    failed: Event | None = None  # an `error` that ended the turn
    cancel_requested: bool = False
    cancel_sent: bool = False

    @classmethod
    def chat(cls, text: str, session_id: str) -> Turn:
        """A turn that starts a run with `text`."""
        return cls(session_id=session_id, text=text)

    @classmethod
    def attach(cls, run_id: str, session_id: str) -> Turn:
        """A turn that follows an existing run from its beginning."""
        return cls(session_id=session_id, run_id=run_id)

    @property
    def done(self) -> bool:
        """True once the run has its final event or the turn was refused."""
        return self.final is not None or self.failed is not None

    def chat_frame(self) -> Frame:
        """The `chat` frame of this turn."""
        assert self.text is not None, "an attached turn sends no chat"
        return {
            "type": "chat",
            "text": self.text,
            "session_id": self.session_id,
            "client_msg_id": self.client_msg_id,
        }

    def reconnect_frames(self) -> list[Frame]:
        """What a new socket sends to pick this turn up; a requested cancel is due again."""
        if self.done:
            return []
        self.cancel_sent = False
        if self.run_id is None:
            return [self.chat_frame()]
        return [{"type": "resume", "run_id": self.run_id, "after_seq": self.last_seq}]

    def due_cancel(self) -> Frame | None:
        """The `cancel` frame to send now, if one was requested and not yet sent."""
        if self.done or not self.cancel_requested or self.cancel_sent or self.run_id is None:
            return None
        return {"type": "cancel", "run_id": self.run_id}

    def owns(self, event: Event) -> bool:
        """Whether `event` belongs to this turn."""
        if event.get("type") == "error":
            ref = event.get("ref")
            if ref is None:  # a frame error without a reference: ours while we wait
                return self.run_id is None
            return ref in (self.client_msg_id, self.run_id)
        if self.run_id is not None:
            return bool(event.get("run_id") == self.run_id)
        return bool(
            event.get("type") == RUN_ACCEPTED
            and self.text is not None
            and event.get("client_msg_id") == self.client_msg_id
        )

    def admit(self, event: Event) -> bool:
        """Record an event of this turn; False for one not to show (repeat, out of order, late)."""
        if self.done:
            return False
        kind = event.get("type")
        if kind == "error":
            self.failed = event
            return True
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return False
            if seq > self.last_seq + 1 and kind not in FINAL_TYPES:
                return False
            self.last_seq = seq
        self.run_id = str(event.get("run_id", self.run_id))
        if kind in (RUN_STARTED, AGENT_HANDOFF):
            self.agent = str(event.get("agent") or self.agent)
        elif kind == MESSAGE_DELTA:
            self.reply += str(event.get("text", ""))
        elif kind in FINAL_TYPES:
            self.final = event
        return True

    def missing_text(self, final: Event) -> str:
        """The part of a final event's stored text not yet shown by the deltas.

        After a long disconnect, `resume` may answer with the final event alone
        (from the database): the stored text then replaces the partial one.
        """
        text = final.get("text")
        if not isinstance(text, str) or text == self.reply:
            return ""
        if text.startswith(self.reply):
            return text[len(self.reply) :]
        return "\n" + text if self.reply else text


@dataclass
class Backoff:
    """Growing, jittered delays between reconnect attempts (`reset` after a good connection)."""

    initial_s: float = 0.25
    factor: float = 2.0
    max_s: float = 5.0
    jitter: float = 0.2  # each delay is drawn from [base * (1 - jitter), base]
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        base = min(self.max_s, self.initial_s * self.factor**self.attempts)
        self.attempts += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """Start again from the initial delay."""
        self.attempts = 0


class Interrupt(Enum):
    """What Ctrl-C does."""

    CANCEL = "cancel"  # a reply is streaming: cancel its run
    QUIT = "quit"  # at the prompt: leave (exit status 0)
    ABORT = "abort"  # a second Ctrl-C while the cancel is on its way: leave at once (130)


def interrupt_action(turn: Turn | None) -> Interrupt:
    """What Ctrl-C does now, with `turn` the reply in flight (None at the prompt)."""
    if turn is None or turn.done:
        return Interrupt.QUIT
    return Interrupt.ABORT if turn.cancel_requested else Interrupt.CANCEL


def shown(value: Any) -> str:
    """A tool argument or output as one short line."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def event_line(event: Event) -> Text | None:
    """The line shown for an event that is not reply text (None: no line)."""
    kind = event.get("type")
    if kind == TOOL_CALLED:
        args = shown(event.get("arguments", ""))
        return Text(f"  [tool] {event.get('name')}({args})", style="dim yellow")
    if kind == TOOL_OUTPUT:
        return Text(
            f"  [tool] {event.get('name')} -> {shown(event.get('output', ''))}", "dim yellow"
        )
    if kind == AGENT_HANDOFF:
        return Text(f"  [handoff] -> {event.get('agent')}", style="dim magenta")
    if kind == RUN_QUEUED:
        return Text(f"  [queued] position {event.get('position')}", style="dim")
    if kind == RUN_CANCELLED:
        return Text("[cancelled]", style="yellow")
    if kind == RUN_FAILED:
        error = event.get("error") or {}
        return Text(f"[failed] {error.get('code')}: {error.get('message')}", style="bold red")
    if kind == "error":
        retry = event.get("retry_after")
        hint = f" (retry after {retry} s)" if retry is not None else ""
        return Text(f"[error] {event.get('code')}: {event.get('message')}{hint}", "bold red")
    return None


class Renderer:
    """Writes the chat to a rich console: reply text inline as it streams, the rest as lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._mid_line = False  # the cursor is after text on the current line
        self._header: str | None = None  # the agent whose name starts the reply on screen

    def prompt(self, label: str) -> None:
        """Show the input prompt."""
        self.end_line()
        self.console.print(Text(f"{label}> ", style="bold green"), end="")
        self._mid_line = True

    def line_entered(self) -> None:
        """The user ended a line at the prompt (the terminal echoed the newline)."""
        self._mid_line = False

    def start_reply(self) -> None:
        """A new turn: its reply gets its own agent header."""
        self.end_line()
        self._header = None

    def event(self, event: Event, turn: Turn) -> None:
        """Show one admitted event of `turn` (after `turn.admit`)."""
        kind = event.get("type")
        if kind == MESSAGE_DELTA:
            self._reply_text(str(event.get("text", "")), turn.agent)
        elif kind in FINAL_TYPES:
            missing = "" if kind == RUN_FAILED else turn.missing_text(event)
            if missing:
                self._reply_text(missing, turn.agent)
        line = event_line(event)
        if line is not None:
            self.line(line)
        if kind in FINAL_TYPES:
            self.end_line()

    def notice(self, text: str, style: str = "dim") -> None:
        """A line about the client itself (connection, errors)."""
        self.line(Text(text, style=style))

    def line(self, text: Text) -> None:
        """`text` on a line of its own."""
        self.end_line()
        self.console.print(text)

    def end_line(self) -> None:
        """Move to a fresh line if the cursor is after text."""
        if self._mid_line:
            self.console.print()
            self._mid_line = False

    def history(self, messages: list[dict[str, Any]]) -> None:
        """The stored messages of the session, oldest first (replies still streaming left out)."""
        finished = [m for m in messages if m.get("status") != "streaming"]
        if not finished:
            return
        self.notice("--- history ---")
        for message in finished:
            who = "you" if message.get("role") == "user" else DEFAULT_AGENT
            status = message.get("status")
            mark = f" [{status}]" if status in ("cancelled", "failed") else ""
            self.line(Text(f"{who}: {message.get('text') or ''}{mark}", style="dim"))
        self.notice("---")

    def _reply_text(self, text: str, agent: str) -> None:
        if self._header != agent:
            self.end_line()
            self.console.print(Text(f"{agent}: ", style="bold cyan"), end="")
            self._header = agent
        self.console.print(Text(text), end="", soft_wrap=True)
        self._mid_line = True
