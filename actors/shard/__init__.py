"""The user shard, one job per module (`core.UserShard` composes them)."""

from actors.shard.admission import ChatDeferred
from actors.shard.core import UserShard
from actors.shard.model import ChatRequest

__all__ = ["ChatDeferred", "ChatRequest", "UserShard"]
