"""Admitting a chat: the checks before it, the per-user rate limit, storing its turn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from actors.call_batcher import settle_each
from actors.errors import BadRequest, Busy, RateLimited, RaychatError, Unavailable
from actors.events import Event, accepted_event
from actors.rate_limit import TokenBucket, retry_after
from actors.records import TurnRecord, UserContext
from actors.shard.lanes import Lanes
from actors.shard.model import STORE_RETRY_S, ChatRequest, Lane, LaneKey, Run, ShardStore
from actors.shard.sessions import SessionCache
from actors.ttl_cache import TTLCache
from config import Settings

logger = logging.getLogger(__name__)

Admitted = tuple[Run, Lane, TurnRecord]
Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[], None]


class RateLimits:
    """A token bucket per user; full buckets are dropped by `prune`."""

    def __init__(self, per_s: float, burst: float, clock: Callable[[], float]) -> None:
        self._per_s = per_s
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, user_id: str) -> None:
        """Take a token of `user_id`, or raise `RateLimited` with how long to wait."""
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = TokenBucket(self._per_s, self._burst, self._clock)
            self._buckets[user_id] = bucket
        wait_s = bucket.take()
        if wait_s > 0:
            raise RateLimited("too many messages, slow down", retry_after(wait_s))

    def prune(self) -> None:
        """Forget the users whose bucket is full again (as good as new)."""
        for user_id in [u for u, bucket in self._buckets.items() if bucket.full]:
            del self._buckets[user_id]

    def __len__(self) -> int:
        return len(self._buckets)


class Admission:
    """Whether a chat is taken, and where: the checks, its place in its lane, its stored turn."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ShardStore,
        agents: int,
        agent_names: Iterable[str],
        rate_limits: RateLimits,
        runs: dict[str, Run],
        lanes: Lanes,
        settle_active: Callable[[LaneKey], Awaitable[None]],
        contexts: TTLCache[str, UserContext],
        sessions: SessionCache,
        counts: dict[str, int],
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._store = store
        self._agents = agents
        self._agent_names = frozenset(agent_names)
        self._rate_limits = rate_limits
        self._runs = runs
        self._lanes = lanes
        self._settle_active = settle_active
        self._contexts = contexts
        self._sessions = sessions
        self._counts = counts
        self._next_agent = 0

    async def admit(
        self, request: ChatRequest, *, draining: bool, on_retry: OnRetry | None = None
    ) -> Admitted | list[Event]:
        """The new run (registered, in its lane, its turn stored), or a duplicate's answer.

        `on_retry` is called when storing its turn failed once and is to be retried.

        Raises for a chat refused: the service drains (`Unavailable`), an unknown
        agent (`BadRequest`), the user's rate limit (`RateLimited`), a busy
        session (`Busy`), or its turn could not be stored.
        """
        if draining:
            raise Unavailable("the service is shutting down; try again shortly")
        if request.agent is not None and request.agent not in self._agent_names:
            raise BadRequest(f"agent: unknown agent {request.agent[:64]!r}")
        if request.resent and await self._stored_before(request):
            self._counts["duplicates"] += 1
            accepted = accepted_event(
                request.session_id, request.client_msg_id, request.run_id, duplicate=True
            )
            return [accepted]
        try:
            self._rate_limits.take(request.user_id)
        except RateLimited:
            self._counts["rate_limited"] += 1
            raise
        key = (request.user_id, request.session_id)
        await self._settle_active(key)
        try:
            lane, busy = self._lanes.admit(
                key, request.on_busy, self._settings.max_queued_per_session
            )
        except Busy:
            self._counts["rejected"] += 1
            raise
        # Reserve the run's place before the first await so concurrent chats keep their order.
        run = Run(
            request.run_id,
            request.user_id,
            request.session_id,
            agent_index=self._next_agent % self._agents,
        )
        self._next_agent += 1
        self._runs[run.run_id] = run
        self._lanes.reserve(lane, run.run_id, request.on_busy, busy)
        if not busy:  # it starts at once: look up what it needs now, load misses with the turn
            run.context = self._contexts.get(request.user_id)
            run.history = self._sessions.get(request.user_id, request.session_id)
        ticket = self._contexts.ticket()  # a tool's write during the load wins over it
        try:
            record = await begin_turn(
                self._store,
                request,
                context=not busy and run.context is None,
                history_limit=self._settings.history_messages
                if not busy and run.history is None
                else 0,
                clock=self._clock,
                sleep=self._sleep,
                on_retry=on_retry,
            )
        except BaseException:
            self._lanes.forget(lane, run)
            raise
        if record.duplicate:
            self._lanes.forget(lane, run)
            self._counts["duplicates"] += 1
            return [
                accepted_event(
                    request.session_id, request.client_msg_id, record.run_id, duplicate=True
                )
            ]
        self._counts["accepted"] += 1
        if record.context is not None:
            self._contexts.put_if_fresh(request.user_id, record.context, ticket)
            run.context = record.context
        if record.history is not None:
            self._sessions.put(request.user_id, request.session_id, record.history)
            run.history = list(record.history)
        return run, lane, record

    async def _stored_before(self, request: ChatRequest) -> bool:
        """Whether a chat sent again was taken by this shard or stored by its lost one."""
        if request.run_id in self._runs:
            return True
        return await self._store.run_record(request.user_id, request.run_id) is not None


