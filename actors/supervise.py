"""Supervised background tasks: restarted with backoff when they fail, never lost silently.

Every long-lived loop of a replica or actor (event polls, the shard keeper,
the drain watcher, a writer task, a watchdog) runs under a `Supervisor`,
which owns it: an exception is logged with its traceback, counted, and the
loop is started again after a backoff; `healthy()` is False while a critical
loop is down (between its failure and its restart, or if it ended when it
should not have), so readiness and Serve's health check can say so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

BACKOFF_S = 0.05
BACKOFF_MAX_S = 5.0

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass
class LoopState:
    """What the supervisor knows of one loop."""

    name: str
    critical: bool
    ends: bool  # True: returning normally is its job (a watcher); False: it must run forever
    restarts: int = 0
    up: bool = False
    finished: bool = False
    last_error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def down(self) -> bool:
        """Not running and not properly finished."""
        return not self.up and not self.finished

    def report(self) -> dict[str, Any]:
        """The loop's line in stats."""
        return {
            "up": self.up,
            "finished": self.finished,
            "restarts": self.restarts,
            "critical": self.critical,
            "last_error": self.last_error,
        }


class Supervisor:
    """Owns a set of named loops: starts, restarts with backoff, reports, stops them."""

    def __init__(
        self,
        owner: str,
        *,
        backoff_s: float = BACKOFF_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        """`owner` names the replica or actor in log lines."""
        self.owner = owner
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._clock = clock
        self.loops: dict[str, LoopState] = {}

    def start(
        self,
        name: str,
        loop: Callable[[], Awaitable[None]],
        *,
        critical: bool = True,
        ends: bool = False,
    ) -> None:
        """Run `loop()` as a supervised task; `ends`: it may return normally (then it is done)."""
        if name in self.loops:
            raise ValueError(f"a loop named {name!r} is already supervised")
        state = LoopState(name=name, critical=critical, ends=ends, up=True)  # up once started
        self.loops[name] = state
        state.task = asyncio.get_running_loop().create_task(
            self._run(state, loop), name=f"{self.owner}:{name}"
        )

    async def _run(self, state: LoopState, loop: Callable[[], Awaitable[None]]) -> None:
        delay = self._backoff_s
        while True:
            state.up = True
            began = self._clock()
            try:
                await loop()
            except asyncio.CancelledError:
                state.up = False
                raise
            except Exception as exc:
                state.up = False
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception(
                    "%s: loop %s failed (restart %d in %.2f s)",
                    self.owner,
                    state.name,
                    state.restarts,
                    delay,
                )
            else:
                state.up = False
                if state.ends:
                    state.finished = True
                    return
                state.restarts += 1
                state.last_error = "returned"
                logger.error("%s: loop %s returned; restarting it", self.owner, state.name)
            if self._clock() - began > self._backoff_max_s:
                delay = self._backoff_s  # it ran well for a while: start the backoff afresh
            await self._sleep(delay)  # backoff before the restart
            delay = min(delay * 2, self._backoff_max_s)

    def healthy(self) -> bool:
        """False while a critical loop is down."""
        return not any(state.critical and state.down for state in self.loops.values())

    def check(self) -> None:
        """Raise (for a health check) while a critical loop is down, naming it."""
        down = [s for s in self.loops.values() if s.critical and s.down]
        if down:
            names = ", ".join(f"{s.name} ({s.last_error})" for s in down)
            raise RuntimeError(f"{self.owner}: critical loops down: {names}")

    def stats(self) -> dict[str, Any]:
        """Each loop's state and restart count."""
        return {name: state.report() for name, state in self.loops.items()}

    async def stop(self) -> None:
        """Cancel every loop and wait until each has ended."""
        tasks = [s.task for s in self.loops.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loops.clear()
