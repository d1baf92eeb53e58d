"""CPU and memory of the server processes (psutil) and of this client process.

Server CPU is user + system time, children included, summed over every pid
`server_pids()` names (Ray's own processes too); a process that exits during
a point counts up to its last sample. Memory is summed RSS: for Ray that
counts shared pages (plasma, shared libraries) once per process, so it is an
upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024
PidSource = Callable[[], list[int]]


@dataclass(frozen=True)
class Sample:
    """CPU seconds and RSS bytes per pid at one instant."""

    at: float
    cpu: dict[int, float]
    rss: dict[int, int]

    @property
    def rss_total(self) -> int:
        """Summed RSS."""
        return sum(self.rss.values())


class ProcessSampler:
    """Reads CPU and RSS of the pids a source names, caching psutil handles."""

    def __init__(self, pids: PidSource) -> None:
        self._pids = pids
        self._procs: dict[int, psutil.Process] = {}

    def sample(self) -> Sample:
        """One blocking sample (call it in a thread from async code)."""
        cpu: dict[int, float] = {}
        rss: dict[int, int] = {}
        for pid in self._pids():
            try:
                proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu[pid] = t.user + t.system + t.children_user + t.children_system
                    rss[pid] = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
        return Sample(time.monotonic(), cpu, rss)


@dataclass
class Usage:
    """What a measured stretch cost the server and the client."""

    server_cpu_s: float = 0.0
    server_rss_start: int = 0
    server_rss_end: int = 0
    server_rss_peak: int = 0
    server_processes: int = 0
    client_cpu_s: float = 0.0
    client_rss_peak: int = 0
    samples: int = 0
    notes: list[str] = field(default_factory=list)
    settle: dict[str, float | int | None] = field(default_factory=dict)

    def figures(self, completed_turns: int) -> dict[str, dict[str, float | int | None]]:
        """The `server` and `client` figures of a point."""
        per_turn = completed_turns if completed_turns > 0 else None
        return {
            "server": {
                "cpu_s": round(self.server_cpu_s, 3),
                "cpu_s_per_turn": round(self.server_cpu_s / per_turn, 5) if per_turn else None,
                "peak_rss_mb": round(self.server_rss_peak / MB, 1),
                "rss_start_mb": round(self.server_rss_start / MB, 1),
                "rss_end_mb": round(self.server_rss_end / MB, 1),
                "processes": self.server_processes,
            },
            "client": {
                "cpu_s": round(self.client_cpu_s, 3),
                "cpu_s_per_turn": round(self.client_cpu_s / per_turn, 5) if per_turn else None,
                "peak_rss_mb": round(self.client_rss_peak / MB, 1),
            },
        }


def cpu_between(base: Sample, last_seen: dict[int, float]) -> float:
    """CPU seconds spent since `base` by every pid seen (new pids count from zero)."""
    return sum(max(0.0, cpu - base.cpu.get(pid, 0.0)) for pid, cpu in last_seen.items())


class ResourceMeter:
    """Samples server and client resources in the background while a point runs."""

    def __init__(self, pids: PidSource, *, interval_s: float = 0.5) -> None:
        self._sampler = ProcessSampler(pids)
        self._interval_s = interval_s
        self._me = psutil.Process()
        self._task: asyncio.Task[None] | None = None
        self._base: Sample | None = None
        self._last_cpu: dict[int, float] = {}
        self._usage = Usage()
        self._client_cpu0 = 0.0

    async def _take(self) -> Sample:
        sample = await asyncio.to_thread(self._sampler.sample)
        self._last_cpu.update(sample.cpu)
        self._usage.server_rss_peak = max(self._usage.server_rss_peak, sample.rss_total)
        self._usage.client_rss_peak = max(self._usage.client_rss_peak, self._me.memory_info().rss)
        self._usage.samples += 1
        return sample

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._take()

    async def __aenter__(self) -> ResourceMeter:
        self._base = await self._take()
        self._usage.server_rss_start = self._base.rss_total
        self._client_cpu0 = time.process_time()
        self._task = asyncio.create_task(self._loop(), name="resource-meter")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._usage.client_cpu_s = time.process_time() - self._client_cpu0
        end = await self._take()
        assert self._base is not None
        self._usage.server_rss_end = end.rss_total
        self._usage.server_cpu_s = cpu_between(self._base, self._last_cpu)
        self._usage.server_processes = len(self._last_cpu)

    @property
    def usage(self) -> Usage:
        """The figures (final once the `async with` block has exited)."""
        return self._usage

    async def rss_now(self) -> int:
        """Summed server RSS right now (also feeds the peak)."""
        return (await self._take()).rss_total


async def wait_quiet(
    pids: PidSource, *, below_cores: float = 0.3, window_s: float = 0.5, max_s: float = 20.0
) -> float:
    """Wait (bounded) until the server uses less than `below_cores`; seconds waited."""
    sampler = ProcessSampler(pids)
    start = time.monotonic()
    before = await asyncio.to_thread(sampler.sample)
    while time.monotonic() - start < max_s:
        await asyncio.sleep(window_s)
        after = await asyncio.to_thread(sampler.sample)
        busy = cpu_between(before, after.cpu) / max(after.at - before.at, 1e-6)
        if busy < below_cores:
            break
        before = after
    return round(time.monotonic() - start, 2)