async def begin_turn(
    store: ShardStore,
    request: ChatRequest,
    *,
    context: bool,
    history_limit: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    on_retry: OnRetry | None = None,
) -> TurnRecord:
    """Store the user message, retrying while the persistence actor restarts.

    A retry is safe: a turn is keyed by its run id, so a write that did
    commit before its answer was lost is found, not stored twice. `on_retry`
    is called before the first retry.
    """
    deadline = clock() + STORE_RETRY_S
    attempt = 0
    while True:
        try:
            return await store.begin_turn(
                request.user_id,
                request.session_id,
                request.run_id,
                request.text,
                request.client_msg_id,
                attempt > 0,
                context,
                history_limit,
            )
        except RaychatError:
            raise
        except Exception:
            delay = min(2.0, 0.25 * (attempt + 1))
            if clock() + delay > deadline:
                raise
            logger.warning("storing run %s failed; retrying", request.run_id, exc_info=True)
            if attempt == 0 and on_retry is not None:
                on_retry()
            await sleep(delay)  # its persistence writer restarting
            attempt += 1


@dataclass(frozen=True)
class ChatDeferred:
    """A batch's answer for a chat still retrying its store: ask `chat_result(run_id)`."""

    run_id: str


Chat = Callable[[ChatRequest, OnRetry], Coroutine[Any, Any, list[Event]]]


class BatchChats:
    """Answers a batch of chats at once, except those waiting on a store retry.

    A chat whose turn must be stored again (its persistence writer restarting)
    is answered in the batch by `ChatDeferred`; it goes on in a task of its own,
    kept here until its caller fetches its answer with `result` (at most
    `keep` answers not fetched are kept; the oldest finished ones are dropped).
    """

    def __init__(self, chat: Chat, keep: int = 1024) -> None:
        self._chat = chat
        self._keep = keep
        self._deferred: OrderedDict[str, asyncio.Task[list[Event]]] = OrderedDict()

    async def run(self, calls: Sequence[tuple[ChatRequest]]) -> list[Any]:
        """Each chat's events or error, or `ChatDeferred` for one still retrying."""
        loop = asyncio.get_running_loop()
        entries: list[tuple[ChatRequest, asyncio.Event, asyncio.Task[list[Event]]]] = []
        for (request,) in calls:
            retrying = asyncio.Event()
            task = loop.create_task(
                self._chat(request, retrying.set), name=f"chat-{request.run_id}"
            )
            entries.append((request, retrying, task))
        try:
            await asyncio.gather(*(_answered_or_retrying(t, r) for _, r, t in entries))
        except BaseException:
            for _, _, task in entries:
                task.cancel()  # the batch's caller went away: so do its chats
            raise
        answers: list[Awaitable[Any]] = []
        for request, _, task in entries:
            if task.done():
                answers.append(task)
            else:
                self._defer(request.run_id, task)
                answers.append(_now(ChatDeferred(request.run_id)))
        return await settle_each(answers)

    async def result(self, run_id: str) -> list[Event]:
        """The answer of a deferred chat (once); `KeyError` if none is kept."""
        task = self._deferred[run_id]
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._deferred.pop(run_id, None)

    def _defer(self, run_id: str, task: asyncio.Task[list[Event]]) -> None:
        self._deferred[run_id] = task
        task.add_done_callback(_log_failure)
        while len(self._deferred) > self._keep:
            oldest = next((k for k, t in self._deferred.items() if t.done()), None)
            if oldest is None:
                break  # all still running (each bounded by the store retry)
            del self._deferred[oldest]

    def __len__(self) -> int:
        return len(self._deferred)

    async def stop(self) -> None:
        """Cancel the deferred chats still running; wait for them."""
        tasks = list(self._deferred.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._deferred.clear()


async def _answered_or_retrying(task: asyncio.Task[list[Event]], retrying: asyncio.Event) -> None:
    """Until the chat is answered or is waiting to retry its store."""
    waiter = asyncio.get_running_loop().create_task(retrying.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


async def _now(value: Any) -> Any:
    return value


def _log_failure(task: asyncio.Task[list[Event]]) -> None:
    """Log a deferred chat's unexpected failure (its answer is the error)."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not isinstance(error, RaychatError):
        logger.error("a deferred chat failed", exc_info=error)
