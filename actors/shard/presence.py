"""Which ingress replicas hold sockets of which users, and the per-user socket limit."""

from __future__ import annotations


class Presence:
    """Open sockets per user and replica; a run's events go to every replica of its user."""

    def __init__(self) -> None:
        self._sockets: dict[str, dict[str, int]] = {}  # user id -> replica id -> sockets
        self.opened = 0
        self.closed = 0

    def connect(self, user_id: str, replica_id: str, limit: int) -> bool:
        """Count a socket of `user_id` opened on `replica_id`; False (not counted) at `limit`."""
        replicas = self._sockets.setdefault(user_id, {})
        if sum(replicas.values()) >= limit:
            return False
        replicas[replica_id] = replicas.get(replica_id, 0) + 1
        self.opened += 1
        return True

    def disconnect(self, user_id: str, replica_id: str) -> None:
        """A socket of `user_id` closed on `replica_id`."""
        replicas = self._sockets.get(user_id, {})
        left = replicas.get(replica_id, 0) - 1
        if left > 0:
            replicas[replica_id] = left
        else:
            replicas.pop(replica_id, None)
            if not replicas:
                self._sockets.pop(user_id, None)
        self.closed += 1

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
