"""Runs the shard lost: settling one (stored failed, announced), and rebuilding after a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from actors.backoff import retry_with_backoff
from actors.errors import Unavailable
from actors.events import Event, accepted_event
from actors.runs import RunOutcome
from actors.shard.lanes import Lanes
from actors.shard.model import AgentPort, Run, ShardStore, final_from_row
from actors.sharding import shard_for

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
EndRun = Callable[[str, str, str, str], None]  # (user id, run id, status, text)

STORE_RETRY_S = 10.0  # longest a lost run's failure is retried (by backoff) in one pass


class LostRuns:
    """Ends runs nobody else will end: their agent died, or the service drains.

    Told equals stored (as `actors/reply_end.py` on the agent side): a run's
    failure is announced only once the store holds it.
    """

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
    ) -> RunOutcome | None:
        """Store a lost (or drained) run as failed unless it had ended; tell its listeners.

        None if its failure could not be stored: nothing is announced then. Its
        client sees no final event (the reply stays `streaming` in the store and
        in a resume) until a later pass (the watchdog's next check, the next
        recovery) stores it and tells it.
        """
        self._counts["lost" if code == "internal" else "drained"] += 1
        row = await self._fail_stored(run_id, reply_message_id, code)
        if row is None:
            self._counts["lost" if code == "internal" else "drained"] -= 1  # counted when done
            self._counts["unsettled"] += 1
            return None
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

    async def _fail_stored(
        self, run_id: str, reply_message_id: int, code: str
    ) -> dict[str, Any] | None:
        """`fail_if_streaming`, repeated with backoff while it fails (it is keyed by the
        reply's id: safe to repeat), for up to `STORE_RETRY_S`; the row, or None."""
        slept = 0.0  # the budget counts the backoff only, not the calls' own time

        async def sleep(delay: float) -> None:
            nonlocal slept
            await self._sleep(delay)
            slept += delay

        try:
            return await retry_with_backoff(
                lambda: self._store.fail_if_streaming(reply_message_id, code),
                retry_s=STORE_RETRY_S,
                what=f"storing run {run_id} as failed",
                clock=lambda: slept,
                sleep=sleep,
            )
        except Exception:
            logger.exception(
                "could not store run %s as failed; left for the next pass, nothing told", run_id
            )
            return None

    async def drain(self, runs: Iterable[Run], end_run: EndRun) -> int:
        """Store every stored run still queued as failed (`shutdown`) and end it; how many.

        A run whose failure could not be stored is left queued and untold (the
        persistence actor's restart or the next recovery fails its row).
        """
        queued = [
            run
            for run in runs
            if run.status == "queued" and run.spec is not None and run.ended_at is None
        ]
        settled = 0
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
            if outcome is not None:
                end_run(run.user_id, run.run_id, outcome.status, outcome.text)
                settled += 1
        return settled


class Recovery:
    """Rebuilds a (re)started shard's runs from the rows still `streaming` in the store.

    A run an agent still holds is tracked again (its end frees its session); any
    other is lost: stored failed (`internal`) and announced to its user. A
    recovery that fails is logged and tried again by the next `ready()`; until
    one succeeds, calls that need it are refused with `Unavailable`.
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
        self.failures = 0  # recoveries that failed (each tried again by the next `ready`)
        self.done = False

    async def ready(self) -> None:
        """Rebuild this shard's runs from the database once, after a (re)start.

        Raises `Unavailable` if the recovery failed (it is tried again next time).
        """
        recovered = self._recovered
        if recovered is None:
            recovered = self._recovered = asyncio.get_running_loop().create_future()
            try:
                await self.recover()
            except BaseException as exc:
                self._recovered = None  # the next call tries again
                if isinstance(exc, Exception):
                    self.failures += 1
                    logger.exception("shard %d could not recover its runs", self._index)
                recovered.set_exception(
                    Unavailable("this shard is recovering its runs; try again shortly")
                )
                recovered.exception()  # retrieved: the callers waiting on it get it
                if not isinstance(exc, Exception):
                    raise
            else:
                self.done = True
                recovered.set_result(None)
        await recovered

    def stats(self) -> dict[str, Any]:
        """Whether the shard has recovered, and how many recoveries failed."""
        return {"done": self.done, "failures": self.failures}

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
        unsettled: list[str] = []
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
                settled = await self._lost.settle(run_id, row["user_id"], row["id"], 0, [accepted])
                if settled is not None:
                    continue
                unsettled.append(run_id)  # not stored failed, not told: the next recovery
        if held:
            self._watch()
        if unsettled:
            raise RuntimeError(f"could not store lost runs as failed: {', '.join(unsettled)}")
        logger.warning("shard %d recovered %d runs (%d running)", self._index, len(rows), len(held))
