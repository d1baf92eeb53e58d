"""Whether Serve has begun to stop the ingress replica this code runs in.

Serve drains a stopping replica by waiting for its ongoing requests to end, and
an open WebSocket never ends on its own: the deployment's destructor would run
only when the graceful-shutdown budget is spent, as the controller's kill falls
due, too late for a 1001 close frame to reach the client. Serve has no public
"draining began" hook, so this reads the flag the replica sets on itself. If
Ray's internals move, it answers None ("cannot tell") and the ingress logs a
warning and falls back to closing sockets from the destructor.
"""

from __future__ import annotations

from typing import Any


def _replica() -> Any:
    """The Serve replica object of this process, or None outside one."""
    import ray

    worker = ray._private.worker.global_worker
    actor = getattr(worker, "actors", {}).get(getattr(worker, "actor_id", None))
    return getattr(actor, "_replica_impl", None)


def serve_replica_stopping() -> bool | None:
    """True once Serve is stopping this replica; None when that cannot be read here."""
    try:
        flag = getattr(_replica(), "_shutting_down", None)
    except Exception:
        return None
    return flag if isinstance(flag, bool) else None
