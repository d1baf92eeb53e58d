"""raychat's Ray Serve application: the FastAPI WebSocket and HTTP ingress.

`serve run serve_app:app` starts it with the embedded defaults;
`serve run config/serve.yaml` does the same from a Serve config file.
"""

import logging
import os
from typing import Annotated, Any

import ray
from fastapi import FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve

from actors import metrics
from actors.auth import Identity, TokenCodec, bearer_token, codec_for
from actors.errors import AuthError
from actors.factory import ensure_actors, sized_settings
from actors.ingress import CLOSE_GOING_AWAY, IngressCore
from actors.messages import SESSION_ID_PATTERN
from actors.openai_http import chat_completions, list_models
from actors.replica_drain import serve_replica_stopping
from actors.web import asset, index_page
from actors.web.dev_token import DevTokenGate, DevTokenRequest
from config import Settings
from config.serve_env import apply_serve_defaults, serve_ingress, stop_orphaned_haproxies

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
# Serve's HAProxy ingress where it can run (Linux), unless RAY_SERVE_ENABLE_HA_PROXY is set:
# `serve run serve_app:app` imports this module before it starts its local Ray.
INGRESS = apply_serve_defaults()
if INGRESS == "haproxy" and not ray.is_initialized():  # about to start Serve, not a replica
    stop_orphaned_haproxies()
logger = logging.getLogger("raychat.ingress")

