"""Knowing when runs on agents end: asking an agent, and the watchdog for agents that died."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from actors.runs import RunOutcome
from actors.shard.lanes import Lanes
from actors.shard.model import AgentPort, LaneKey, Run
from actors.shard.recovery import EndRun, LostRuns, Sleep
from actors.supervise import Supervisor

logger = logging.getLogger(__name__)

WATCHDOG = "watchdog"

RunEnded = Callable[[str, RunOutcome], Awaitable[None]]


class Supervision:
    """Learns the end of the shard's runs on agents, and fails those lost with their agent.

    The watchdog runs while some run is on an agent: every `check_s` it asks the
    agents about their runs, ends those that ended, and settles as lost a run its
    agent no longer holds at two checks in a row.
    """

    def __init__(
        self,
        *,
        index: int,
        check_s: float,
        runs: dict[str, Run],
        lanes: Lanes,
        agents: Sequence[AgentPort],
        lost: LostRuns,
        end_run: EndRun,
        run_ended: RunEnded,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._index = index
        self._check_s = check_s
        self._runs = runs
        self._lanes = lanes
        self._agents = agents
        self._lost = lost
        self._end_run = end_run
        self._run_ended = run_ended
        self._sleep = sleep
        self.supervisor = Supervisor(f"shard-{index}", sleep=sleep)
        self._watchdog: asyncio.Task[None] | None = None  # the supervisor's task of the watchdog
        self._asking: dict[str, asyncio.Task[None]] = {}  # run id -> "has it ended?" call

    def watch(self) -> None:
        """Start the watchdog unless it runs (it stops when no run is on an agent)."""
        state = self.supervisor.loops.get(WATCHDOG)
        if state is not None and not state.finished:
            return  # running, or failed and about to be restarted by its supervisor
        self.supervisor.loops.pop(WATCHDOG, None)  # it ended (nothing to watch): afresh
        self.supervisor.start(WATCHDOG, self._check_agents, critical=True, ends=True)
        self._watchdog = self.supervisor.loops[WATCHDOG].task

    def healthy(self) -> bool:
        """False while the watchdog is down (failed, not yet restarted)."""
        return self.supervisor.healthy()

    def stats(self) -> dict[str, Any]:
        """The watchdog's state and restarts (absent before the first run on an agent)."""
        return self.supervisor.stats()

    async def settle_active(self, key: LaneKey) -> None:
        """If the lane's active run is on an agent, ask the agent whether it has ended.

        The agent answers with the outcome (the lane is freed now) or, while the run
        goes on, reports its end when it comes, so runs queued behind it start.
        Concurrent chats of the lane share one question and go on in arrival order.
        """
        run = self._lanes.active_run(key)
        if run is None or not run.on_agent or run.ended_at is not None:
            return
        asking = self._asking.get(run.run_id)
        if asking is None:
            asking = asyncio.get_running_loop().create_task(
                self.ask_end(run), name=f"ask-end-{run.run_id}"
            )
            self._asking[run.run_id] = asking
            asking.add_done_callback(lambda task: self._asked(run.run_id, task))
        await asyncio.shield(asking)

    def _asked(self, run_id: str, task: asyncio.Task[None]) -> None:
        """A "has it ended?" call is done: forget it, and log how it failed (if it did)."""
        self._asking.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("asking whether run %s ended failed", run_id, exc_info=task.exception())

    async def ask_end(self, run: Run) -> None:
        """Ask the run's agent whether it ended; end it here if so."""
        # Bounded: chats sent together to this shard are answered together, so one
        # silent agent must not hold the others up; the watchdog learns the end later.
        limit_s = max(1.0, self._check_s)
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

    async def _check_agents(self) -> None:
        """Every `check_s`, fail the runs an agent no longer holds (seen twice).

        Ends when no run is on an agent; `watch` starts it again.
        """
        suspects: set[str] = set()
        while True:
            await self._sleep(self._check_s)  # a periodic check
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
                    outcome = await self._lost.settle(
                        run_id, run.user_id, run.spec.reply_message_id, run.agent_index, run.prelude
                    )
                    if outcome is None:
                        # Its failure is not stored: nothing was told; it stays a suspect,
                        # so the next check stores and tells it again.
                        missing.add(run_id)
                        suspects.discard(run_id)
                        continue
                    await self._run_ended(run.user_id, outcome)
            suspects = missing - suspects

    async def stop(self) -> None:
        """Stop the watchdog; wait for the "has it ended?" calls under way."""
        await self.supervisor.stop()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
