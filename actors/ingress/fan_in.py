"""Event fan-in: one long poll per agent actor, each batch handed to this replica's sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from actors.connection import Connection
from actors.event_hub import PollBatch

logger = logging.getLogger(__name__)

ENDS_KEPT_PER_USER = 64
POLL_BACKOFF_S = 0.05  # the first wait after a failed poll, doubled up to POLL_BACKOFF_MAX_S
POLL_BACKOFF_MAX_S = 2.0

Sleep = Callable[[float], Awaitable[None]]
Ended = tuple[tuple[str, str, str], ...]  # (run id, status, text) of runs delivered here


class FanIn:
    """The connections of each user on this replica, fed from the agent actors' polls."""

    def __init__(
        self,
        replica_id: str,
        poll_timeout_s: float,
        counters: dict[str, int],
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`counters` is the replica's shared counter dict (`batches` is counted)."""
        self.replica_id = replica_id
        self.poll_timeout_s = poll_timeout_s
        self.counters = counters
        self._sleep = sleep
        self.users: dict[str, set[Connection]] = {}
        # user id -> run id -> (status, text) of runs whose final event was delivered here
        self._ended: dict[str, dict[str, tuple[str, str]]] = {}

    # -- subscribers ------------------------------------------------------------
    def register(self, conn: Connection) -> None:
        """Deliver the events of the connection's user to it from now on."""
        self.users.setdefault(conn.user_id, set()).add(conn)

    def unregister(self, conn: Connection) -> None:
        """Stop delivering to `conn`; with the user's last one, forget the user's ends."""
        users = self.users.get(conn.user_id)
        if users is not None:
            users.discard(conn)
            if not users:
                del self.users[conn.user_id]
                self._ended.pop(conn.user_id, None)

    def take_ended(self, user_id: str) -> Ended:
        """The ends of the user's runs delivered here since the last call (for its shard)."""
        ended = self._ended.pop(user_id, {})
        return tuple((run_id, status, text) for run_id, (status, text) in ended.items())

    def connections(self) -> Iterator[Connection]:
        """Every registered connection (sockets and HTTP turns)."""
        for user_conns in self.users.values():
            yield from user_conns

    # -- polling ----------------------------------------------------------------
    async def poll_loop(self, agent: Any) -> None:
        """Poll one agent actor for this replica's events forever, backing off on failures."""
        backoff = POLL_BACKOFF_S
        while True:
            try:
                batch: PollBatch = await agent.poll.remote(self.replica_id, self.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("polling an agent actor failed; retrying in %.2fs", backoff)
                await self._sleep(backoff)  # back off while the actor restarts
                backoff = min(backoff * 2, POLL_BACKOFF_MAX_S)
                continue
            backoff = POLL_BACKOFF_S
            if batch:
                self.counters["batches"] += 1
                self.dispatch(batch)

    def dispatch(self, batch: PollBatch) -> None:
        """Hand each run's new events to every socket of its user on this replica.

        Ends of runs are kept per connected user and go to the user's shard with
        the next chat: the shard learns most ends this way, without a call of their own.
        """
        for user_id, run_id, first_seq, texts, end in batch:
            conns = self.users.get(user_id, ())
            for conn in conns:
                conn.deliver(run_id, first_seq, texts)
            if end is not None and conns:
                ended = self._ended.setdefault(user_id, {})
                ended[run_id] = end
                if len(ended) > ENDS_KEPT_PER_USER:  # the shard's watchdog learns the rest
                    del ended[next(iter(ended))]
