"""Stable user-to-shard mapping (the same in every process, unlike the salted `hash`)."""

from __future__ import annotations

import hashlib


def shard_for(user_id: str, shards: int) -> int:
    """The shard index in `range(shards)` that owns `user_id`."""
    if shards <= 0:
        raise ValueError("shards must be positive")
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards
