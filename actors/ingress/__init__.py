"""The ingress replica's logic: sockets, frames, event fan-in and the HTTP endpoints' work.

One module per job: `sockets` (admission, close codes, 1001 closes), `sessions`
(a socket's receive loop, frames, slow readers), `fan_in` (the agent polls and
`dispatch`), `turns` (chat, cancel, resume and HTTP turns at the shard),
`draining` (drain watcher, shard keeper), `admin` (stats, cleanup, refresh,
history, readiness) and `core` (`IngressCore`, composing them).
"""

from actors.ingress.core import IngressCore
from actors.ingress.draining import STOPPING_CHECK_S
from actors.ingress.fan_in import ENDS_KEPT_PER_USER
from actors.ingress.sockets import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_LARGE,
)
from actors.ingress.turns import SHARD_RETRY_S, remote_cause

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TOO_LARGE",
    "ENDS_KEPT_PER_USER",
    "SHARD_RETRY_S",
    "STOPPING_CHECK_S",
    "IngressCore",
    "remote_cause",
]