REPLICA_ENV = {
    # The handlers run on the replica's own event loop (see the deployment below).
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # A stopping replica behind HAProxy stays reachable this long so load balancers can
    # drop it (Serve's default: 30 s, which made Ctrl-C on `serve run` take 33 s). Serve's
    # own HAProxy drops it within a second of the controller's broadcast, and raychat
    # closes its sockets with 1001 when the window opens.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TRY_AGAIN_LATER = 1013
api = FastAPI(title="raychat", version="1")


def _token(request_token: str | None, authorization: str | None) -> str | None:
    return request_token or bearer_token(authorization)


@serve.deployment(
    # Each open WebSocket holds one slot for its whole life: allow thousands per
    # replica, and answer overflow with 503 instead of queueing it forever.
    max_ongoing_requests=4096,
    max_queued_requests=256,
    # The handlers run on the replica's own event loop, not on a second thread's
    # (Serve's default): one thread hop less per message. With direct ingress a
    # socket's send then also waits once the replica's uvicorn stops writing.
    ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": REPLICA_ENV}},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(api)
class RaychatIngress:
    """One ingress replica: authenticates, parses and streams; holds no lasting state."""

    async def __init__(self, settings: Settings | None = None) -> None:  # type: ignore[misc]
        """Find or start the actors and wait until they answer: ready means ready.

        Serve reports the app ready when this returns, so the first chat finds
        the database open, the agents built and the SDK warmed.
        """
        self.settings = sized_settings(settings or Settings())
        self.codec: TokenCodec = codec_for(self.settings)
        self.core = IngressCore(
            self.settings, ensure_actors(self.settings), stopping=serve_replica_stopping
        )
        await self.core.wait_ready()
        self.core.start()
        self.dev_tokens = DevTokenGate()
        logger.info(
            "ready: %d shard and %d agent actors, Serve ingress: %s",
            self.settings.shard_count,
            self.settings.agent_actor_count,
            serve_ingress(),
        )

    async def __del__(self) -> None:
        await self.core.stop()

    async def check_health(self) -> None:
        """Serve's periodic health check: fails while a background task is down."""
        self.core.check_health()

    def _identity(self, token: str | None) -> Identity:
        try:
            return self.codec.verify(token)
        except AuthError as exc:
            raise HTTPException(status_code=401, detail=exc.message) from None

    def _http_identity(self, request: Request) -> Identity:
        return self._identity(
            _token(request.query_params.get("token"), request.headers.get("authorization"))
        )

    def _admin(self, request: Request) -> Identity:
        identity = self._http_identity(request)
        if not identity.admin:
            raise HTTPException(status_code=403, detail="admin token required")
        return identity

    @api.websocket("/api/websocket/ws")
    async def websocket(self, websocket: WebSocket) -> None:
        """The chat stream of PROTOCOL.md."""
        if not self.core.admit(websocket):
            await self._refuse_full(websocket)
            return
        try:
            await websocket.accept()
            if self.core.going_away:  # this replica is stopping: try another
                metrics.socket_closed(CLOSE_GOING_AWAY)
                await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
                return
            token = _token(
                websocket.query_params.get("token"), websocket.headers.get("authorization")
            )
            try:
                identity = self.codec.verify(token)
            except AuthError:
                metrics.socket_closed(CLOSE_UNAUTHENTICATED)
                await websocket.close(CLOSE_UNAUTHENTICATED, "unauthenticated")
                return
            await self.core.serve_socket(websocket, identity)
        finally:
            self.core.release(websocket)

    async def _refuse_full(self, websocket: WebSocket) -> None:
        """503 before the handshake where the server can say so, else close 1013."""
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            body = {"error": {"code": "busy", "message": "too many open sockets, retry later"}}
            await websocket.send_denial_response(JSONResponse(body, status_code=503))
        else:
            await websocket.accept()
            metrics.socket_closed(CLOSE_TRY_AGAIN_LATER)
            await websocket.close(CLOSE_TRY_AGAIN_LATER, "too many open sockets")

    @api.get("/api/websocket/performance/stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        """Service statistics (admin)."""
        self._admin(request)
        return await self.core.stats()

    @api.post("/api/websocket/performance/cleanup")
    async def cleanup(self, request: Request) -> dict[str, Any]:
        """Drop expired cache entries and finished run buffers (admin)."""
        self._admin(request)
        return {"removed": await self.core.cleanup()}

    @api.post("/api/websocket/performance/refresh_user_context/{user_id}")
    async def refresh_user_context(self, user_id: str, request: Request) -> dict[str, Any]:
        """Reload one user's context from the database (admin or that user)."""
        identity = self._http_identity(request)
        if not identity.admin and identity.user_id != user_id:
            raise HTTPException(status_code=403, detail="may not refresh another user's context")
        return await self.core.refresh_context(user_id)

    @api.get("/api/history")
    async def history(
        self,
        request: Request,
        session_id: Annotated[str, Query(pattern=SESSION_ID_PATTERN)] = "default",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """A session's messages, oldest first (the session owner's token)."""
        identity = self._http_identity(request)
        return await self.core.history(identity.user_id, session_id, limit, before)

    @api.get("/v1/models")
    async def openai_models(self, request: Request) -> Response:
        """OpenAI-compatible: the models (raychat's agents) a client may pick."""
        return await list_models(self.codec, request)

    @api.post("/v1/chat/completions")
    async def openai_chat_completions(self, request: Request) -> Response:
        """OpenAI-compatible: one chat turn, streamed (SSE) or whole."""
        return await chat_completions(self.core, self.codec, request)

    @api.get("/", include_in_schema=False)
    async def page(self, request: Request) -> HTMLResponse:
        """The chat page."""
        return index_page(request.scope.get("root_path", ""))

    @api.get("/static/{name}", include_in_schema=False)
    async def static_asset(self, name: str) -> FileResponse:
        """The chat page's scripts and styles."""
        return asset(name)

    @api.get("/api/dev-token")
    async def dev_token_available(self, request: Request) -> dict[str, bool]:
        """Whether this caller may get a dev token (the page then offers a dev user name)."""
        return {"available": await self.dev_tokens.refusal(request) is None}

    @api.post("/api/dev-token")
    async def dev_token(self, body: DevTokenRequest, request: Request) -> dict[str, str]:
        """A user token for a name, only while Serve listens on loopback, to local callers."""
        refusal = await self.dev_tokens.refusal(request)
        if refusal is not None:
            raise HTTPException(status_code=403, detail=refusal)
        return {"token": self.codec.issue(body.user_id)}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """200 while the process is up."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """200 once the actors and the database answer, 503 otherwise."""
        try:
            ready = await self.core.ready()
        except Exception:
            logger.warning("readiness check failed", exc_info=True)
            ready = False
        status = 200 if ready else 503
        return JSONResponse({"ready": ready}, status_code=status)


app = RaychatIngress.bind()  # type: ignore[attr-defined]
