"""The user shard, one job per module (`core.UserShard` composes them)."""

from actors.shard.core import UserShard
from actors.shard.model import ChatRequest

__all__ = ["ChatRequest", "UserShard"]
