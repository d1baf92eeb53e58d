"""Stable user-to-shard and user-to-writer mappings (the same in every process, unlike `hash`)."""

from __future__ import annotations

import hashlib


def shard_for(user_id: str, shards: int) -> int:
    """The shard index in `range(shards)` that owns `user_id`."""
    if shards <= 0:
        raise ValueError("shards must be positive")
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def writer_for(user_id: str, writers: int) -> int:
    """The persistence writer in `range(writers)` that owns `user_id`'s rows.

    The same hash as `shard_for`: with as many writers as shards, shard i talks
    to writer i only.
    """
    return shard_for(user_id, writers)


def writer_for_row(row_id: int, writers: int) -> int:
    """The writer that updates message row `row_id` (any writer could; this spreads them)."""
    return shard_for(str(row_id), writers)  # hashed: a turn's ids alternate in parity
