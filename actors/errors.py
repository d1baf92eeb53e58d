"""One root exception for raychat, subclassed by cause.

Constructor arguments go to `super().__init__` so every error pickles across
actor boundaries unchanged. `code` is the PROTOCOL.md error code.
"""

from __future__ import annotations


class RaychatError(Exception):
    """Root of every error raychat raises on purpose."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RaychatError):
    """The frame is well-formed JSON but not a valid message."""

    code = "bad_request"


class BadJson(RaychatError):
    """The frame is not JSON (or not a JSON object)."""

    code = "bad_json"


class UnknownType(RaychatError):
    """The frame's `type` is not one the protocol defines."""

    code = "unknown_type"


class TooLarge(RaychatError):
    """The frame or a field in it is over its limit."""

    code = "too_large"


class NotFound(RaychatError):
    """The run or resource does not exist for this user (never says whether it exists)."""

    code = "not_found"


class Busy(RaychatError):
    """The session has an active run and the client asked `on_busy: reject`."""

    code = "busy"


class Unavailable(RaychatError):
    """The service is draining for a shutdown and takes no new runs."""

    code = "unavailable"


class RateLimited(RaychatError):
    """Too many messages; `retry_after` says when the next one will be accepted."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        Exception.__init__(self, message, retry_after)
        self.message = message
        self.retry_after = retry_after


class AuthError(RaychatError):
    """The token is missing, invalid or expired."""

    code = "unauthenticated"


class ConfigurationError(RaychatError):
    """The settings cannot work with the cluster as it runs; the service refuses to start."""

    code = "internal"


class NotReady(RaychatError):
    """The actors did not all answer (and warm up) within the start timeout."""

    code = "unavailable"
