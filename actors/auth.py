"""Signed user tokens (PyJWT, HS256) and the token secret.

A token names one user id (`sub`), whether it is an admin, an issuer and an
expiry. Without `RAYCHAT_SECRET` the server and `raychat token` share a secret
generated once into the data directory with file mode 0600.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from actors.errors import AuthError
from config import Settings

ALGORITHM = "HS256"
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,128}")  # use with fullmatch


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for."""

    user_id: str
    admin: bool = False


def load_secret(settings: Settings) -> str:
    """The signing secret: `RAYCHAT_SECRET`, or the generated one in the data directory."""
    if settings.secret is not None:
        return settings.secret.get_secret_value()
    path = settings.secret_file
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_secret_once(path, secrets.token_urlsafe(48))


def _write_secret_once(path: Path, candidate: str) -> str:
    """Publish `candidate` at `path` unless a secret is there; the secret that is there.

    The secret is written whole to a private temporary file in the same folder
    (mode 0600), then hard-linked into place: readers see no file or the whole
    secret, and when processes race, the first link wins and all use its secret.
    """
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(candidate)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # fails if the path exists: the first writer wins
        except FileExistsError:
            return path.read_text().strip()
        return candidate
    finally:
        os.unlink(temp)


class TokenCodec:
    """Issues and verifies tokens for one secret and issuer."""

    def __init__(self, secret: str, *, issuer: str, ttl_s: int) -> None:
        if not secret:
            raise ValueError("token secret must not be empty")
        self._secret = secret
        self._issuer = issuer
        self._ttl_s = ttl_s

    def __repr__(self) -> str:  # never show the secret
        return f"TokenCodec(issuer={self._issuer!r})"

    def issue(self, user_id: str, *, admin: bool = False, now: float | None = None) -> str:
        """A signed token for `user_id`."""
        if not USER_ID_PATTERN.fullmatch(user_id):
            raise ValueError("user id must be 1-128 characters of A-Z a-z 0-9 _ . @ -")
        issued = int(time.time() if now is None else now)
        claims = {
            "sub": user_id,
            "adm": admin,
            "iss": self._issuer,
            "iat": issued,
            "exp": issued + self._ttl_s,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str | None) -> Identity:
        """The identity of a valid token; `AuthError` (saying no more than why) otherwise."""
        if not token:
            raise AuthError("missing token")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError:
            raise AuthError("invalid token") from None
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
            raise AuthError("invalid token")
        return Identity(user_id=user_id, admin=claims.get("adm") is True)


def codec_for(settings: Settings) -> TokenCodec:
    """The token codec for these settings."""
    return TokenCodec(
        load_secret(settings), issuer=settings.token_issuer, ttl_s=settings.token_ttl_s
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, if any."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
