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

from actors.backoff import Clock, Sleep, retry_with_backoff
from actors.events import RUN_CANCELLED, RUN_COMPLETED, Event, run_failed
from actors.runs import ReplyStore

logger = logging.getLogger(__name__)

STORE_RETRY_S = 60.0  # longest a run's end is retried before it is told as failed
NOT_STORED = ("internal", "the reply could not be stored")


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
    attempts = 1

    def count() -> None:
        nonlocal attempts
        attempts += 1

    try:
        await retry_with_backoff(
            lambda: store.finish_reply(*args),
            retry_s=retry_s,
            what=f"storing the reply of run {run_id}",
            clock=clock,
            sleep=sleep,
            on_retry=count,
        )
    except Exception:
        logger.exception("gave up storing the reply of run %s after %d attempts", run_id, attempts)
        return 0
    return attempts


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
