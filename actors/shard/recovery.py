"""Runs the shard lost: settling one (stored failed, announced), and rebuilding after a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from actors.events import Event, accepted_event
from actors.runs import RunOutcome
from actors.shard.lanes import Lanes
from actors.shard.model import AgentPort, Run, ShardStore, final_from_row
from actors.sharding import shard_for

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
EndRun = Callable[[str, str, str, str], None]  # (user id, run id, status, text)


class LostRuns:
    """Ends runs nobody else will end: their agent died, or the service drains."""

    def __init__(
        self,
        store: ShardStore,
        agents: Sequence[AgentPort],
        counts: dict[str, int],
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._store = store
        self._agents = agents
        self._counts = counts
        self._sleep = sleep

    async def settle(
        self,
        run_id: str,
        user_id: str,
        reply_message_id: int,
        agent_hint: int,
        prelude: list[Event] | None = None,
        code: str = "internal",
    ) -> RunOutcome:
        """Store a lost (or drained) run as failed unless it had ended; tell its listeners."""
        self._counts["lost" if code == "internal" else "drained"] += 1
        try:
            row = await self._store.fail_if_streaming(reply_message_id, code)
        except Exception:
            logger.exception("could not mark the run %s failed", run_id)
            row = {"status": "failed", "text": "", "error_code": code}
        final = final_from_row(run_id, reply_message_id, row, seq=0)
        agents = len(self._agents)
        order = [(agent_hint + 1 + i) % agents for i in range(agents)]
        for attempt in range(3):
            for index in order:
                try:
                    await self._agents[index].announce_final(
                        run_id, user_id, [*(prelude or []), final]
                    )
                    return RunOutcome(run_id, row["status"], row["text"], reply_message_id)
                except Exception:
                    logger.warning("agent %d could not announce run %s", index, run_id)
            await self._sleep(0.5 * (attempt + 1))  # agents restarting: back off
        logger.error("nobody could announce the end of lost run %s", run_id)
        return RunOutcome(run_id, row["status"], row["text"], reply_message_id)

    async def drain(self, runs: Iterable[Run], end_run: EndRun) -> int:
        """Store every stored run still queued as failed (`shutdown`) and end it; how many."""
        queued = [
            run
            for run in runs
            if run.status == "queued" and run.spec is not None and run.ended_at is None
        ]
        for run in queued:
            assert run.spec is not None
            outcome = await self.settle(
                run.run_id,
                run.user_id,
                run.spec.reply_message_id,
                run.agent_index,
                run.prelude,
                code="shutdown",
            )
            end_run(run.user_id, run.run_id, outcome.status, outcome.text)
        return len(queued)


class Recovery:
    """Rebuilds a (re)started shard's runs from the rows still `streaming` in the store.

    A run an agent still holds is tracked again (its end frees its session); any
    other is lost: stored failed (`internal`) and announced to its user.
    """

    def __init__(
        self,
        *,
        index: int,
        shard_count: Callable[[], int],
        store: ShardStore,
        agents: Sequence[AgentPort],
        runs: dict[str, Run],
        lanes: Lanes,
        lost: LostRuns,
        watch: Callable[[], None],
    ) -> None:
        self._index = index
        self._shard_count = shard_count
        self._store = store
        self._agents = agents
        self._runs = runs
        self._lanes = lanes
        self._lost = lost
        self._watch = watch
        self._recovered: asyncio.Future[None] | None = None

    async def ready(self) -> None:
        """Rebuild this shard's runs from the database once, after a (re)start."""
        if self._recovered is None:
            self._recovered = asyncio.get_running_loop().create_future()
            try:
                await self.recover()
            except Exception:
                logger.exception("shard %d could not recover its runs", self._index)
            self._recovered.set_result(None)
        await self._recovered

    async def recover(self) -> None:
        """Track the stored `streaming` runs of this shard that agents hold; settle the rest."""
        rows = [
            row
            for row in await self._store.streaming_replies()
            if shard_for(row["user_id"], self._shard_count()) == self._index
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
                run = Run(run_id, row["user_id"], row["session_id"], held[run_id], "running")
                run.on_agent = True
                self._runs[run_id] = run
                self._lanes.hold(run)
            else:
                # Its client may have seen nothing of it: announce it accepted, then failed.
                accepted = accepted_event(row["session_id"], None, run_id, duplicate=False)
                await self._lost.settle(run_id, row["user_id"], row["id"], 0, [accepted])
        if held:
            self._watch()
        logger.warning("shard %d recovered %d runs (%d running)", self._index, len(rows), len(held))
