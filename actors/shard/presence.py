"""Which ingress replicas hold sockets of which users, and the per-user socket limit.

Bounded by replica liveness: a replica is heard from when it reports (every
`agent_check_s`, with `ensure_ready`) or opens or closes a socket; the sockets
of a replica not heard from within `live_s` are forgotten (`prune`), so the
users of a replica that died do not stay at their socket limit.

A shard knows a replica's sockets in full only once the replica has told it
all of them (`rejoin`): a new replica, a replica forgotten while it was alive
but silent (its event loop stalled), and every replica after the shard itself
restarted are asked to (`needs_rejoin`), so a user's runs reach every replica
holding one of the user's sockets again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

REJOIN = "rejoin"  # `ensure_ready`'s answer to a replica whose sockets the shard does not know


class Presence:
    """Open sockets per user and replica; a run's events go to every replica of its user."""

    def __init__(self, live_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._live_s = live_s
        self._clock = clock
        self._sockets: dict[str, dict[str, int]] = {}  # user id -> replica id -> sockets
        self._users_of: dict[str, set[str]] = {}  # replica id -> users with sockets there
        self._heard: dict[str, float] = {}  # replica id -> when it was last heard from
        self._joined: set[str] = set()  # replicas that told every socket they hold
        self.opened = 0
        self.closed = 0
        self.dropped = 0  # sockets forgotten with a replica that went silent
        self.rejoined = 0  # replicas that told their sockets again (or for the first time)

    def heard(self, replica_id: str) -> None:
        """`replica_id` is alive (it reported, or opened or closed a socket)."""
        self._heard[replica_id] = self._clock()

    def needs_rejoin(self, replica_id: str) -> bool:
        """True until `replica_id` has told this shard every socket it holds (`rejoin`)."""
        return replica_id not in self._joined

    def rejoin(self, replica_id: str, users: dict[str, int]) -> None:
        """`replica_id` holds exactly `users` (user id -> sockets): replace what was counted.

        Not checked against the per-user limit: the sockets are open already.
        """
        self.heard(replica_id)
        for user_id in self._users_of.get(replica_id, set()).copy():
            self._drop(user_id, replica_id)
        for user_id, count in users.items():
            if count > 0:
                self._sockets.setdefault(user_id, {})[replica_id] = count
                self._users_of.setdefault(replica_id, set()).add(user_id)
        self._joined.add(replica_id)
        self.rejoined += 1

    def connect(self, user_id: str, replica_id: str, limit: int) -> bool:
        """Count a socket of `user_id` opened on `replica_id`; False (not counted) at `limit`."""
        self.heard(replica_id)
        replicas = self._sockets.get(user_id, {})
        if sum(replicas.values()) >= limit:
            return False
        self._sockets[user_id] = replicas
        replicas[replica_id] = replicas.get(replica_id, 0) + 1
        self._users_of.setdefault(replica_id, set()).add(user_id)
        self.opened += 1
        return True

    def disconnect(self, user_id: str, replica_id: str) -> None:
        """A socket of `user_id` closed on `replica_id`."""
        self.heard(replica_id)
        replicas = self._sockets.get(user_id, {})
        left = replicas.get(replica_id, 0) - 1
        if left > 0:
            replicas[replica_id] = left
        else:
            self._drop(user_id, replica_id)
        self.closed += 1

    def prune(self) -> int:
        """Forget the sockets of every replica not heard from within `live_s`; how many."""
        now = self._clock()
        silent = [r for r, at in self._heard.items() if now - at >= self._live_s]
        dropped = 0
        for replica_id in silent:
            del self._heard[replica_id]
            self._joined.discard(replica_id)
            for user_id in self._users_of.get(replica_id, set()).copy():
                dropped += self._sockets.get(user_id, {}).get(replica_id, 0)
                self._drop(user_id, replica_id)
        self.dropped += dropped
        return dropped

    def _drop(self, user_id: str, replica_id: str) -> None:
        replicas = self._sockets.get(user_id, {})
        replicas.pop(replica_id, None)
        if not replicas:
            self._sockets.pop(user_id, None)
        users = self._users_of.get(replica_id)
        if users is not None:
            users.discard(user_id)
            if not users:
                del self._users_of[replica_id]

    def listeners(self, user_id: str, origin: str) -> dict[str, int]:
        """The replicas to send a new run's events to (each from seq 0), `origin` included."""
        replicas = dict.fromkeys(self._sockets.get(user_id, {}), 0)
        replicas[origin] = 0
        return replicas

    def users(self) -> set[str]:
        """The users with at least one socket."""
        return set(self._sockets)

    def sockets(self) -> int:
        """Open sockets over all users and replicas."""
        return sum(sum(r.values()) for r in self._sockets.values())

    def stats(self) -> dict[str, int]:
        """Sizes: users with sockets, replicas heard from and holding sockets, sockets dropped."""
        return {
            "users": len(self._sockets),
            "replicas": len(self._heard),
            "replicas_with_sockets": len(self._users_of),
            "dropped_sockets": self.dropped,
            "rejoined": self.rejoined,
        }
