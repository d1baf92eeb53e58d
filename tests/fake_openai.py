"""A scripted OpenAI-compatible Chat Completions endpoint for tests, on a real TCP socket.

`FakeChatCompletions` is a small Starlette app speaking the Chat Completions
wire format: SSE chunks when `stream` is true, one JSON body otherwise. Each
request takes the next `Step` of its `script` (then plain text forever):
text, tool calls (a handoff is the `transfer_to_<agent>` tool), an HTTP error
(429/500, retryable or not), an error event or a dropped connection mid-stream,
or a stream held open until the client goes away. Every request is recorded
(`Served`), with how its answer ended, so a test sees retries and disconnects.

`serve` runs it with uvicorn on 127.0.0.1 (a free port) in the caller's event
loop; `serve_in_thread` runs it in a thread of its own, for clients in other
processes (Ray actors). Either yields the base URL (`.../v1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_PIECES = ("Hello", " from", " the", " fake", " endpoint", ", friend!")
START_BOUND_S = 10.0  # safety bound only: start-up normally takes a few loop turns
HOLD_BOUND_S = 60.0  # a held stream ends by itself after this (safety bound only)
STOP_GRACE_S = 1  # s; streams still open at shutdown are cut after this

StepKind = Literal["text", "tool_calls", "http_error", "error_mid_stream", "drop", "hold"]
# How the answer to one request ended.
End = Literal["open", "completed", "answered", "rejected", "errored", "dropped", "disconnected"]


@dataclass(frozen=True)
class Step:
    """What the endpoint does with one request (build with the functions below)."""

    kind: StepKind
    pieces: tuple[str, ...] | None = None  # text chunks; None: the endpoint's default pieces
    calls: tuple[tuple[str, str], ...] = ()  # (tool name, JSON arguments)
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    after: int = 0  # chunks sent before the error, the drop or the hold


def text(*pieces: str) -> Step:
    """Stream these text chunks (the default reply without any), then stop."""
    return Step("text", pieces or None)


def tool_calls(*calls: tuple[str, dict[str, Any]], pieces: tuple[str, ...] = ()) -> Step:
    """Stream optional text, then these tool calls (arguments split over chunks)."""
    return Step("tool_calls", pieces, calls=tuple((name, json.dumps(a)) for name, a in calls))


def handoff(agent: str) -> Step:
    """Call the SDK's handoff tool to `agent`."""
    return tool_calls((f"transfer_to_{agent}", {}))


def http_error(status: int = 500, *, retry: bool = True, retry_after_ms: int = 1) -> Step:
    """Answer with an HTTP error before any stream; `retry=False` forbids client retries."""
    headers = {"retry-after-ms": str(retry_after_ms)} if retry else {"x-should-retry": "false"}
    return Step("http_error", status=status, headers=tuple(headers.items()))


def error_mid_stream(after: int = 2) -> Step:
    """Stream `after` text chunks, then an SSE error event (code 500) and end the stream."""
    return Step("error_mid_stream", after=after)


def drop_mid_stream(after: int = 2) -> Step:
    """Stream `after` text chunks, then drop the connection."""
    return Step("drop", after=after)


def hold(after: int = 2) -> Step:
    """Stream `after` text chunks, then keep the stream open until the client goes away."""
    return Step("hold", after=after)


OK = text()


@dataclass
class Served:
    """One request the endpoint received, and how its answer ended."""

    body: dict[str, Any]
    authorization: str | None
    step: Step
    end: End = "open"


class _Drop(Exception):
    """Raised inside an SSE body: uvicorn then drops the connection mid-response."""


