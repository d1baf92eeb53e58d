"""The user shard's logic: per-user context and session caches, run registry and lanes.

Users map to shards by `sharding.shard_for`. A shard owns, for its users: the
context cache (preferences and todos, TTL), the session cache (conversation
history used as model input), the registry of runs, and one lane per chat
session that serialises its runs (`on_busy`: enqueue, reject, interrupt).
Runs execute on agent actors; a run belongs to the shard, never to a socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors import metrics
from actors.call_batcher import settle_each
from actors.errors import BadRequest, Busy, NotFound, RateLimited, RaychatError, Unavailable
from actors.events import (
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_QUEUED,
    Event,
    accepted_event,
    run_failed,
)
from actors.rate_limit import TokenBucket
from actors.records import TurnRecord, UserContext
from actors.replica_reports import ReplicaReports
from actors.runs import SHUTDOWN_MESSAGE, RunOutcome, RunSpec
from actors.sharding import shard_for
from actors.ttl_cache import TTLCache
from config import Settings

logger = logging.getLogger(__name__)

History = list[dict[str, str]]
LOST_MESSAGE = "the run was lost: the actor running it stopped"
# How long storing a turn is retried while its persistence writer restarts (a lost node).
STORE_RETRY_S = 30.0
FAILURE_MESSAGES = {"internal": LOST_MESSAGE, "shutdown": SHUTDOWN_MESSAGE}


class AgentPort(Protocol):
    """The agent-actor calls a shard makes."""

    async def cancel(self, run_id: str) -> bool: ...

    async def replay_and_subscribe(
        self, run_id: str, after_seq: int, replica_id: str
    ) -> list[Event] | None: ...

    async def texts(self, run_ids: list[str]) -> dict[str, str]: ...

    async def final_event(self, run_id: str) -> Event | None: ...

    async def start_run(self, spec: RunSpec) -> None: ...

    async def announce_final(self, run_id: str, user_id: str, events: list[Event]) -> bool: ...

    async def holding(self, run_ids: list[str]) -> list[str]: ...

    async def report_end(self, run_id: str) -> RunOutcome | None: ...

    async def runs_status(self, run_ids: list[str]) -> dict[str, RunOutcome | None]: ...


class ShardStore(Protocol):
    """The persistence calls a shard makes."""

    async def begin_turn(
        self,
        user_id: str,
        session_id: str,
        run_id: str,
        text_: str,
        client_msg_id: str | None,
        retry: bool = False,
        context: bool = False,
        history_limit: int = 0,
    ) -> TurnRecord: ...

    async def finish_reply(
        self, reply_message_id: int, text_: str, status: str, final_seq: int | None = None
    ) -> None: ...

    async def load_context(self, user_id: str) -> UserContext: ...

    async def load_conversation(
        self, user_id: str, session_id: str, limit: int, exclude_run_id: str | None = None
    ) -> History: ...

    async def run_record(self, user_id: str, run_id: str) -> dict[str, Any] | None: ...

    async def fail_if_streaming(self, reply_message_id: int, error_code: str) -> dict[str, Any]: ...

    async def streaming_replies(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ChatRequest:
    """A validated `chat` frame plus who sent it and from which replica."""

    user_id: str
    run_id: str
    text: str
    replica_id: str
    session_id: str = "default"
    client_msg_id: str | None = None
    agent: str | None = None
    on_busy: str = "enqueue"
    # Runs of this user whose final event the replica delivered: (run_id, status, text).
    ended: tuple[tuple[str, str, str], ...] = ()
    # Sent again because the shard it was first sent to went away before answering.
    resent: bool = False


@dataclass
class _Run:
    """A run the shard knows: where it is and how it ended."""

    run_id: str
    user_id: str
    session_id: str
    agent_index: int
    status: str = "queued"  # queued | running | completed | cancelled | failed
    spec: RunSpec | None = None
    prelude: list[Event] = field(default_factory=list)
    subscribers: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    on_agent: bool = False  # started on its agent (from then on the agent reports its end)
    ended_at: float | None = None
    cancel_requested: bool = False
    # Looked up when the chat arrived, for a run that starts at once (else at its start).
    context: UserContext | None = None
    history: History | None = None


@dataclass
class _Lane:
    """The runs of one (user, session): at most one active, the rest in order."""

    active: str | None = None
    queue: deque[str] = field(default_factory=deque)


class UserShard:
    """Caches, run registry and per-session lanes for the users of one shard."""

    def __init__(
        self,
        settings: Settings,
        *,
        index: int,
        store: ShardStore,
        agents: Sequence[AgentPort],
        agent_names: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not agents:
            raise ValueError("a shard needs at least one agent actor")
        self.index = index
        self._settings = settings
        self._store = store
        self._agents = list(agents)
        self._agent_names = frozenset(agent_names)
        self._clock = clock
        self.contexts: TTLCache[str, UserContext] = TTLCache(
            ttl_s=settings.context_ttl_s, max_size=settings.context_cache_max, clock=clock
        )
        self._histories: OrderedDict[tuple[str, str], History] = OrderedDict()
        self.session_hits = 0
        self.session_misses = 0
        self._runs: dict[str, _Run] = {}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._presence: dict[str, dict[str, int]] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._next_agent = 0
        self._recovered: asyncio.Future[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._asking: dict[str, asyncio.Task[None]] = {}  # run id -> "has it ended?" call
        self._draining = False
        self._sockets_closing = False  # set by the last step of `raychat drain`
        self._housekeeping_s = max(0.5, min(10.0, settings.run_grace_s / 2))
        self._last_housekeeping = clock()
        self.counts = {
            "accepted": 0,
            "duplicates": 0,
            "queued": 0,
            "rejected": 0,
            "interrupted": 0,
            "resumed": 0,
            "rate_limited": 0,
            "sockets_refused": 0,
            "cancel_requests": 0,
            "lost": 0,
            "drained": 0,
        }
        self.connections = {"opened": 0, "closed": 0}
        # Ingress replicas' counters, sent with their `ensure_ready` calls (service-wide stats).
        self.replicas = ReplicaReports(live_s=max(5.0, 5 * settings.agent_check_s), clock=clock)
        self._exporter = metrics.CountExporter(clock=clock)

    # -- presence ---------------------------------------------------------
    async def connect(self, user_id: str, replica_id: str, limit: int | None = None) -> bool:
        """A socket of `user_id` opened on `replica_id`; False past the per-user limit.

        `limit` is the calling ingress's `max_sockets_per_user` (default: this shard's).
        """
        replicas = self._presence.setdefault(user_id, {})
        if sum(replicas.values()) >= (limit or self._settings.max_sockets_per_user):
            self.counts["sockets_refused"] += 1
            return False
        replicas[replica_id] = replicas.get(replica_id, 0) + 1
        self.connections["opened"] += 1
        return True

    async def disconnect(self, user_id: str, replica_id: str) -> None:
        """A socket of `user_id` closed on `replica_id`."""
        replicas = self._presence.get(user_id, {})
        left = replicas.get(replica_id, 0) - 1
        if left > 0:
            replicas[replica_id] = left
        else:
            replicas.pop(replica_id, None)
            if not replicas:
                self._presence.pop(user_id, None)
        self.connections["closed"] += 1

    def _listeners(self, user_id: str, origin: str) -> dict[str, int]:
        replicas = dict.fromkeys(self._presence.get(user_id, {}), 0)
        replicas[origin] = 0
        return replicas

    # -- context and sessions ----------------------------------------------
    async def context(self, user_id: str, refresh: bool = False) -> UserContext:
        """The user's cached context, loaded from the database on a miss or when forced."""
        cached = None if refresh else self.contexts.get(user_id)
        if cached is not None:
            return cached
        loaded = await self._store.load_context(user_id)
        self.contexts.put(user_id, loaded)
        return loaded

    async def invalidate_context(self, user_id: str) -> bool:
        """Forget the cached context of `user_id` (a tool changed it)."""
        return self.contexts.invalidate(user_id)

    async def _history(self, user_id: str, session_id: str, run_id: str) -> History:
        cached = self._cached_history(user_id, session_id)
        if cached is not None:
            return cached
        loaded = await self._store.load_conversation(
            user_id, session_id, self._settings.history_messages, exclude_run_id=run_id
        )
        self._cache_history(user_id, session_id, loaded)
        return list(loaded)

    def _cached_history(self, user_id: str, session_id: str) -> History | None:
        """A copy of the session's cached history (counting a hit), or None (a miss)."""
        key = (user_id, session_id)
        cached = self._histories.get(key)
        if cached is None:
            self.session_misses += 1
            return None
        self.session_hits += 1
        self._histories.move_to_end(key)
        return list(cached)

    def _cache_history(self, user_id: str, session_id: str, history: History) -> None:
        self._histories.setdefault((user_id, session_id), history)
        while len(self._histories) > self._settings.session_cache_max:
            self._histories.popitem(last=False)

    def _remember_turn(self, run: _Run, user_text: str, reply: str) -> None:
        history = self._histories.get((run.user_id, run.session_id))
        if history is None:
            return
        history.append({"role": "user", "content": user_text})
        if reply:
            history.append({"role": "assistant", "content": reply})
        limit = self._settings.history_messages
        del history[: max(0, len(history) - limit)]

    # -- runs ---------------------------------------------------------------
    def _owned(self, user_id: str, run_id: str) -> _Run | None:
        run = self._runs.get(run_id)
        return run if run is not None and run.user_id == user_id else None

    async def chats(self, calls: list[tuple[ChatRequest]]) -> list[Any]:
        """`chat` for each argument tuple, in one call and in order; each one's events or error."""
        return await settle_each([self.chat(*args) for args in calls])

    async def chat(self, request: ChatRequest) -> list[Event]:
        """Accept a chat: store the user message, then start or queue its run.

        Returns events for the requesting socket to send itself (duplicates and
        queued runs); the events of a run that starts at once come from its
        agent actor.
        """
        await self._ready()
        self._housekeep()
        for run_id, status, text in request.ended:  # first: even a refused chat brings them
            self._end_run(request.user_id, run_id, status, text)
        if self._draining:
            raise Unavailable("the service is shutting down; try again shortly")
        if request.agent is not None and request.agent not in self._agent_names:
            raise BadRequest(f"agent: unknown agent {request.agent[:64]!r}")
        if request.resent and await self._stored_before(request):
            self.counts["duplicates"] += 1
            accepted = accepted_event(
                request.session_id, request.client_msg_id, request.run_id, duplicate=True
            )
            return [accepted]
        self._take_token(request.user_id)
        key = (request.user_id, request.session_id)
        await self._settle_active(key)
        lane = self._lanes.setdefault(key, _Lane())
        busy = lane.active is not None
        if busy and request.on_busy == "reject":
            self.counts["rejected"] += 1
            raise Busy(f"session {request.session_id!r} has a run in progress")
        if busy and len(lane.queue) >= self._settings.max_queued_per_session:
            self.counts["rejected"] += 1
            raise Busy(f"session {request.session_id!r} has too many queued runs")
        # Reserve the run's place before the first await so concurrent chats keep their order.
        run = _Run(
            request.run_id,
            request.user_id,
            request.session_id,
            agent_index=self._next_agent % len(self._agents),
        )
        self._next_agent += 1
        self._runs[run.run_id] = run
        if busy and request.on_busy == "interrupt":
            lane.queue.appendleft(run.run_id)
        elif busy:
            lane.queue.append(run.run_id)
        else:
            lane.active = run.run_id
        if not busy:  # it starts at once: look up what it needs now, load misses with the turn
            run.context = self.contexts.get(request.user_id)
            run.history = self._cached_history(request.user_id, request.session_id)
        try:
            record = await self._begin_turn(
                request,
                context=not busy and run.context is None,
                history_limit=self._settings.history_messages
                if not busy and run.history is None
                else 0,
            )
        except BaseException:
            self._forget_reservation(lane, run)
            raise
        if record.duplicate:
            self._forget_reservation(lane, run)
            self.counts["duplicates"] += 1
            return [
                accepted_event(
                    request.session_id, request.client_msg_id, record.run_id, duplicate=True
                )
            ]
        self.counts["accepted"] += 1
        if record.context is not None:
            self.contexts.put(request.user_id, record.context)
            run.context = record.context
        if record.history is not None:
            self._cache_history(request.user_id, request.session_id, record.history)
            run.history = list(record.history)
        run.prelude.append(
            accepted_event(request.session_id, request.client_msg_id, run.run_id, duplicate=False)
        )
        run.subscribers = self._listeners(request.user_id, request.replica_id)
        spec = RunSpec(
            run_id=run.run_id,
            user_id=run.user_id,
            session_id=run.session_id,
            text=request.text,
            reply_message_id=record.reply_message_id,
            agent=request.agent or "assistant",
        )
        run.spec = spec
        if lane.active == run.run_id or run.cancel_requested:
            self._launch(run)
            return []
        if request.on_busy == "interrupt" and lane.active is not None:
            self.counts["interrupted"] += 1
            await self.cancel(request.user_id, lane.active)
        else:
            self.counts["queued"] += 1
            position = list(lane.queue).index(run.run_id) + 1
            run.prelude.append(
                {"type": RUN_QUEUED, "position": position, "run_id": run.run_id, "seq": 2}
            )
        sent = len(run.prelude)
        run.subscribers[request.replica_id] = sent
        return list(run.prelude)

    async def _stored_before(self, request: ChatRequest) -> bool:
        """Whether a chat sent again was taken by this shard or stored by its lost one."""
        if request.run_id in self._runs:
            return True
        return await self._store.run_record(request.user_id, request.run_id) is not None

    async def _begin_turn(
        self, request: ChatRequest, *, context: bool, history_limit: int
    ) -> TurnRecord:
        """Store the user message, retrying while the persistence actor restarts.

        A retry is safe: a turn is keyed by its run id, so a write that did
        commit before its answer was lost is found, not stored twice.
        """
        deadline = time.monotonic() + STORE_RETRY_S
        attempt = 0
        while True:
            try:
                return await self._store.begin_turn(
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
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("storing run %s failed; retrying", request.run_id, exc_info=True)
                await asyncio.sleep(delay)  # its persistence writer restarting
                attempt += 1

    def _take_token(self, user_id: str) -> None:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = TokenBucket(
                self._settings.rate_limit_per_s, self._settings.rate_limit_burst, self._clock
            )
            self._buckets[user_id] = bucket
        wait_s = bucket.take()
        if wait_s > 0:
            self.counts["rate_limited"] += 1
            raise RateLimited("too many messages, slow down", round(wait_s, 3))

    def _forget_reservation(self, lane: _Lane, run: _Run) -> None:
        self._runs.pop(run.run_id, None)
        if lane.active == run.run_id:
            lane.active = None
            self._advance(lane)
        elif run.run_id in lane.queue:
            lane.queue.remove(run.run_id)

    def _launch(self, run: _Run) -> None:
        if self._draining and not run.cancel_requested:
            return  # `drain` stores it as failed
        run.status = "running"
        run.task = asyncio.get_running_loop().create_task(
            self._drive(run), name=f"drive-{run.run_id}"
        )

    async def _drive(self, run: _Run) -> None:
        assert run.spec is not None
        try:
            context, history = UserContext(), []
            if not run.cancel_requested:
                context = (
                    run.context if run.context is not None else await self.context(run.user_id)
                )
                history = (
                    run.history
                    if run.history is not None
                    else await self._history(run.user_id, run.session_id, run.run_id)
                )
            spec = RunSpec(
                **{
                    **run.spec.__dict__,
                    "history": history,
                    "preferences": dict(context.preferences),
                    "todos": list(context.todos),
                    "prelude": list(run.prelude),
                    "subscribers": list(run.subscribers.items()),
                    "cancelled": run.cancel_requested,
                    "owner": self.owner_ref(),
                }
            )
            await self._start_on_some_agent(run, spec)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("run %s could not be started on any agent", run.run_id)
            outcome = await self._settle_lost(
                run.run_id, run.user_id, run.spec.reply_message_id, run.agent_index, run.prelude
            )
            await self.run_ended(run.user_id, outcome)
            return
        # From here its agent calls `run_ended`; the watchdog notices if the agent dies.
        run.on_agent = True
        self._watch_agents()

    def _watch_agents(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(
                self._check_agents(), name=f"shard-{self.index}-watchdog"
            )

    async def _check_agents(self) -> None:
        """Every `agent_check_s`, fail the runs an agent no longer holds (seen twice).

        Ends when no run is on an agent; `_drive` starts it again.
        """
        suspects: set[str] = set()
        while True:
            await asyncio.sleep(self._settings.agent_check_s)  # a periodic check
            running = [r for r in self._runs.values() if r.on_agent and r.ended_at is None]
            if not running:
                return
            by_agent: dict[int, list[str]] = {}
            for run in running:
                by_agent.setdefault(run.agent_index, []).append(run.run_id)
            known: set[str] = set()
            for index, run_ids in by_agent.items():
                try:
                    status = await self._agents[index].runs_status(run_ids)
                except Exception:
                    logger.warning("agent %d did not answer the watchdog", index, exc_info=True)
                    continue
                known.update(status)
                for run_id, outcome in status.items():
                    ended = self._runs.get(run_id)
                    if outcome is not None and ended is not None:
                        self._end_run(ended.user_id, run_id, outcome.status, outcome.text)
            missing = {run.run_id for run in running if run.run_id not in known}
            for run_id in missing & suspects:
                run = self._runs[run_id]
                if run.ended_at is None and run.spec is not None:
                    logger.error("run %s was lost with its agent actor", run_id)
                    outcome = await self._settle_lost(
                        run_id, run.user_id, run.spec.reply_message_id, run.agent_index, run.prelude
                    )
                    await self.run_ended(run.user_id, outcome)
            suspects = missing - suspects

    async def _start_on_some_agent(self, run: _Run, spec: RunSpec) -> None:
        """Start the run on its agent, or on the next one while an agent is down."""
        tries = 2 * len(self._agents)
        for attempt in range(tries):
            try:
                await self._agents[run.agent_index].start_run(spec)
                return
            except Exception:
                if attempt == tries - 1:
                    raise
                logger.warning("agent %d could not start run %s", run.agent_index, run.run_id)
                run.agent_index = (run.agent_index + 1) % len(self._agents)
                await asyncio.sleep(0.2 * (attempt + 1))  # an agent restarting: back off

    async def _settle_lost(
        self,
        run_id: str,
        user_id: str,
        reply_message_id: int,
        agent_hint: int,
        prelude: list[Event] | None = None,
        code: str = "internal",
    ) -> RunOutcome:
        """Store a lost (or drained) run as failed unless it had ended; tell its listeners."""
        self.counts["lost" if code == "internal" else "drained"] += 1
        try:
            row = await self._store.fail_if_streaming(reply_message_id, code)
        except Exception:
            logger.exception("could not mark the run %s failed", run_id)
            row = {"status": "failed", "text": "", "error_code": code}
        final = self._final_from_row(run_id, reply_message_id, row, seq=0)
        order = [(agent_hint + 1 + i) % len(self._agents) for i in range(len(self._agents))]
        for attempt in range(3):
            for index in order:
                try:
                    await self._agents[index].announce_final(
                        run_id, user_id, [*(prelude or []), final]
                    )
                    return RunOutcome(run_id, row["status"], row["text"], reply_message_id)
                except Exception:
                    logger.warning("agent %d could not announce run %s", index, run_id)
            await asyncio.sleep(0.5 * (attempt + 1))  # agents restarting: back off
        logger.error("nobody could announce the end of lost run %s", run_id)
        return RunOutcome(run_id, row["status"], row["text"], reply_message_id)

    async def _ready(self) -> None:
        """Rebuild this shard's runs from the database once, after a (re)start."""
        if self._recovered is None:
            self._recovered = asyncio.get_running_loop().create_future()
            try:
                await self._recover()
            except Exception:
                logger.exception("shard %d could not recover its runs", self.index)
            self._recovered.set_result(None)
        await self._recovered

    async def _recover(self) -> None:
        rows = [
            row
            for row in await self._store.streaming_replies()
            if shard_for(row["user_id"], self._settings.shard_count) == self.index
            and row["run_id"] not in self._runs
        ]
        if not rows:
            return
        run_ids = [row["run_id"] for row in rows]
        held: dict[str, int] = {}
        for index, agent in enumerate(self._agents):
            try:
                held.update(dict.fromkeys(await agent.holding(run_ids), index))
            except Exception:
                logger.exception("agent %d did not say which runs it holds", index)
        for row in rows:
            run_id = row["run_id"]
            if run_id in held:  # still running: track it so its end frees its session
                run = _Run(run_id, row["user_id"], row["session_id"], held[run_id], "running")
                run.on_agent = True
                self._runs[run_id] = run
                lane = self._lanes.setdefault((run.user_id, run.session_id), _Lane())
                lane.active = lane.active or run_id
            else:
                # Its client may have seen nothing of it: announce it accepted, then failed.
                accepted = accepted_event(row["session_id"], None, run_id, duplicate=False)
                await self._settle_lost(run_id, row["user_id"], row["id"], 0, [accepted])
        if held:
            self._watch_agents()
        logger.warning("shard %d recovered %d runs (%d running)", self.index, len(rows), len(held))

    async def ensure_ready(self, report: dict[str, Any] | None = None) -> bool:
        """Rebuild from the database now if this shard has (re)started.

        Ingress replicas call it periodically, so a restarted shard settles the
        runs it lost without waiting for one of its users to send something.
        False once a drain has finished: the replicas then close their sockets
        with 1001. `report`: the calling replica's counters (`ReplicaReports`).
        """
        await self._ready()
        if report is not None:
            self.replicas.put(report)
        if self._exporter.due():
            self._export_metrics()
        return not self._sockets_closing

    def _export_metrics(self) -> None:
        metrics.export_shard(
            self._exporter,
            queued=sum(len(lane.queue) for lane in self._lanes.values()),
            caches={
                "user_context": (self.contexts.hits, self.contexts.misses),
                "session": (self.session_hits, self.session_misses),
            },
            lost=self.counts["lost"],
            drained=self.counts["drained"],
        )

    def close_sockets(self) -> None:
        """The drain is done: from now on `ensure_ready` tells replicas to close sockets."""
        self._sockets_closing = True

    def owner_ref(self) -> Any:
        """What agents call back for this shard's runs (actor wiring: its index)."""
        return self

    async def run_ended(self, user_id: str, outcome: RunOutcome) -> None:
        """A run ended (an agent reports it before its final event goes out; idempotent)."""
        await self._ready()
        self._end_run(user_id, outcome.run_id, outcome.status, outcome.text)

    def _end_run(self, user_id: str, run_id: str, status: str, text: str) -> None:
        """Record how a run ended, remember the turn, and free or advance its lane.

        Ends arrive from three places: the replicas that delivered the final event
        (with the user's next chat), the agent when asked (`report_end`), and the
        watchdog. The first one counts; the others are ignored.
        """
        run = self._owned(user_id, run_id)
        if run is None or run.ended_at is not None:
            return
        run.status = status
        run.ended_at = self._clock()
        if run.spec is not None:
            self._remember_turn(run, run.spec.text, text)
        lane = self._lanes.get((run.user_id, run.session_id))
        if lane is not None and lane.active == run.run_id:
            lane.active = None
            self._advance(lane)
            if lane.active is None and not lane.queue:
                self._lanes.pop((run.user_id, run.session_id), None)

    async def _settle_active(self, key: tuple[str, str]) -> None:
        """If the lane's active run is on an agent, ask the agent whether it has ended.

        The agent answers with the outcome (the lane is freed now) or, while the run
        goes on, reports its end when it comes, so runs queued behind it start.
        Concurrent chats of the lane share one question and go on in arrival order.
        """
        lane = self._lanes.get(key)
        run = None if lane is None or lane.active is None else self._runs.get(lane.active)
        if run is None or not run.on_agent or run.ended_at is not None:
            return
        asking = self._asking.get(run.run_id)
        if asking is None:
            asking = asyncio.get_running_loop().create_task(
                self._ask_end(run), name=f"ask-end-{run.run_id}"
            )
            self._asking[run.run_id] = asking
            asking.add_done_callback(lambda _: self._asking.pop(run.run_id, None))
        await asyncio.shield(asking)

    async def _ask_end(self, run: _Run) -> None:
        # Bounded: chats sent together to this shard are answered together, so one
        # silent agent must not hold the others up; the watchdog learns the end later.
        limit_s = max(1.0, self._settings.agent_check_s)
        try:
            outcome = await asyncio.wait_for(
                self._agents[run.agent_index].report_end(run.run_id), limit_s
            )
        except Exception:
            logger.warning(
                "agent %d did not say whether run %s ended",
                run.agent_index,
                run.run_id,
                exc_info=True,
            )
            return
        if outcome is not None:
            self._end_run(run.user_id, run.run_id, outcome.status, outcome.text)

    def _advance(self, lane: _Lane) -> None:
        while lane.active is None and lane.queue:
            run = self._runs.get(lane.queue.popleft())
            if run is None:
                continue
            lane.active = run.run_id
            if run.spec is not None:  # otherwise `chat` launches it once it is stored
                self._launch(run)

    async def cancel(self, user_id: str, run_id: str) -> list[Event]:
        """Stop a run; a finished run answers with its final event; foreign runs are not found."""
        await self._ready()
        self.counts["cancel_requests"] += 1
        run = self._owned(user_id, run_id)
        if run is None:
            final = await self._final_from_store(user_id, run_id)
            if final is None:
                raise NotFound("no such run")
            return [final]
        if run.status == "queued":
            # Start it already cancelled: its agent stores it and tells every listener.
            run.cancel_requested = True
            lane = self._lanes.get((run.user_id, run.session_id))
            if lane is not None and run_id in lane.queue:
                lane.queue.remove(run_id)
            if run.spec is not None:
                self._launch(run)
            return []
        if run.status == "running":
            run.cancel_requested = True
            if await self._agents[run.agent_index].cancel(run_id) or not run.on_agent:
                return []
            await self._ask_end(run)  # it ended before the cancel reached it
        final = await self._final_event(run)
        return [] if final is None else [final]

    async def _final_event(self, run: _Run) -> Event | None:
        final = await self._agents[run.agent_index].final_event(run.run_id)
        return final if final is not None else await self._final_from_store(run.user_id, run.run_id)

    async def _final_from_store(
        self, user_id: str, run_id: str, after_seq: int = 0
    ) -> Event | None:
        row = await self._store.run_record(user_id, run_id)
        if row is None or row["status"] not in ("completed", "cancelled", "failed"):
            return None
        # A run lost with its actor has no known final seq: it follows what the client saw.
        seq = row.get("final_seq") or after_seq + 1
        return self._final_from_row(run_id, row["id"], row, seq)

    @staticmethod
    def _final_from_row(run_id: str, message_id: int, row: dict[str, Any], seq: int) -> Event:
        if row["status"] == "failed":
            code = row.get("error_code") or "internal"
            event = run_failed(code, FAILURE_MESSAGES.get(code, "the run failed"))
        else:
            kind = RUN_COMPLETED if row["status"] == "completed" else RUN_CANCELLED
            event = {"type": kind, "message_id": message_id, "text": row["text"]}
        return {**event, "run_id": run_id, "seq": seq}

    async def resume(
        self, user_id: str, run_id: str, after_seq: int, replica_id: str
    ) -> list[Event]:
        """Events of a run after `after_seq`, and the live tail to `replica_id` from then on."""
        await self._ready()
        run = self._owned(user_id, run_id)
        if run is None:
            final = await self._final_from_store(user_id, run_id, after_seq)
            if final is None:
                raise NotFound("no such run")
            self.counts["resumed"] += 1
            if final["seq"] <= after_seq:
                return []
            return await self._buffered(run_id, after_seq, final["seq"]) or [final]
        self.counts["resumed"] += 1
        if run.status == "queued":
            run.subscribers[replica_id] = max(after_seq, len(run.prelude))
            return [e for e in run.prelude if e["seq"] > after_seq]
        events = await self._agents[run.agent_index].replay_and_subscribe(
            run_id, after_seq, replica_id
        )
        if events is not None:
            return events
        final = await self._final_from_store(user_id, run_id, after_seq)
        return [final] if final is not None and final["seq"] > after_seq else []

    async def _buffered(self, run_id: str, after_seq: int, final_seq: int) -> list[Event] | None:
        """A finished run's events after `after_seq` from the agent still buffering it.

        For a run this shard does not know (it restarted after the run ended):
        the client then gets every event it missed, not only the final one.
        Only a buffer that ends at the stored final seq is the run's own.
        """
        answers = await asyncio.gather(
            *(
                asyncio.wait_for(agent.replay_and_subscribe(run_id, after_seq, ""), 5.0)
                for agent in self._agents  # one restarting is not waited for long
            ),
            return_exceptions=True,
        )
        for events in answers:
            if isinstance(events, list) and events and events[-1]["seq"] == final_seq:
                return events
        return None

    async def streaming_texts(self, user_id: str, run_ids: list[str]) -> dict[str, str]:
        """The reply text so far of the user's runs in flight."""
        by_agent: dict[int, list[str]] = {}
        for run_id in run_ids:
            run = self._owned(user_id, run_id)
            if run is not None and run.status == "running":
                by_agent.setdefault(run.agent_index, []).append(run_id)
        texts: dict[str, str] = {}
        for index, ids in by_agent.items():
            texts.update(await self._agents[index].texts(ids))
        return texts

    # -- housekeeping ---------------------------------------------------------
    def _housekeep(self) -> None:
        now = self._clock()
        if now - self._last_housekeeping >= self._housekeeping_s:
            self._last_housekeeping = now
            self._drop_finished_runs(now)
            self.contexts.cleanup()
            for user_id in [u for u, bucket in self._buckets.items() if bucket.full]:
                del self._buckets[user_id]

    def _drop_finished_runs(self, now: float) -> int:
        grace = self._settings.run_grace_s
        old = [
            run_id
            for run_id, run in self._runs.items()
            if run.ended_at is not None and now - run.ended_at >= grace
        ]
        for run_id in old:
            del self._runs[run_id]
        return len(old)

    async def cleanup(self) -> dict[str, int]:
        """Drop expired contexts and the records of runs finished long ago."""
        runs = self._drop_finished_runs(self._clock())
        return {"contexts": self.contexts.cleanup(), "runs": runs}

    async def drain(self) -> int:
        """Take no new chats; store every run still queued here as failed (`shutdown`).

        Runs already on agents are ended by the agents' own `drain`. Returns how
        many queued runs were stored as failed.
        """
        self._draining = True
        queued = [
            run
            for run in self._runs.values()
            if run.status == "queued" and run.spec is not None and run.ended_at is None
        ]
        for run in queued:
            assert run.spec is not None
            outcome = await self._settle_lost(
                run.run_id,
                run.user_id,
                run.spec.reply_message_id,
                run.agent_index,
                run.prelude,
                code="shutdown",
            )
            self._end_run(run.user_id, run.run_id, outcome.status, outcome.text)
        return len(queued)

    async def stop(self) -> None:
        """Stop the watchdog and wait for runs being started (their agents store them)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
        tasks = [run.task for run in self._runs.values() if run.task and not run.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        """This shard's users, caches, runs and connections."""
        statuses: dict[str, int] = {}
        for run in self._runs.values():
            statuses[run.status] = statuses.get(run.status, 0) + 1
        session_total = self.session_hits + self.session_misses
        return {
            "shard": self.index,
            "users": len({run.user_id for run in self._runs.values()} | set(self._presence)),
            "connected_users": len(self._presence),
            "connections": {
                "active": sum(sum(r.values()) for r in self._presence.values()),
                **self.connections,
            },
            "runs": statuses,
            "queued": sum(len(lane.queue) for lane in self._lanes.values()),
            "counts": dict(self.counts),
            "user_context_cache": self.contexts.stats(),
            "session_cache": {
                "size": len(self._histories),
                "hits": self.session_hits,
                "misses": self.session_misses,
                "hit_rate": round(self.session_hits / session_total, 4) if session_total else 0.0,
            },
            "replicas": self.replicas.live(),
        }
