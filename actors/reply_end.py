"""A run's end: stored first (retried until it is), then told with what was stored.

A final event goes out only for what the database holds. Storing a reply's end
is keyed by its message id (it sets the same values again), so it is repeated
with backoff while it fails, for up to `retry_s`. If it still fails, the run is
told as `failed` (code `internal`, "the reply could not be stored") and its row
stays `streaming`: no agent holds the run any more, so the next recovery of its
shard (`UserShard._recover`, on the shard's (re)start) stores it as `failed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from actors.events import RUN_CANCELLED, RUN_COMPLETED, Event, run_failed
from actors.runs import ReplyStore

logger = logging.getLogger(__name__)

STORE_RETRY_S = 60.0  # longest a run's end is retried before it is told as failed
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
NOT_STORED = ("internal", "the reply could not be stored")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


async def store_reply_end(
    store: ReplyStore,
    args: tuple[int, str, str, int | None, str | None],
    *,
    run_id: str,
    retry_s: float = STORE_RETRY_S,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
) -> int:
    """`store.finish_reply(*args)`, repeated with backoff while it fails, up to `retry_s`.

    Returns how many attempts it took, or 0 if the end could not be stored.
    """
    deadline = clock() + retry_s
    delay = FIRST_DELAY_S
    attempt = 0
    while True:
        attempt += 1
        try:
            await store.finish_reply(*args)
            return attempt
        except Exception:
            if clock() + delay > deadline:
                logger.exception(
                    "gave up storing the reply of run %s after %d attempts", run_id, attempt
                )
                return 0
            logger.warning(
                "could not store the reply of run %s (attempt %d); again in %.1f s",
                run_id,
                attempt,
                delay,
                exc_info=True,
            )
        await sleep(delay)  # backoff while the store recovers
        delay = min(MAX_DELAY_S, delay * 2)


def final_event_for(
    status: str, error: tuple[str, str] | None, reply_message_id: int, text: str
) -> Event:
    """The final event of a run that ended with `status` (its end already stored)."""
    if status == "completed":
        return {"type": RUN_COMPLETED, "message_id": reply_message_id, "text": text}
    if status == "cancelled":
        return {"type": RUN_CANCELLED, "message_id": reply_message_id, "text": text}
    code, message = error or ("internal", "the run failed")
    return run_failed(code, message)
