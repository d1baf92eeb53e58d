"""The user shard: per-user caches, the run registry and per-session lanes, composed.

Users map to shards by `sharding.shard_for`. A shard owns, for its users: the
context cache (preferences and todos, TTL), the session cache (conversation
history used as model input), the registry of runs, and one lane per chat
session that serialises its runs (`on_busy`: enqueue, reject, interrupt).
Runs execute on agent actors; a run belongs to the shard, never to a socket.
Each job is a part of its own: `Presence`, `SessionCache`, `Admission` (with
`RateLimits`), `Lanes`, `Launcher`, `Supervision` (the watchdog), `Recovery`
(with `LostRuns`), `RunQueries`, `Housekeeping`; this class wires them, turns
an admitted chat into a run and records how runs end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from actors import metrics
from actors.call_batcher import settle_each
from actors.events import RUN_QUEUED, Event, accepted_event
from actors.records import UserContext
from actors.replica_reports import ReplicaReports
from actors.runs import RunOutcome, RunSpec
from actors.shard.admission import Admission, BatchChats, OnRetry, RateLimits
from actors.shard.housekeeping import Housekeeping
from actors.shard.lanes import Lanes
from actors.shard.launch import Launcher
from actors.shard.model import AgentPort, ChatRequest, Run, ShardStore
from actors.shard.presence import REJOIN, Presence
from actors.shard.queries import RunQueries
from actors.shard.recovery import LostRuns, Recovery, Sleep
from actors.shard.sessions import SessionCache
from actors.shard.stats import export_metrics, shard_stats
from actors.shard.supervision import Supervision
from actors.ttl_cache import TTLCache
from config import Settings

COUNTS: tuple[str, ...] = ("accepted", "duplicates", "queued", "rejected", "interrupted", "resumed")
COUNTS += ("rate_limited", "sockets_refused", "cancel_requests", "lost", "drained", "unsettled")


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
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not agents:
            raise ValueError("a shard needs at least one agent actor")
        self.index = index
        self._settings = settings
        self._store = store
        self._agents = list(agents)
        self._clock = clock
        self._draining = False
        self._sockets_closing = False  # set by the last step of `raychat drain`
        self.counts = dict.fromkeys(COUNTS, 0)
        self.contexts: TTLCache[str, UserContext] = TTLCache(
            ttl_s=settings.context_ttl_s, max_size=settings.context_cache_max, clock=clock
        )
        self.sessions = SessionCache(
            settings.session_cache_max,
            settings.history_messages,
            settings.session_cache_max_bytes,
        )
        # Replicas report every `agent_check_s`; one silent for five reports is gone.
        live_s = max(5.0, 5 * settings.agent_check_s)
        self.presence = Presence(live_s=live_s, clock=clock)
        self.runs: dict[str, Run] = {}
        self.rate_limits = RateLimits(settings.rate_limit_per_s, settings.rate_limit_burst, clock)
        self._lost = lost = LostRuns(store, self._agents, self.counts, sleep)
        self.lanes = Lanes(self.runs, launch=lambda run: self.launcher.launch(run))
        self.supervision = Supervision(
            index=index,
            check_s=settings.agent_check_s,
            runs=self.runs,
            lanes=self.lanes,
            agents=self._agents,
            lost=lost,
            end_run=self._end_run,
            run_ended=self.run_ended,
            sleep=sleep,
        )
        self.launcher = Launcher(
            store=store,
            agents=self._agents,
            sessions=self.sessions,
            history_messages=settings.history_messages,
            context=self.context,
            owner=self.owner_ref,
            draining=lambda: self._draining,
            lost=lost,
            run_ended=self.run_ended,
            watch=self.supervision.watch,
            sleep=sleep,
        )
        self.recovery = Recovery(
            index=index,
            shard_count=lambda: settings.shard_count,
            store=store,
            agents=self._agents,
            runs=self.runs,
            lanes=self.lanes,
            lost=lost,
            watch=self.supervision.watch,
        )
        self.admission = Admission(
            settings=settings,
            store=store,
            agents=len(self._agents),
            agent_names=agent_names,
            rate_limits=self.rate_limits,
            runs=self.runs,
            lanes=self.lanes,
            settle_active=self.supervision.settle_active,
            contexts=self.contexts,
            sessions=self.sessions,
            counts=self.counts,
            clock=clock,
            sleep=sleep,
        )
        self.batch_chats = BatchChats(lambda request, on_retry: self.chat(request, on_retry))
        self.queries = RunQueries(
            runs=self.runs,
            lanes=self.lanes,
            agents=self._agents,
            store=store,
            launcher=self.launcher,
            supervision=self.supervision,
            counts=self.counts,
        )
        self.housekeeping = Housekeeping(
            runs=self.runs,
            contexts=self.contexts,
            rate_limits=self.rate_limits,
            grace_s=settings.run_grace_s,
            clock=clock,
            ended_max=settings.ended_runs_max,
        )
        # Ingress replicas' counters, sent with their `ensure_ready` calls (service-wide stats).
        self.replicas = ReplicaReports(live_s=live_s, clock=clock)
        self._exporter = metrics.CountExporter(clock=clock)

    # -- presence ---------------------------------------------------------
    async def connect(self, user_id: str, replica_id: str, limit: int | None = None) -> bool:
        """A socket of `user_id` opened on `replica_id`; False past the per-user limit.

        `limit` is the calling ingress's `max_sockets_per_user` (default: this shard's).
        """
        self.presence.prune()  # a dead replica's sockets do not count against the limit
        if self.presence.connect(user_id, replica_id, limit or self._settings.max_sockets_per_user):
            return True
        self.counts["sockets_refused"] += 1
        return False

    async def disconnect(self, user_id: str, replica_id: str) -> None:
        """A socket of `user_id` closed on `replica_id`."""
        self.presence.disconnect(user_id, replica_id)

    # -- context ----------------------------------------------------------
    async def context(self, user_id: str, refresh: bool = False) -> UserContext:
        """The user's cached context, loaded from the database on a miss or when forced."""
        if refresh:
            self.contexts.invalidate(user_id)  # a load begun before this one is not cached
        else:
            cached = self.contexts.get(user_id)
            if cached is not None:
                return cached
        ticket = self.contexts.ticket()
        loaded = await self._store.load_context(user_id)
        # A tool's write wins: an `invalidate_context` during the load leaves it uncached.
        self.contexts.put_if_fresh(user_id, loaded, ticket)
        return loaded

    async def invalidate_context(self, user_id: str) -> bool:
        """Forget the cached context of `user_id` (a tool changed it)."""
        return self.contexts.invalidate(user_id)

    # -- chats --------------------------------------------------------------
    async def chats(self, calls: list[tuple[ChatRequest]], defer: bool = True) -> list[Any]:
        """`chat` for each argument tuple, in one call and in order; each one's events or error.

        `defer` (the ingress's batches): a chat retrying its store is answered by
        `ChatDeferred` (its caller fetches the answer with `chat_result`), so no
        chat waits on another user's retry.
        """
        if defer:
            return await self.batch_chats.run(calls)
        return await settle_each([self.chat(*args) for args in calls])

    async def chat_result(self, run_id: str) -> list[Event]:
        """The answer of a chat a `chats` batch deferred."""
        return await self.batch_chats.result(run_id)

    async def chat(self, request: ChatRequest, on_retry: OnRetry | None = None) -> list[Event]:
        """Accept a chat: store the user message, then start or queue its run.

        Returns events for the requesting socket to send itself (duplicates and
        queued runs); the events of a run that starts at once come from its
        agent actor.
        """
        await self.recovery.ready()
        self.housekeeping.maybe()
        for run_id, status, text in request.ended:  # first: even a refused chat brings them
            self._end_run(request.user_id, run_id, status, text)
        admitted = await self.admission.admit(request, draining=self._draining, on_retry=on_retry)
        if isinstance(admitted, list):
            return admitted  # a duplicate: its run was taken before
        run, lane, record = admitted
        run.prelude.append(
            accepted_event(request.session_id, request.client_msg_id, run.run_id, duplicate=False)
        )
        run.subscribers = self.presence.listeners(request.user_id, request.replica_id)
        run.spec = RunSpec(
            run_id=run.run_id,
            user_id=run.user_id,
            session_id=run.session_id,
            text=request.text,
            reply_message_id=record.reply_message_id,
            agent=request.agent or "assistant",
        )
        if lane.active == run.run_id or run.cancel_requested:
            self.launcher.launch(run)
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

    # -- run ends -------------------------------------------------------------
    async def run_ended(self, user_id: str, outcome: RunOutcome) -> None:
        """A run ended (an agent reports it before its final event goes out; idempotent)."""
        await self.recovery.ready()
        self._end_run(user_id, outcome.run_id, outcome.status, outcome.text)

    def _end_run(self, user_id: str, run_id: str, status: str, text: str) -> None:
        """Record how a run ended, remember the turn, and free or advance its lane.

        Ends arrive from three places: the replicas that delivered the final event
        (with the user's next chat), the agent when asked (`report_end`), and the
        watchdog. The first one counts; the others are ignored.
        """
        run = self.queries.owned(user_id, run_id)
        if run is None or run.ended_at is not None:
            return
        run.status = status
        run.ended_at = self._clock()
        if run.spec is not None:
            self.sessions.remember_turn(run.user_id, run.session_id, run.spec.text, text)
        self.lanes.release(run)
        self.housekeeping.ended(run)

    # -- queries ----------------------------------------------------------------
    async def cancel(self, user_id: str, run_id: str) -> list[Event]:
        """Stop a run; a finished run answers with its final event; foreign runs are not found."""
        await self.recovery.ready()
        self.counts["cancel_requests"] += 1
        return await self.queries.cancel(user_id, run_id)

    async def resume(
        self, user_id: str, run_id: str, after_seq: int, replica_id: str
    ) -> list[Event]:
        """Events of a run after `after_seq`, and the live tail to `replica_id` from then on."""
        await self.recovery.ready()
        return await self.queries.resume(user_id, run_id, after_seq, replica_id)

    async def streaming_texts(self, user_id: str, run_ids: list[str]) -> dict[str, str]:
        """The reply text so far of the user's runs in flight."""
        return await self.queries.streaming_texts(user_id, run_ids)

    # -- service ------------------------------------------------------------------
    async def ensure_ready(self, report: dict[str, Any] | None = None) -> bool | str:
        """Rebuild from the database now if this shard has (re)started.

        Ingress replicas call it periodically, so a restarted shard settles the
        runs it lost without waiting for one of its users to send something.
        False once a drain has finished: the replicas then close their sockets
        with 1001. `report`: the calling replica's counters (`ReplicaReports`).
        `REJOIN` (ready, truthy): this shard does not know every socket of the
        reporting replica; it is to send them (`rejoin`).
        """
        await self.recovery.ready()
        if report is not None:
            self.replicas.put(report)
            self.presence.heard(report["replica_id"])
        self.presence.prune()
        if self._exporter.due():
            export_metrics(
                self._exporter,
                lanes=self.lanes,
                contexts=self.contexts,
                sessions=self.sessions,
                counts=self.counts,
            )
        if self._sockets_closing:
            return False
        if report is not None and self.presence.needs_rejoin(report["replica_id"]):
            return REJOIN
        return True

    async def rejoin(self, replica_id: str, users: dict[str, int]) -> None:
        """Every socket `replica_id` holds of this shard's users (asked for by `REJOIN`)."""
        self.presence.rejoin(replica_id, users)

    def close_sockets(self) -> None:
        """The drain is done: from now on `ensure_ready` tells replicas to close sockets."""
        self._sockets_closing = True

    def owner_ref(self) -> Any:
        """What agents call back for this shard's runs (actor wiring: its index)."""
        return self

    async def cleanup(self) -> dict[str, int]:
        """Drop expired contexts and the records of runs finished long ago."""
        return self.housekeeping.cleanup()

    async def drain(self) -> int:
        """Take no new chats; store every run still queued here as failed (`shutdown`).

        Runs already on agents are ended by the agents' own `drain`. Returns how
        many queued runs were stored as failed.
        """
        self._draining = True
        return await self._lost.drain(self.runs.values(), self._end_run)

    async def stop(self) -> None:
        """Stop the watchdog and wait for runs being started (their agents store them)."""
        await self.supervision.stop()
        await self.batch_chats.stop()
        tasks = [run.task for run in self.runs.values() if run.task and not run.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        """This shard's users, caches, runs and connections."""
        return shard_stats(
            index=self.index,
            runs=self.runs,
            presence=self.presence,
            lanes=self.lanes,
            counts=self.counts,
            contexts=self.contexts,
            sessions=self.sessions,
            replicas=self.replicas,
        ) | {
            "loops": self.supervision.stats(),
            "recovery": self.recovery.stats(),
            "ended_runs_evicted": self.housekeeping.evicted,
        }

    def healthy(self) -> bool:
        """False while a critical background loop (the watchdog) is down."""
        return self.supervision.healthy()
