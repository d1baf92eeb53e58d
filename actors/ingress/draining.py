"""Going away: close every socket with 1001 when Serve stops this replica or the service drains."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from actors.ingress.sockets import SocketTable
from actors.shard.presence import REJOIN

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
        present: Callable[[int], dict[str, int]] = lambda _index: {},
    ) -> None:
        """`report()` numbers and returns this replica's counters, sent to the shards.

        `present(index)`: this replica's sockets of shard `index`'s users, for a
        shard that asks for them (`REJOIN`).
        """
        self.sockets = sockets
        self.shards = shards
        self.check_s = check_s
        self._report = report
        self._sleep = sleep
        self._present = present
        self.rejoins = 0  # socket lists sent to shards that asked for them

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
            rejoining = []
            for index, result in enumerate(results):
                if isinstance(result, BaseException):
                    logger.warning("shard %d is not ready", index, exc_info=result)
                elif result == REJOIN:  # the shard does not know this replica's sockets
                    users = self._present(index)
                    rejoining.append(self.shards[index].rejoin.remote(report["replica_id"], users))
            for outcome in await asyncio.gather(*rejoining, return_exceptions=True):
                if isinstance(outcome, BaseException):  # asked again at the next check
                    logger.warning("a shard did not take this replica's sockets", exc_info=outcome)
                else:
                    self.rejoins += 1
            if False in results and not self.sockets.going_away:
                logger.info("the service was drained: closing %d sockets", len(self.sockets))
                await self.sockets.close_all()
