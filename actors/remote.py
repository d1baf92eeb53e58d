"""Actor calls as coroutines, batched where asked, and the names the actors are registered by.

Light on purpose (Ray and the call batcher only): every actor process imports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError

from actors.backoff import retry_with_backoff
from actors.call_batcher import BatchSend, CallBatcher
from config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def until_up(
    call: Callable[[], Awaitable[T]],
    retry_s: float,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """`await call()`, tried again while its actor is down (restarting), up to `retry_s`.

    Only for calls that are safe to repeat: Ray cannot say whether a call to an
    actor that went away ran there. `on_retry` is called before each new try.
    """
    return await retry_with_backoff(
        call,
        retry_s=retry_s,
        what="a call to an actor that is down",
        retry_on=RayActorError,
        on_retry=on_retry,
    )


class RemoteCaller:
    """Calls an actor's methods as coroutines: `await caller.method(*args)`.

    A method named in `batched` (method name -> its batch twin, which takes a
    list of argument tuples and answers each one's result or error) goes through
    a `CallBatcher`: calls made at about the same time share one actor call.
    """

    def __init__(self, handle: Any, batched: Mapping[str, str] | None = None) -> None:
        self.handle = handle
        self.batchers: dict[str, CallBatcher[tuple[Any, ...]]] = {
            name: CallBatcher(self._twin_sender(twin)) for name, twin in (batched or {}).items()
        }

    def _twin_sender(self, twin: str) -> BatchSend[tuple[Any, ...]]:
        method = getattr(self.handle, twin)

        async def send(calls: list[tuple[Any, ...]]) -> list[Any]:
            results: list[Any] = await method.remote(calls)
            return results

        return send

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("handle", "batchers"):
            raise AttributeError(name)
        batcher = self.batchers.get(name)
        if batcher is not None:

            async def batched_call(*args: Any) -> Any:
                return await batcher.call(args)

            batched_call.__name__ = name
            return batched_call
        method = getattr(self.handle, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await method.remote(*args, **kwargs)

        call.__name__ = name
        return call


def actor_name(settings: Settings, kind: str, index: int | None = None) -> str:
    """The registered name of an actor (`persistence`, `agent`, `shard`).

    Persistence writer 0 keeps the name of the single writer it used to be
    (`raychat-persistence`); writer 1 is `raychat-persistence-1`, and so on.
    """
    if kind == "persistence" and index == 0:
        index = None
    return f"raychat-{kind}" if index is None else f"raychat-{kind}-{index}"


class NamedActorCaller:
    """Calls a named actor's methods as coroutines, finding its handle on first use."""

    def __init__(self, name: str, namespace: str) -> None:
        self._name = name
        self._namespace = namespace
        self._caller: RemoteCaller | None = None
        self._lock = asyncio.Lock()

    async def _resolve(self) -> RemoteCaller:
        async with self._lock:
            if self._caller is None:
                # `ray.get_actor` blocks (GCS lookup): once per actor, off the event loop.
                handle = await asyncio.to_thread(ray.get_actor, self._name, self._namespace)
                self._caller = RemoteCaller(handle)
        return self._caller

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            caller = self._caller or await self._resolve()
            return await getattr(caller, name)(*args, **kwargs)

        call.__name__ = name
        return call
