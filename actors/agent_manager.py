"""The agent manager's logic: agents built once, runs executed, events served in batches.

One instance per agent actor. The user's shard starts a run with `start_run`,
which returns at once; the run's events go into the `EventHub`, from which
every ingress replica long-polls the new events of all its runs in one call
per tick. How a run ended reaches its shard with those events (through the
replicas), through `report_end` and `runs_status`, or, when the manager is
built with `report_ends=True` (in-process use), through `run_ended` on its
owner. `run_turn` starts a run and waits for its outcome (direct use, tests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agents import Agent, Model, RunConfig, Runner
from agents.result import RunResultStreaming

from actors import metrics
from actors.assistant_agents import ChatContext, ToolServices, build_agents, per_run_copy
from actors.backoff import Sleep
from actors.bounded import BoundedLRU
from actors.call_batcher import settle_each
from actors.errors import Unavailable
from actors.events import MESSAGE_DELTA, RUN_STARTED
from actors.model_client import make_model
from actors.reply_end import NOT_STORED, STORE_RETRY_S, final_event_for, store_reply_end
from actors.run_delivery import RunDelivery
from actors.runs import (
    ASSISTANT,
    SHUTDOWN_MESSAGE,
    ReplyStore,
    RunOutcome,
    RunOwner,
    RunSpec,
)
from actors.sdk_events import EventTranslator
from actors.sim_model import SimulatedModel
from actors.stats import LatencyWindow
from config import Settings

logger = logging.getLogger(__name__)
OUTCOMES_KEPT = 10_000
OUTCOMES_MAX_BYTES = 64 * 1024 * 1024  # reply text held by remembered outcomes
WARM_UP_TEXT = "hello"  # no intent: a plain text reply, no tool, nothing stored
WARM_UP_USER = "raychat-warm-up"
WARM_UP_TOKENS = 4


class _NoOwner:
    """Stands in when a run has no owner (direct use of the manager, tests)."""

    async def invalidate_context(self, user_id: str) -> bool:
        return False

    async def run_ended(self, user_id: str, outcome: RunOutcome) -> None:
        return None


class AgentManager(RunDelivery):
    """Runs turns on shared agents and hands their events to ingress replicas."""

    def __init__(
        self,
        settings: Settings,
        *,
        services: ToolServices,
        store: ReplyStore,
        observer: RunOwner | None = None,
        model: Model | None = None,
        clock: Callable[[], float] = time.monotonic,
        report_ends: bool = True,
        sleep: Sleep = asyncio.sleep,
        store_retry_s: float = STORE_RETRY_S,
    ) -> None:
        self._settings = settings
        self._services = services
        self._store = store
        self._observer: RunOwner = observer or _NoOwner()
        self.model = model or make_model(settings)
        self._agents: dict[str, Agent[ChatContext]] = build_agents(self.model)
        self.instances_created = len(self._agents)
        self.lookups = 0
        self._clock = clock
        RunDelivery.__init__(self, settings, clock)
        self._sleep = sleep
        self._store_retry_s = store_retry_s
        self.store_retries = 0  # attempts to store a run's end beyond the first
        self.store_failures = 0  # runs whose end could not be stored at all
        self._tasks: dict[str, asyncio.Task[RunOutcome]] = {}
        # Recent outcomes, for `run_turn`, `report_end` and `runs_status`.
        self._outcomes: BoundedLRU[str, RunOutcome] = BoundedLRU(
            OUTCOMES_KEPT, max_bytes=OUTCOMES_MAX_BYTES, size=lambda o: len(o.text)
        )
        self._streams: dict[str, RunResultStreaming] = {}
        self._cancel_requested: set[str] = set()
        # Tell every run's owner of its end (`run_ended`), or only when asked (`report_end`):
        # actor wiring learns most ends from the replicas and the watchdog, saving a call.
        self._report_ends = report_ends
        self._report_requested: set[str] = set()
        self._draining = False
        self._shutdown: set[str] = set()  # runs stopped by `drain`
        self.counts = {"started": 0, "completed": 0, "failed": 0, "cancelled": 0}
        self.ttft_ms = LatencyWindow()
        self.processing_ms = LatencyWindow()
        self._run_config = RunConfig(tracing_disabled=True)
        self._warm_lock = asyncio.Lock()
        self._warmed = False

    def agent(self, name: str) -> Agent[ChatContext]:
        """The shared agent called `name` (KeyError if there is none)."""
        self.lookups += 1
        return self._agents[name]

    def run_agent(self, name: str) -> Agent[ChatContext]:
        """A run's own shallow copy of the shared agent `name` (`per_run_copy`)."""
        return per_run_copy(self.agent(name))

    @property
    def agent_names(self) -> list[str]:
        """Names of the agents this manager serves."""
        return list(self._agents)

    # -- runs -------------------------------------------------------------
    async def start_run(self, spec: RunSpec) -> None:
        """Open the run's buffer and start executing it (idempotent); return at once."""
        if spec.run_id in self._tasks or spec.run_id in self._outcomes:
            return
        if self._draining:
            raise Unavailable("this agent actor is draining for a shutdown")
        self.hub.open_run(spec.run_id, spec.user_id, spec.prelude)
        for replica_id, after_seq in spec.subscribers:
            self.hub.subscribe(replica_id, spec.run_id, after_seq)
        task = asyncio.get_running_loop().create_task(
            self._execute(spec), name=f"run-{spec.run_id}"
        )
        self._tasks[spec.run_id] = task
        task.add_done_callback(self._forget_task)
        metrics.runs_active(len(self._tasks))

    async def start_runs(self, calls: list[tuple[RunSpec]]) -> list[Any]:
        """`start_run` for each argument tuple, in one call; each one's None or error."""
        return await settle_each([self.start_run(*args) for args in calls])

    async def run_turn(self, spec: RunSpec) -> RunOutcome:
        """Execute one turn (started here unless `start_run` did); return its outcome.

        Returns once the reply is stored and the final event emitted.
        """
        task = self._tasks.get(spec.run_id)
        if task is None:
            done = self._outcomes.get(spec.run_id)
            if done is not None:
                return done
            await self.start_run(spec)
            task = self._tasks[spec.run_id]
        return await asyncio.shield(task)

    def owner_of(self, spec: RunSpec) -> RunOwner:
        """The owner to notify for `spec`: its `owner`, else the manager's observer."""
        return self._observer if spec.owner is None else self.wrap_owner(spec.owner)

    def wrap_owner(self, owner: Any) -> RunOwner:
        """Turn `RunSpec.owner` into a `RunOwner` (actor wiring wraps handles here)."""
        owner_port: RunOwner = owner
        return owner_port

    def _forget_task(self, task: asyncio.Task[RunOutcome]) -> None:
        run_id = task.get_name().removeprefix("run-")
        self._tasks.pop(run_id, None)
        metrics.runs_active(len(self._tasks))
        self._report_requested.discard(run_id)
        if task.cancelled():
            return
        if task.exception() is not None:
            logger.error("run task %s crashed", run_id, exc_info=task.exception())
        # A run's outcome was remembered by `_finish`, before its final event went out.

    def _remember_outcome(self, outcome: RunOutcome) -> None:
        self._outcomes.put(outcome.run_id, outcome)

    async def report_end(self, run_id: str) -> RunOutcome | None:
        """How `run_id` ended, or None while it runs; then its end is reported to its owner.

        None also when this actor does not know the run (the owner's watchdog decides).
        """
        outcome = self._outcomes.get(run_id)
        if outcome is None and run_id in self._tasks:
            self._report_requested.add(run_id)
        return outcome

    async def runs_status(self, run_ids: list[str]) -> dict[str, RunOutcome | None]:
        """For each run this actor knows: its outcome, or None while it runs."""
        status: dict[str, RunOutcome | None] = {}
        for run_id in run_ids:
            outcome = self._outcomes.get(run_id)
            if outcome is not None or run_id in self._tasks:
                status[run_id] = outcome
        return status

    async def cancel(self, run_id: str) -> bool:
        """Ask a running run to stop; False if this actor is not running it."""
        stream = self._streams.get(run_id)
        if run_id not in self._tasks:
            return False
        self._cancel_requested.add(run_id)
        if stream is not None:
            stream.cancel(mode="immediate")
        return True

    async def _execute(self, spec: RunSpec) -> RunOutcome:
        started = self._clock()
        self.counts["started"] += 1
        translator = EventTranslator(agent=spec.agent)
        status, error = "completed", None
        first_delta_at: float | None = None
        last_delta_at = 0.0
        if spec.cancelled:
            return await self._finish(spec, "cancelled", None, started, None)
        try:
            agent = self.run_agent(spec.agent)
            self.hub.emit(spec.run_id, {"type": RUN_STARTED, "agent": agent.name})
            context = ChatContext(
                spec.user_id,
                self._services,
                spec.preferences,
                spec.todos,
                context_changed=self.owner_of(spec).invalidate_context,
            )
            items: list[Any] = [*spec.history, {"role": "user", "content": spec.text}]
            stream = Runner.run_streamed(
                agent,
                items,
                context=context,
                max_turns=self._settings.max_turns,
                run_config=self._run_config,
            )
            self._streams[spec.run_id] = stream
            if spec.run_id in self._cancel_requested or spec.run_id in self._shutdown:
                stream.cancel(mode="immediate")
            async with asyncio.timeout(self._settings.run_timeout_s):
                async for sdk_event in stream.stream_events():
                    for event in translator.translate(sdk_event):
                        if event["type"] == MESSAGE_DELTA:
                            now = self._clock()
                            if first_delta_at is None:
                                first_delta_at = now
                            else:
                                metrics.delta_gap(now - last_delta_at)
                            last_delta_at = now
                        self.hub.emit(spec.run_id, event)
            if spec.run_id in self._shutdown:
                status, error = "failed", ("shutdown", SHUTDOWN_MESSAGE)
            elif spec.run_id in self._cancel_requested:
                status = "cancelled"
        except TimeoutError:
            logger.error("run %s timed out after %ss", spec.run_id, self._settings.run_timeout_s)
            status, error = "failed", ("timeout", "the agent run took too long")
        except Exception as exc:
            logger.exception("run %s failed", spec.run_id)
            status, error = "failed", ("model_error", f"the agent run failed: {type(exc).__name__}")
        finally:
            open_stream = self._streams.pop(spec.run_id, None)
            if open_stream is not None and not open_stream.is_complete:
                # Left early (an error of ours): stop the SDK run and its upstream request.
                open_stream.cancel(mode="immediate")
            self._cancel_requested.discard(spec.run_id)
            self._shutdown.discard(spec.run_id)
        return await self._finish(spec, status, error, started, first_delta_at)

    async def _finish(
        self,
        spec: RunSpec,
        status: str,
        error: tuple[str, str] | None,
        started: float,
        first_delta_at: float | None,
    ) -> RunOutcome:
        """Store the run's end (retried until stored, `store_reply_end`), then tell it."""
        buffer = self.hub.get(spec.run_id)
        text = buffer.text if buffer is not None else ""
        final_seq = (buffer.last_seq if buffer is not None else 0) + 1
        code = error[0] if error else None
        # A final event goes out only for what is stored (`actors.reply_end`).
        args = (spec.reply_message_id, text, status, final_seq, code)
        attempts = await store_reply_end(
            self._store,
            args,
            run_id=spec.run_id,
            retry_s=self._store_retry_s,
            clock=self._clock,
            sleep=self._sleep,
        )
        self.store_retries += max(0, attempts - 1)
        if not attempts:  # its row stays `streaming`: the shard's recovery settles it
            self.store_failures += 1
            status, error = "failed", NOT_STORED
        outcome = RunOutcome(spec.run_id, status, text, spec.reply_message_id)
        self._remember_outcome(outcome)  # from here `report_end` answers with it
        if self._report_ends or spec.run_id in self._report_requested:
            try:
                await self.owner_of(spec).run_ended(spec.user_id, outcome)
            except Exception:
                logger.exception("could not tell the shard that run %s ended", spec.run_id)
        final = final_event_for(status, error, spec.reply_message_id, text)
        self.hub.emit(spec.run_id, final)
        self.counts[status] += 1
        now = self._clock()
        self.processing_ms.add((now - started) * 1000)
        if first_delta_at is not None:
            self.ttft_ms.add((first_delta_at - started) * 1000)
        ttft_s = None if first_delta_at is None else first_delta_at - started
        metrics.run_ended(status, spec.agent, now - started, ttft_s, error[0] if error else None)
        return outcome

    # -- start-up ---------------------------------------------------------
    async def warm_up(self) -> bool:
        """Run the SDK once, off the record, so the first user's run costs what later ones do.

        The run goes through the assistant agent with an instant simulated model
        (whatever model is configured: no request reaches an endpoint), stores
        nothing and emits no event. Once per manager; later calls return at once.
        """
        async with self._warm_lock:
            if not self._warmed:
                model = SimulatedModel(ttft_s=0.0, tokens_per_s=1e6, reply_tokens=WARM_UP_TOKENS)
                stream = Runner.run_streamed(
                    self._agents[ASSISTANT],
                    WARM_UP_TEXT,
                    context=ChatContext(WARM_UP_USER, self._services),
                    max_turns=self._settings.max_turns,
                    run_config=RunConfig(model=model, tracing_disabled=True),
                )
                translator = EventTranslator(agent=ASSISTANT)
                async for sdk_event in stream.stream_events():
                    translator.translate(sdk_event)
                self._warmed = True
        return True

    async def holding(self, run_ids: list[str]) -> list[str]:
        """The listed runs this actor is executing now."""
        return [run_id for run_id in run_ids if run_id in self._tasks]

    async def drain(self) -> int:
        """Take no new runs; end each run in flight as `failed` (code `shutdown`).

        Returns once every such run has stored its partial reply and sent its
        final event; returns how many runs it stopped.
        """
        self._draining = True
        running = list(self._tasks)
        for run_id in running:
            self._shutdown.add(run_id)
            stream = self._streams.get(run_id)
            if stream is not None:
                stream.cancel(mode="immediate")
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        return len(running)

    async def stop(self) -> None:
        """Drain (runs in flight store their partial reply), then close the model."""
        await self.drain()
        await self.model.close()

    def stats(self) -> dict[str, Any]:
        """Counters and latency samples of this actor (merged by the ingress)."""
        return {
            "agents": self.agent_names,
            "warmed_up": self._warmed,
            "lookups": self.lookups,
            "instances_created": self.instances_created,
            "active": self.hub.active_runs,
            **self.hub.sizes(),
            "outcomes": len(self._outcomes),
            "outcome_bytes": self._outcomes.nbytes,
            "store_retries": self.store_retries,
            "store_failures": self.store_failures,
            "buffers_expired": self.buffers_expired,
            "buffers_evicted": self.hub.evicted,
            "polls": self.hub.polls,
            "events_sent": self.hub.events_sent,
            "tokens_emitted": getattr(self.model, "tokens_emitted", None),
            **self.counts,
            "ttft_samples": self.ttft_ms.samples()[-2000:],
            "processing_samples": self.processing_ms.samples()[-2000:],
        }
