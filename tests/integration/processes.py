"""The Ray worker processes of this test session's cluster, found by command line, and their RSS.

Only descendants of the pytest process are looked at: `ray.init(address="local")`
starts the GCS and raylet as its children and the raylet forks every worker,
so other people's clusters on the same machine (same `ray::` names) are never
counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class Proc:
    """One worker process: its kind (the `ray::` name up to the first dot) and RSS."""

    pid: int
    kind: str
    rss: int


def ray_workers(*prefixes: str) -> list[Proc]:
    """Workers of this session whose `ray::` name starts with one of `prefixes`.

    A worker's title is `ray::ClassName` when idle and `ray::ClassName.method`
    while it runs a method, so the kind is the name without the method.
    """
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            rss = proc.memory_info().rss
        except psutil.Error:
            continue  # exited meanwhile
        if not title.startswith("ray::"):
            continue
        kind = title[len("ray::") :].split(".")[0].strip()
        if kind.startswith(prefixes):
            found.append(Proc(proc.pid, kind, rss))
    return found


def rss_by_pid(*prefixes: str) -> dict[int, Proc]:
    """`ray_workers` keyed by pid."""
    return {proc.pid: proc for proc in ray_workers(*prefixes)}


def python_heap_tracing(handles: list[Any]) -> Callable[[], dict[str, int]]:
    """Trace the Python heap of each actor from now on; a function that says what stayed.

    The returned function collects garbage in each actor and gives the bytes its
    Python code allocated since this call and still holds, by actor; tracing
    stops then. Exact where RSS is not: a Python object kept per socket or run
    shows here, whatever the allocator and Ray's native buffers do.
    """
    import ray

    def start(_self: Any) -> None:
        import gc
        import tracemalloc

        gc.collect()
        tracemalloc.start(1)

    def held(_self: Any) -> tuple[str, int]:
        import gc
        import os
        import tracemalloc

        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return f"{type(_self).__name__} ({os.getpid()})", current

    ray.get([handle.__ray_call__.remote(start) for handle in handles], timeout=60)

    def stop() -> dict[str, int]:
        return dict(ray.get([h.__ray_call__.remote(held) for h in handles], timeout=120))

    return stop
