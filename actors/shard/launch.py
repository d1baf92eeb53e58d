"""Starting a run on an agent actor, with the context and history it needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from actors.records import UserContext
from actors.runs import RunSpec
from actors.shard.model import AgentPort, History, Run, ShardStore
from actors.shard.recovery import LostRuns, Sleep
from actors.shard.sessions import SessionCache
from actors.shard.supervision import RunEnded

logger = logging.getLogger(__name__)


class Launcher:
    """Starts runs that became active (a task each, kept on the run) on their agents.

    A run no agent takes is settled as lost; a started one is watched by the watchdog.
    """

    def __init__(
        self,
        *,
        store: ShardStore,
        agents: Sequence[AgentPort],
        sessions: SessionCache,
        history_messages: int,
        context: Callable[[str], Awaitable[UserContext]],
        owner: Callable[[], Any],
        draining: Callable[[], bool],
        lost: LostRuns,
        run_ended: RunEnded,
        watch: Callable[[], None],
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._store = store
        self._agents = agents
        self._sessions = sessions
        self._history_messages = history_messages
        self._context = context
        self._owner = owner
        self._draining = draining
        self._lost = lost
        self._run_ended = run_ended
        self._watch = watch
        self._sleep = sleep

    def launch(self, run: Run) -> None:
        """Start `run` in a task of its own (not while draining, unless it is cancelled)."""
        if self._draining() and not run.cancel_requested:
            return  # `drain` stores it as failed
        run.status = "running"
        run.task = asyncio.get_running_loop().create_task(
            self._drive(run), name=f"drive-{run.run_id}"
        )
        run.task.add_done_callback(lambda task: _started(run, task))

    async def _history(self, user_id: str, session_id: str, run_id: str) -> History:
        cached = self._sessions.get(user_id, session_id)
        if cached is not None:
            return cached
        loaded = await self._store.load_conversation(
            user_id, session_id, self._history_messages, exclude_run_id=run_id
        )
        self._sessions.put(user_id, session_id, loaded)
        return list(loaded)

    async def _drive(self, run: Run) -> None:
        assert run.spec is not None
        reply_message_id = run.spec.reply_message_id  # the spec goes once the run has ended
        try:
            context, history = UserContext(), []
            if not run.cancel_requested:
                context = (
                    run.context if run.context is not None else await self._context(run.user_id)
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
                    "owner": self._owner(),
                }
            )
            run.context = run.history = None  # the agent holds them now
            await self._start_on_some_agent(run, spec)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("run %s could not be started on any agent", run.run_id)
            outcome = await self._lost.settle(
                run.run_id, run.user_id, reply_message_id, run.agent_index, run.prelude
            )
            if outcome is not None:
                await self._run_ended(run.user_id, outcome)
                return
            # Its failure is not stored, so nothing was told: leave it to the watchdog,
            # which finds no agent holding it and settles it again at its checks.
        # From here its agent calls `run_ended`; the watchdog notices if the agent dies.
        run.on_agent = True
        self._watch()

    async def _start_on_some_agent(self, run: Run, spec: RunSpec) -> None:
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
                await self._sleep(0.2 * (attempt + 1))  # an agent restarting: back off


def _started(run: Run, task: asyncio.Task[None]) -> None:
    """Log how a run's starting task failed; an ended run's record lets go of it.

    The record owns the task while it runs (the shard's `stop` cancels it);
    `Housekeeping.ended` lets go of a task already done when the run ends.
    """
    if not task.cancelled() and task.exception() is not None:
        logger.error("starting run %s failed", run.run_id, exc_info=task.exception())
    if run.ended_at is not None and run.task is task:
        run.task = None
