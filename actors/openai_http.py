"""The OpenAI-compatible door's HTTP handlers: auth, the turn, and the streamed or whole answer.

`serve_app.py` routes `GET /v1/models` and `POST /v1/chat/completions` here;
the mapping itself is in `actors.openai_door`, the turn in `IngressCore.http_turn`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from ray.exceptions import RayActorError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from actors.auth import Identity, TokenCodec, bearer_token
from actors.errors import AuthError, RaychatError
from actors.http_turn import HttpTurn, TurnBroken
from actors.ingress import IngressCore, remote_cause
from actors.messages import Chat
from actors.openai_door import (
    DONE,
    ON_BUSY_HEADER,
    RUN_HEADER,
    SESSION_HEADER,
    CompletionMapper,
    DoorError,
    agent_for,
    door_error,
    model_list,
    parse_request,
    sse,
    turn_frame,
)
from actors.runs import AGENT_NAMES

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024  # a whole conversation, resent on every turn
MODELS_CREATED = 1_767_225_600  # 2026-01-01: `created` of every model in `/v1/models`


def error_response(error: DoorError, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's JSON shape, with its status and Retry-After."""
    return JSONResponse(
        error.body(), status_code=error.status, headers={**(headers or {}), **error.headers()}
    )


def authenticate(codec: TokenCodec, request: Request) -> Identity:
    """The identity of `Authorization: Bearer TOKEN`; `DoorError` 401 otherwise."""
    try:
        return codec.verify(bearer_token(request.headers.get("authorization")))
    except AuthError as exc:
        raise door_error(exc) from None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or `DoorError` 413 once it passes `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise DoorError(413, f"the body is larger than {limit} bytes", code="too_large")
    return bytes(body)


async def list_models(codec: TokenCodec, request: Request) -> Response:
    """`GET /v1/models`: the models a client may pick (any valid token)."""
    try:
        authenticate(codec, request)
    except DoorError as exc:
        return error_response(exc)
    return JSONResponse(model_list(AGENT_NAMES, MODELS_CREATED))


async def start_turn(core: IngressCore, user_id: str, message: Chat) -> HttpTurn:
    """Send the turn's chat; raychat's errors become `DoorError`s."""
    try:
        return await core.http_turn(user_id, message)
    except Exception as exc:
        cause = remote_cause(exc)
        if isinstance(cause, RaychatError):
            raise door_error(cause) from None
        if isinstance(cause, RayActorError):
            logger.error("an HTTP chat of %s failed", user_id, exc_info=exc)
            message_ = "the user's shard is restarting; try again"
            raise DoorError(503, message_, "server_error", "unavailable", 1.0) from None
        logger.error("an HTTP chat of %s failed", user_id, exc_info=exc)
        raise DoorError(500, "the server could not take the turn", "server_error") from None


async def chat_completions(core: IngressCore, codec: TokenCodec, request: Request) -> Response:
    """`POST /v1/chat/completions`: one turn, streamed as SSE chunks or answered whole."""
    try:
        identity = authenticate(codec, request)
        body = parse_request(await read_body(request))
        message = turn_frame(
            body,
            session_header=request.headers.get(SESSION_HEADER),
            on_busy_header=request.headers.get(ON_BUSY_HEADER),
            agent=agent_for(body.model, AGENT_NAMES),
            max_text_chars=core.settings.max_text_chars,
        )
        turn = await start_turn(core, identity.user_id, message)
    except DoorError as exc:
        return error_response(exc)
    headers = {SESSION_HEADER: message.session_id, RUN_HEADER: turn.run_id}
    mapper = CompletionMapper(body.model)
    if body.stream:
        return ClosingStreamingResponse(
            stream_frames(turn, mapper),
            on_close=turn.aclose,
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    try:
        events = [event async for event in turn]
    except TurnBroken as exc:
        return error_response(DoorError(500, str(exc), "server_error", "internal"), headers)
    finally:
        await turn.aclose()
    try:
        return JSONResponse(mapper.completion(events), headers=headers)
    except DoorError as exc:
        return error_response(exc, headers)


async def stream_frames(turn: HttpTurn, mapper: CompletionMapper) -> AsyncIterator[bytes]:
    """The SSE frames of one turn: the role chunk, content chunks, the end, `[DONE]`."""
    yield mapper.first_chunk()
    try:
        async for event in turn:
            for frame in mapper.stream(event):
                yield frame
    except TurnBroken as exc:
        yield sse(DoorError(500, str(exc), "server_error", "internal").body())
        yield DONE


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always closes its body and calls `on_close` when done.

    Starlette leaves an unfinished body iterator to the garbage collector (a
    client that went away, or one that never got the first byte); the turn it
    reads must be closed at once.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]],
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the response; then close the body and the turn, however it ended."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()
            await self._on_close()
