"""A small WebSocket client speaking PROTOCOL.md, for the integration tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

FINAL_TYPES = {"run.completed", "run.cancelled", "run.failed"}
RECV_TIMEOUT_S = 30.0


@dataclass
class RunLog:
    """Every event of one run as received, in order."""

    run_id: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any] | None:
        """The final event, once received."""
        return next((e for e in self.events if e["type"] in FINAL_TYPES), None)

    @property
    def deltas_text(self) -> str:
        """The concatenated `message.delta` texts."""
        return "".join(e["text"] for e in self.events if e["type"] == "message.delta")

    @property
    def seqs(self) -> list[int]:
        """The seq of each event, in arrival order."""
        return [e["seq"] for e in self.events]


class ChatClient:
    """One socket: send frames, read events, group run events by run id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.runs: dict[str, RunLog] = {}
        self.others: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def __aenter__(self) -> ChatClient:
        self.ws = await websockets.connect(self.url, max_size=None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def send(self, frame: dict[str, Any] | str) -> None:
        """Send a JSON frame (a dict) or raw text."""
        assert self.ws is not None
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def chat(self, text: str, **fields: Any) -> None:
        """Send a `chat` frame."""
        await self.send({"type": "chat", "text": text, **fields})

    async def recv(self) -> dict[str, Any]:
        """The next event (fails the test after RECV_TIMEOUT_S)."""
        assert self.ws is not None
        async with asyncio.timeout(RECV_TIMEOUT_S):
            event: dict[str, Any] = json.loads(await self.ws.recv())
        self.received.append(event)
        if "run_id" in event and "seq" in event:
            self.runs.setdefault(event["run_id"], RunLog(event["run_id"])).events.append(event)
        else:
            self.others.append(event)
        return event

    async def next_of(self, *types: str) -> dict[str, Any]:
        """Read events until one of `types` arrives; return it."""
        while True:
            event = await self.recv()
            if event["type"] in types:
                return event

    async def start(self, text: str, **fields: Any) -> str:
        """Send a chat and return its run id once `run.accepted` arrives."""
        await self.chat(text, **fields)
        event = await self.next_of("run.accepted", "error")
        if event["type"] == "error":
            raise AssertionError(f"chat refused: {event}")
        return str(event["run_id"])

    async def until_final(self, run_id: str | None = None) -> RunLog:
        """Read until a run (the given one, or the next accepted one) has its final event."""
        while True:
            if run_id is not None and run_id in self.runs and self.runs[run_id].final:
                return self.runs[run_id]
            event = await self.recv()
            if run_id is None and event["type"] == "run.accepted":
                run_id = event["run_id"]
            if event["type"] == "error":
                raise AssertionError(f"error while waiting for run {run_id}: {event}")

    async def turn(self, text: str, **fields: Any) -> RunLog:
        """Send a chat and read until its run ends."""
        await self.chat(text, **fields)
        return await self.until_final()

    async def until_closed(self) -> int | None:
        """Read events until the server closes the socket; its close code (None: no frame).

        Fails the test if the socket stays open RECV_TIMEOUT_S past the last event.
        """
        try:
            while True:
                await self.recv()
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


async def resume_to_final(
    url: str, run_id: str, after_seq: int, attempts: int = 100, cancel: bool = False
) -> RunLog:
    """Reconnect and `resume` a run until its final event, as a client after a 1001 does.

    While a rollout goes on, a new socket may land on a replica that is itself
    stopping (closed with 1001 again) or find no replica for a moment (refused):
    try again, resuming after the last event received. Bounded by `attempts`.
    `cancel`: once a delta arrives on the resumed socket, cancel the run (its
    final event is then `run.cancelled`, unless it had ended already).
    """
    log = RunLog(run_id)
    for _ in range(attempts):
        try:
            async with ChatClient(url) as client:
                last = log.events[-1]["seq"] if log.events else after_seq
                await client.send({"type": "resume", "run_id": run_id, "after_seq": last})
                try:
                    if cancel:
                        await client.next_of("message.delta")  # it goes on past the cut
                        await client.send({"type": "cancel", "run_id": run_id})
                    await client.until_final(run_id)
                finally:
                    log.events += client.runs[run_id].events if run_id in client.runs else []
                return log
        except (websockets.ConnectionClosed, websockets.InvalidStatus, OSError):
            await asyncio.sleep(0.2)  # a new replica is coming up: poll, bounded by `attempts`
    raise AssertionError(f"could not resume run {run_id}")
