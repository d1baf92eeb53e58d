"""A user's questions about a run: cancel it, resume its events, its text so far."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from actors.errors import NotFound
from actors.events import Event
from actors.shard.lanes import Lanes
from actors.shard.launch import Launcher
from actors.shard.model import AgentPort, Run, ShardStore, final_from_row
from actors.shard.supervision import Supervision


class RunQueries:
    """Answers about runs from the registry, the agents, or (for runs it forgot) the store."""

    def __init__(
        self,
        *,
        runs: dict[str, Run],
        lanes: Lanes,
        agents: Sequence[AgentPort],
        store: ShardStore,
        launcher: Launcher,
        supervision: Supervision,
        counts: dict[str, int],
    ) -> None:
        self._runs = runs
        self._lanes = lanes
        self._agents = agents
        self._store = store
        self._launcher = launcher
        self._supervision = supervision
        self._counts = counts

    def owned(self, user_id: str, run_id: str) -> Run | None:
        """The run `run_id` if this shard knows it and it is `user_id`'s."""
        run = self._runs.get(run_id)
        return run if run is not None and run.user_id == user_id else None

    async def cancel(self, user_id: str, run_id: str) -> list[Event]:
        """Stop a run; a finished run answers with its final event; foreign runs are not found."""
        run = self.owned(user_id, run_id)
        if run is None:
            final = await self.final_from_store(user_id, run_id)
            if final is None:
                raise NotFound("no such run")
            return [final]
        if run.status == "queued":
            # Start it already cancelled: its agent stores it and tells every listener.
            run.cancel_requested = True
            self._lanes.unqueue(run)
            if run.spec is not None:
                self._launcher.launch(run)
            return []
        if run.status == "running":
            run.cancel_requested = True
            if await self._agents[run.agent_index].cancel(run_id) or not run.on_agent:
                return []
            await self._supervision.ask_end(run)  # it ended before the cancel reached it
        final = await self._final_event(run)
        return [] if final is None else [final]

    async def _final_event(self, run: Run) -> Event | None:
        final = await self._agents[run.agent_index].final_event(run.run_id)
        return final if final is not None else await self.final_from_store(run.user_id, run.run_id)

    async def final_from_store(self, user_id: str, run_id: str, after_seq: int = 0) -> Event | None:
        """The final event of a finished run as stored; None if unknown or not finished."""
        row = await self._store.run_record(user_id, run_id)
        if row is None or row["status"] not in ("completed", "cancelled", "failed"):
            return None
        # A run lost with its actor has no known final seq: it follows what the client saw.
        seq = row.get("final_seq") or after_seq + 1
        return final_from_row(run_id, row["id"], row, seq)

    async def resume(
        self, user_id: str, run_id: str, after_seq: int, replica_id: str
    ) -> list[Event]:
        """Events of a run after `after_seq`, and the live tail to `replica_id` from then on."""
        run = self.owned(user_id, run_id)
        if run is None:
            final = await self.final_from_store(user_id, run_id, after_seq)
            if final is None:
                raise NotFound("no such run")
            self._counts["resumed"] += 1
            if final["seq"] <= after_seq:
                return []
            return await self._buffered(run_id, after_seq, final["seq"]) or [final]
        self._counts["resumed"] += 1
        if run.status == "queued":
            run.subscribers[replica_id] = max(after_seq, len(run.prelude))
            return [e for e in run.prelude if e["seq"] > after_seq]
        events = await self._agents[run.agent_index].replay_and_subscribe(
            run_id, after_seq, replica_id
        )
        if events is not None:
            return events
        final = await self.final_from_store(user_id, run_id, after_seq)
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
            run = self.owned(user_id, run_id)
            if run is not None and run.status == "running":
                by_agent.setdefault(run.agent_index, []).append(run_id)
        texts: dict[str, str] = {}
        for index, ids in by_agent.items():
            texts.update(await self._agents[index].texts(ids))
        return texts
