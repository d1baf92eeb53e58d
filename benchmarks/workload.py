"""The pieces every scenario uses: settings, turn texts, users, and the sink of turn records."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from benchmarks.client import ClientOptions, SimUser, TurnRecord, ws_url
from benchmarks.metrics import Floor

DEFAULT_RAMP = (50, 100, 200, 500, 1000, 2000, 5000)
Progress = Callable[[str], None]


class SystemUnderTest(Protocol):
    """What the scenarios need of a running system (benchmarks.systems.RunningSystem)."""

    name: str
    base_url: str

    def token(self, user_id: str) -> str: ...

    def server_pids(self) -> list[int]: ...

    def stats(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class BenchConfig:
    """Workload settings shared by every system of one invocation."""

    users: int = 500  # burst
    chat_users: tuple[int, ...] = (300, 500)  # one chat point per count
    stagger_users: int = 300
    stagger_window_s: float = 10.0  # stagger: user start times spread evenly over it
    warm_chats: int = 5  # startup: chats after the first one, for the warm TTFT
    turns: int = 3
    think_s: float = 1.0
    duration_s: float = 10.0
    ramp: tuple[int, ...] = DEFAULT_RAMP
    ramp_turns: int = 2
    slo_margin_ms: float = 500.0
    coldwarm_users: int = 100
    idle_sockets: int = 2000
    idle_hold_s: float = 2.0
    tool_fraction: float = 0.1
    turn_timeout_s: float = 30.0
    point_timeout_s: float = 120.0
    connect_concurrency: int = 100
    max_users: int = 10000
    settle_max_s: float = 60.0
    seed: int = 1

    def client_options(self) -> ClientOptions:
        """How each simulated user connects and waits."""
        return ClientOptions(turn_timeout_s=self.turn_timeout_s)


@dataclass
class Context:
    """One system under test, the settings, and where progress goes."""

    system: SystemUnderTest
    config: BenchConfig
    floor: Floor
    progress: Progress | None = None
    restart: Callable[[], SystemUnderTest] | None = None  # stop, start afresh, return the new one
    restarts: int = 0
    nonce: str = field(default_factory=lambda: secrets.token_hex(3))


def is_tool_turn(index: int, fraction: float) -> bool:
    """Exactly `fraction` of turns 0..n-1 are tool turns, spread evenly and deterministically."""
    return int((index + 1) * fraction) > int(index * fraction)


def turn_text(index: int, tool: bool) -> str:
    """The text of turn `index`: a "remind me to" tool intent or a plain question."""
    if tool:
        return f"remind me to water plant number {index}"
    return f"tell me something useful about topic number {index}"


class TurnSink:
    """Collects turn records and error kinds; reports progress at most twice a second."""

    def __init__(
        self,
        label: str,
        progress: Progress | None = None,
        *,
        planned: int = 0,
        ttft_limit_ms: float | None = None,
    ) -> None:
        self.label = label
        self.planned = planned
        self.records: list[TurnRecord] = []
        self.errors: Counter[str] = Counter()
        self.ttft_limit_ms = ttft_limit_ms
        self.missed = 0  # turns without a first token within ttft_limit_ms (failed ones too)
        self._progress = progress
        self._reported = 0.0

    def add(self, record: TurnRecord) -> None:
        """One finished turn."""
        self.records.append(record)
        if record.error is not None:
            self.errors[record.error] += 1
        if self.ttft_limit_ms is not None and (
            record.ttft_ms is None or record.ttft_ms > self.ttft_limit_ms
        ):
            self.missed += 1
        self._report()

    def add_error(self, kind: str, count: int = 1) -> None:
        """An error outside any turn (a connect, a ping)."""
        self.errors[kind] += count
        self._report()

    def flush(self) -> None:
        """Report progress now."""
        self._report(force=True)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._progress is None or (not force and now - self._reported < 0.5):
            return
        self._reported = now
        done = f"{len(self.records)}/{self.planned}" if self.planned else str(len(self.records))
        self._progress(f"{self.label}: {done} turns, {sum(self.errors.values())} errors")

    def unfinished(self) -> int:
        """Planned turns that never finished."""
        return max(0, self.planned - len(self.records))

    def window(self) -> tuple[float, float]:
        """First send and last finish among the recorded turns (0, 0 without any)."""
        sent = [r.sent_at for r in self.records if r.sent_at is not None]
        done = [r.done_at for r in self.records if r.done_at is not None and r.sent_at is not None]
        if not sent or not done:
            return 0.0, 0.0
        return min(sent), max(done)


def make_users(ctx: Context, label: str, count: int) -> list[SimUser]:
    """`count` fresh users (ids never used before, so nothing is cached for them)."""
    if count > ctx.config.max_users:
        raise ValueError(f"{count} users is above the limit of {ctx.config.max_users}")
    slots = asyncio.Semaphore(ctx.config.connect_concurrency)
    options = ctx.config.client_options()
    users = []
    for index in range(count):
        user_id = f"b{ctx.nonce}-{label}-{index}"
        url = ws_url(ctx.system.base_url, ctx.system.token(user_id))
        users.append(SimUser(url, user_id, options, connect_slots=slots))
    return users


async def connect_all(users: Sequence[SimUser], sink: TurnSink) -> list[SimUser]:
    """Connect every user (bounded concurrency); errors go to the sink; the connected ones."""
    kinds = await asyncio.gather(*(user.connect() for user in users))
    for kind in kinds:
        if kind is not None:
            sink.add_error(kind)
    return [user for user, kind in zip(users, kinds, strict=True) if kind is None]


async def close_all(users: Sequence[SimUser]) -> None:
    """Close every socket, 200 close handshakes at a time."""
    for start in range(0, len(users), 200):
        await asyncio.gather(*(user.close() for user in users[start : start + 200]))
