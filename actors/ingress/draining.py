"""Going away: close every socket with 1001 when Serve stops this replica or the service drains."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from actors.ingress.sockets import SocketTable

logger = logging.getLogger(__name__)

STOPPING_CHECK_S = 0.2

Sleep = Callable[[float], Awaitable[None]]


class Draining:
    """The drain watcher and the shard keeper of one replica (each run as a task by its owner)."""

    def __init__(
        self,
        sockets: SocketTable,
        shards: Sequence[Any],
        check_s: float,
        report: Callable[[], dict[str, Any]],
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`report()` numbers and returns this replica's counters, sent to the shards."""
        self.sockets = sockets
        self.shards = shards
        self.check_s = check_s
        self._report = report
        self._sleep = sleep

    async def close_when_stopping(self, stopping: Callable[[], bool | None]) -> None:
        """Once the replica is being stopped, close every socket with 1001 at once.

        Serve waits for open sockets before it stops a replica; closing them
        lets clients reconnect to another replica and `resume` right away.
        """
        while True:
            if stopping():
                break
            await self._sleep(STOPPING_CHECK_S)  # Serve sets a flag; there is no event
        logger.info("this replica is stopping: closing %d sockets with 1001", len(self.sockets))
        await self.sockets.close_all()

    async def keep_shards_ready(self) -> None:
        """Every `check_s`, make each shard rebuild itself if it has restarted.

        A shard that answers False has been drained for a full stop: close every socket.
        """
        while True:
            await self._sleep(self.check_s)  # a periodic check
            report = self._report()  # this replica's counters, for service-wide stats
            results = await asyncio.gather(
                *(shard.ensure_ready.remote(report) for shard in self.shards),
                return_exceptions=True,
            )
            for index, result in enumerate(results):
                if isinstance(result, BaseException):
                    logger.warning("shard %d is not ready", index, exc_info=result)
            if False in results and not self.sockets.going_away:
                logger.info("the service was drained: closing %d sockets", len(self.sockets))
                await self.sockets.close_all()