@dataclass
class FakeChatCompletions:
    """A scripted `/v1/chat/completions` endpoint that records what it is sent."""

    pieces: tuple[str, ...] = DEFAULT_PIECES
    script: list[Step] = field(default_factory=list)
    always_send_usage: bool = False
    served: list[Served] = field(default_factory=list)
    # Notified on every new request and every answer's end (from the server's thread).
    changed: threading.Condition = field(default_factory=threading.Condition)
    # Streams: each chunk waits for `release` when set (streams stay open meanwhile).
    release: asyncio.Event | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: asyncio.Condition = field(default_factory=asyncio.Condition)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def reply(self) -> str:
        """The default reply text."""
        return "".join(self.pieces)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON body of every request, in arrival order."""
        return [s.body for s in self.served]

    @property
    def authorizations(self) -> list[str | None]:
        """The Authorization header of every request."""
        return [s.authorization for s in self.served]

    @property
    def outcomes(self) -> list[Step]:
        """The step each request got."""
        return [s.step for s in self.served]

    @property
    def ends(self) -> list[End]:
        """How each answer ended."""
        return [s.end for s in self.served]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until `predicate()` holds (checked on every change); False on timeout."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout_s)

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """`wait_for` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout_s)

    def _record(self, served: Served, end: End | None = None) -> None:
        with self.changed:
            if end is None:
                self.served.append(served)
            else:
                served.end = end
            self.changed.notify_all()

    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(routes=[Route("/v1/chat/completions", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.json()
        step = self.script.pop(0) if self.script else OK
        served = Served(body, request.headers.get("authorization"), step)
        self._record(served)
        completion_id = f"chatcmpl-fake-{next(self._ids)}"
        model = body.get("model", "")
        if step.kind == "http_error":
            self._record(served, "rejected")
            kind = "rate_limit_error" if step.status == 429 else "server_error"
            error = {"message": f"fake {step.status}", "type": kind, "param": None, "code": None}
            return JSONResponse(
                {"error": error}, status_code=step.status, headers=dict(step.headers)
            )
        if not body.get("stream"):
            self._record(served, "answered")
            return JSONResponse(self._completion(completion_id, model, step))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._sse(served, completion_id, model, include_usage or self.always_send_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    def _pieces(self, step: Step) -> tuple[str, ...]:
        return self.pieces if step.pieces is None else step.pieces

    def _usage(self, step: Step) -> dict[str, int]:
        completion = len(self._pieces(step)) + len(step.calls)
        return {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}

    def _completion(self, completion_id: str, model: str, step: Step) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self._pieces(step)) or None,
            "refusal": None,
        }
        if step.calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
                for i, (n, a) in enumerate(step.calls)
            ]
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if step.calls else "stop",
                    "logprobs": None,
                }
            ],
            "usage": self._usage(step),
        }

    async def _sse(
        self, served: Served, completion_id: str, model: str, usage: bool
    ) -> AsyncIterator[str]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        async with self.arrivals:
            self.arrivals.notify_all()
        try:
            async for chunk in self._chunks(served, completion_id, model, usage):
                if self.release is not None:
                    await self.release.wait()
                yield chunk
            if served.end == "open":
                self._record(served, "completed")
        except (asyncio.CancelledError, GeneratorExit):
            if served.end == "open":  # Starlette cancels the body when the client goes
                self._record(served, "disconnected")
            raise
        finally:
            self.in_flight -= 1

    async def _chunks(
        self, served: Served, completion_id: str, model: str, usage: bool
    ) -> AsyncIterator[str]:
        step = served.step

        def chunk(
            delta: dict[str, Any] | None,
            finish_reason: str | None = None,
            usage: dict[str, int] | None = None,
        ) -> str:
            choices = (
                []
                if delta is None
                else [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                ]
            )
            body: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
            }
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        pieces = self._pieces(step)
        stops_early = step.kind in ("error_mid_stream", "drop", "hold")
        for piece in pieces[: step.after] if stops_early else pieces:
            yield chunk({"content": piece})
        if step.kind == "drop":
            self._record(served, "dropped")
            raise _Drop("the fake endpoint drops the connection mid-stream")
        if step.kind == "error_mid_stream":
            self._record(served, "errored")
            error = {"message": "fake failure mid-stream", "type": "server_error", "code": 500}
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        if step.kind == "hold":
            await asyncio.sleep(HOLD_BOUND_S)  # until cancelled: the client went away
        for index, (name, arguments) in enumerate(step.calls):
            call_id = f"call_{completion_id}_{index}"
            start = {"name": name, "arguments": ""}
            yield chunk(
                {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": start}
                    ]
                }
            )
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
        yield chunk({}, finish_reason="tool_calls" if step.calls else "stop")
        if usage:
            yield chunk(None, usage=self._usage(step))
        yield "data: [DONE]\n\n"


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@asynccontextmanager
async def serve(fake: FakeChatCompletions) -> AsyncIterator[str]:
    """Serve `fake` on 127.0.0.1 (a free port) in this event loop; yield its base URL."""
    config = uvicorn.Config(
        fake.app(),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=STOP_GRACE_S,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    task = loop.create_task(server.serve(), name="fake-openai-server")
    ready = loop.create_task(server.ready.wait())
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=START_BOUND_S, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            if task.done():
                task.result()  # surface the start-up error
            raise RuntimeError("the fake OpenAI server did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        ready.cancel()
        server.should_exit = True
        await task


@contextmanager
def serve_in_thread(fake: FakeChatCompletions) -> Iterator[str]:
    """Serve `fake` from a thread with its own event loop; yield its base URL.

    For clients in other processes. The test reads `fake.served` from its own
    thread and waits for changes with `until`/`wait_for`; set `fake.script`
    only while no request is in flight.
    """
    started = threading.Event()
    url: list[str] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        async with serve(fake) as base_url:
            url.append(base_url)
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced by the caller
            failure.append(exc)
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
    thread.start()
    try:
        if not started.wait(START_BOUND_S) or not url:
            raise RuntimeError("the fake OpenAI server did not start") from (
                failure[0] if failure else None
            )
        yield url[0]
    finally:
        with contextlib.suppress(RuntimeError):  # the loop already ended (failure raised below)
            loop.call_soon_threadsafe(stop.set)
        thread.join(START_BOUND_S + STOP_GRACE_S)
        if failure:
            raise RuntimeError("the fake OpenAI server failed") from failure[0]
