"""CPU and memory of the server processes (psutil) and of this client process.

Server CPU is user + system time, children included, summed over every pid
`server_pids()` names (Ray's own processes too); a process that exits during
a point counts up to its last sample. Memory is summed RSS: for Ray that
counts shared pages (plasma, shared libraries) once per process, so it is an
upper bound.

Each server process also gets a kind (`process_kind`): for Ray the actor or
worker it runs (`ray::ServeReplica...` -> ServeReplica, ShardActor, AgentActor,
PersistenceActor, ProxyActor, HAProxyManager, ServeController), the `haproxy`
binary, raylet, gcs_server, dashboard (head and `ray::DashboardAgent`),
log_monitor, the launcher (`driver`, which plays `serve run`); for a baseline
its one process (`app`); anything else (`ray::IDLE`, the runtime-env agent)
`other`. A point's CPU is also given per kind.
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

RAY_WORKER_KINDS = (
    "ServeReplica",
    "ShardActor",
    "AgentActor",
    "PersistenceActor",
    "ProxyActor",
    "HAProxyManager",
    "ServeController",
)
KINDS = (
    *RAY_WORKER_KINDS,
    "haproxy",
    "raylet",
    "gcs_server",
    "dashboard",
    "log_monitor",
    "driver",
    "app",
    "other",
)
UNSETTLED = ("other",)  # a pooled Ray worker (`ray::IDLE`) may become an actor: ask again


def kind_of_command(argv: list[str]) -> str:
    """The process kind of a command line (see the module docstring)."""
    command = " ".join(argv)
    if command.startswith("ray::"):
        name = command[len("ray::") :]
        if name.startswith("Dashboard"):  # ray::DashboardAgent
            return "dashboard"
        return next((kind for kind in RAY_WORKER_KINDS if name.startswith(kind)), "other")
    program = argv[0].rsplit("/", 1)[-1] if argv else ""
    if program == "haproxy":
        return "haproxy"
    if program in ("raylet", "gcs_server"):
        return program
    if "benchmarks.baselines." in command:
        return "app"
    if "benchmarks.systems" in command and "--serve-ray" in command:
        return "driver"
    for kind in ("dashboard", "log_monitor"):
        if kind in command:
            return kind
    return "other"


def process_kind(process: psutil.Process) -> str:
    """The kind of a live process ("gone" when it cannot be read)."""
    try:
        return kind_of_command(process.cmdline())
    except psutil.Error:
        return "gone"


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
        self.kinds: dict[int, str] = {}  # the last kind seen of every pid ever sampled

    def sample(self) -> Sample:
        """One blocking sample (call it in a thread from async code)."""
        cpu: dict[int, float] = {}
        rss: dict[int, int] = {}
        for pid in self._pids():
            try:
                proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                if self.kinds.get(pid, "other") in UNSETTLED:
                    self.kinds[pid] = kind_of_command(proc.cmdline())
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
    server_cpu_by_kind: dict[str, float] = field(default_factory=dict)
    server_processes_by_kind: dict[str, int] = field(default_factory=dict)
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

    def cpu_by_kind(self, completed_turns: int) -> dict[str, dict[str, float | int | None]]:
        """Server CPU per process kind: seconds, ms per completed turn, processes seen."""
        return {
            kind: {
                "cpu_s": round(seconds, 3),
                "ms_per_turn": (
                    round(1000 * seconds / completed_turns, 3) if completed_turns > 0 else None
                ),
                "processes": self.server_processes_by_kind.get(kind, 0),
            }
            for kind, seconds in sorted(self.server_cpu_by_kind.items(), key=_kind_order)
        }


def _kind_order(item: tuple[str, float]) -> int:
    return KINDS.index(item[0]) if item[0] in KINDS else len(KINDS)


def cpu_between(base: Sample, last_seen: dict[int, float]) -> float:
    """CPU seconds spent since `base` by every pid seen (new pids count from zero)."""
    return sum(max(0.0, cpu - base.cpu.get(pid, 0.0)) for pid, cpu in last_seen.items())


def cpu_between_by_kind(
    base: Sample, last_seen: dict[int, float], kinds: dict[int, str]
) -> tuple[dict[str, float], dict[str, int]]:
    """`cpu_between` split by process kind, and how many processes of each kind were seen."""
    seconds: dict[str, float] = {}
    processes: dict[str, int] = {}
    for pid, cpu in last_seen.items():
        kind = kinds.get(pid, "other")
        seconds[kind] = seconds.get(kind, 0.0) + max(0.0, cpu - base.cpu.get(pid, 0.0))
        processes[kind] = processes.get(kind, 0) + 1
    return seconds, processes


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
        by_kind, processes = cpu_between_by_kind(self._base, self._last_cpu, self._sampler.kinds)
        self._usage.server_cpu_by_kind = by_kind
        self._usage.server_processes_by_kind = processes

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
