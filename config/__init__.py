"""Typed settings for raychat, read once from the environment and passed in."""

from config.settings import Settings

__all__ = ["Settings"]
