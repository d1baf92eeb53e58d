"""One retry loop: a call repeated with backoff (0.1 s doubling to 2 s) while it fails.

Used wherever a call that is safe to repeat may fail for a while: a call to an
actor that is restarting (`remote.until_up`), storing a reply's end
(`reply_end`), storing a lost run's failure (`shard.recovery`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0


async def retry_with_backoff(
    call: Callable[[], Awaitable[T]],
    *,
    retry_s: float,
    what: str,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """`await call()`, repeated with backoff while it raises `retry_on`, for up to `retry_s`.

    Each failure that will be tried again is logged (`what` names the call) and
    `on_retry` is called; once the next try would pass `retry_s` (on `clock`),
    the last error is raised. Other errors pass at once.
    """
    deadline = clock() + retry_s
    delay = FIRST_DELAY_S
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except retry_on:
            if clock() + delay > deadline:
                raise
            logger.warning(
                "%s failed (attempt %d); again in %.1f s", what, attempt, delay, exc_info=True
            )
            if on_retry is not None:
                on_retry()
        await sleep(delay)  # backoff while what it needs recovers
        delay = min(MAX_DELAY_S, delay * 2)
