"""The HTTP endpoints' work: service-wide stats, cleanup, context refresh, history, readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.factory import ActorHandles
from actors.ingress.fan_in import FanIn
from actors.ingress.sockets import SocketTable
from actors.ingress.turns import Turns
from actors.replica_reports import merge_ingress
from actors.stats_report import merge_persistence, merge_stats
from actors.supervise import Supervisor
from config.serve_env import serve_ingress

READY_TIMEOUT_S = 10


class Admin:
    """Answers the admin and read endpoints from the actors and this replica's counters."""

    def __init__(
        self,
        handles: ActorHandles,
        replica_id: str,
        sockets: SocketTable,
        fan_in: FanIn,
        turns: Turns,
        loops: Supervisor | None = None,
    ) -> None:
        """`loops`: the replica's supervised loops (their restarts go in the stats)."""
        self.handles = handles
        self.loops = loops
        self.replica_id = replica_id
        self.sockets = sockets
        self.fan_in = fan_in
        self.turns = turns
        self.counters = sockets.counters
        self.report_seq = 0  # numbers this replica's reports to the shards

    async def stats(self) -> dict[str, Any]:
        """The statistics document of PROTOCOL.md, for the whole service.

        Its `ingress` section adds up this replica's counters and the latest
        ones every other live replica reported to the shards (`merge_ingress`).
        """
        shard_refs = [shard.stats.remote() for shard in self.handles.shards]
        agent_refs = [agent.stats.remote() for agent in self.handles.agents]
        shards = await asyncio.gather(*shard_refs)
        agents = await asyncio.gather(*agent_refs)
        writers = await asyncio.gather(*(w.stats.remote() for w in self.handles.writers))
        ingress = merge_ingress(self.local_stats(), [s.get("replicas", {}) for s in shards])
        return merge_stats(list(shards), list(agents), merge_persistence(list(writers)), ingress)

    def next_report(self) -> dict[str, Any]:
        """This replica's counters under the next report number (for the shard keeper)."""
        self.report_seq += 1
        return self.local_stats()

    def local_stats(self) -> dict[str, Any]:
        """This replica's own counters (its report to the shards)."""
        conns = list(self.fan_in.connections())
        loops = self.loops.stats() if self.loops is not None else {}
        chats = [caller.batchers["chat"] for caller in self.turns.shard_chats]
        return {
            "replica_id": self.replica_id,
            "seq": self.report_seq,
            # Serve's ingress in front of this replica, and the actor counts in use.
            "proxy": serve_ingress(),
            "shards": len(self.handles.shards),
            "agent_actors": len(self.handles.agents),
            "persistence_writers": len(self.handles.writers),
            "sockets": len(self.sockets),
            "users": len(self.fan_in.users),
            # Frames waiting in this replica's outbound queues (each bounded by
            # `outbound_queue_max`), and runs whose live events wait for a catch-up.
            "outbound_queued": sum(conn.queued for conn in conns),
            "outbound_queued_max": max((conn.queued for conn in conns), default=0),
            "behind_runs": sum(conn.behind for conn in conns),
            # Chats sent to shards, and the actor calls that carried them.
            "chats_sent": sum(batcher.items for batcher in chats),
            "chat_calls": sum(batcher.batches for batcher in chats),
            # Background loops: restarts after a failure (summed over replicas), and each
            # loop's state on the answering replica.
            "loop_restarts": sum(loop["restarts"] for loop in loops.values()),
            "loops": loops,
            **self.counters,
        }

    async def cleanup(self) -> dict[str, int]:
        """Drop expired cache entries and finished run buffers everywhere."""
        shard_results = await asyncio.gather(*(s.cleanup.remote() for s in self.handles.shards))
        buffers = await asyncio.gather(*(a.cleanup.remote() for a in self.handles.agents))
        return {
            "expired_contexts": sum(r["contexts"] for r in shard_results),
            "finished_runs": sum(r["runs"] for r in shard_results),
            "run_buffers": sum(buffers),
        }

    async def refresh_context(self, user_id: str) -> dict[str, Any]:
        """Reload a user's context from the database into its shard's cache."""
        context = await self.handles.shard(user_id).context.remote(user_id, True)
        return {"user_id": user_id, "preferences": context.preferences, "todos": context.todos}

    async def history(
        self, user_id: str, session_id: str, limit: int, before: int | None
    ) -> dict[str, Any]:
        """A session's messages, oldest first, with in-flight replies' text so far."""
        rows = await self.handles.store.history(user_id, session_id, limit, before)
        streaming = [r["run_id"] for r in rows if r["status"] == "streaming"]
        if streaming:
            texts = await self.handles.shard(user_id).streaming_texts.remote(user_id, streaming)
            for row in rows:
                if row["status"] == "streaming":
                    row["text"] = texts.get(row["run_id"], row["text"])
        return {"session_id": session_id, "messages": rows}

    async def ready(self) -> bool:
        """True when the database and every actor answer."""
        refs = [w.ping.remote() for w in self.handles.writers]
        refs += [a.ping.remote() for a in self.handles.agents]
        refs += [s.ping.remote() for s in self.handles.shards]
        results = await asyncio.wait_for(asyncio.gather(*refs), timeout=READY_TIMEOUT_S)
        return all(results)
