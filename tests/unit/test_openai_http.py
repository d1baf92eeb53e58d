"""The door's HTTP glue: a streamed answer closes its turn however the response ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from actors.openai_http import ClosingStreamingResponse

SCOPE = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "POST"}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def response(closed: list[str]) -> ClosingStreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
        finally:
            closed.append("body")

    async def on_close() -> None:
        closed.append("turn")

    return ClosingStreamingResponse(
        body(), on_close=on_close, media_type="text/event-stream", headers={}
    )


async def test_a_whole_response_closes_the_turn() -> None:
    closed: list[str] = []
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response(closed)(SCOPE, receive, send)
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert closed == ["body", "turn"]


async def test_a_client_gone_mid_stream_closes_the_body_and_the_turn() -> None:
    closed: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("the client went away")

    with pytest.raises(ClientDisconnect):
        await response(closed)(SCOPE, receive, send)
    assert closed == ["body", "turn"]


async def test_a_response_that_never_started_still_closes_the_turn() -> None:
    closed: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the client went away")

    with pytest.raises(ClientDisconnect):
        await response(closed)(SCOPE, receive, send)
    assert closed == ["turn"]
