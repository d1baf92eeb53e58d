"""Stand-ins for the collaborators of an `AgentManager` and of a `UserShard` (with a fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.agent_manager import RunOutcome
from actors.events import Event
from actors.records import TurnRecord, UserContext
from actors.runs import AGENT_NAMES, RunSpec
from actors.shard import ChatRequest, UserShard
from config import Settings


class FakeServices:
    def __init__(self) -> None:
        self.todos: list[dict[str, Any]] = []

    async def add_todo(self, user_id: str, text: str) -> dict[str, Any]:
        todo = {"id": len(self.todos) + 1, "text": text, "done": False}
        self.todos.append(todo)
        return todo

    async def complete_todo(self, user_id: str, todo_id: int) -> dict[str, Any] | None:
        return None

    async def set_preference(self, user_id: str, key: str, value: str) -> dict[str, str]:
        return {"key": key, "value": value}

    async def load_context(self, user_id: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
        return {}, self.todos


class FakeStore:
    def __init__(self) -> None:
        self.finished: list[tuple[int, str, str, int | None, str | None]] = []

    async def finish_reply(
        self,
        reply_message_id: int,
        text_: str,
        status: str,
        final_seq: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.finished.append((reply_message_id, text_, status, final_seq, error_code))


class FakeObserver:
    def __init__(self) -> None:
        self.ended: list[tuple[str, RunOutcome]] = []
        self.invalidated: list[str] = []

    async def invalidate_context(self, user_id: str) -> bool:
        self.invalidated.append(user_id)
        return True

    async def run_ended(self, user_id: str, outcome: RunOutcome) -> None:
        self.ended.append((user_id, outcome))


# -- a user shard's collaborators (tests/unit/test_shard_*.py) ------------------------------


class FakeClock:
    """A clock that moves only when told; `sleep` waits until `advance` passes its deadline."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        self._changed.set()
        try:
            await future
        finally:
            self._sleepers = [(at, f) for at, f in self._sleepers if f is not future]

    def advance(self, seconds: float) -> None:
        """Move the clock on and wake every sleeper whose deadline has come."""
        self.now += seconds
        for at, future in list(self._sleepers):
            if at <= self.now and not future.done():
                future.set_result(None)
        self._sleepers = [(at, f) for at, f in self._sleepers if not f.done()]

    async def sleeping(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Wait (up to `timeout_s` of real time) until `count` tasks sleep on this clock."""
        async with asyncio.timeout(timeout_s):
            while len(self._sleepers) < count:
                self._changed.clear()
                await self._changed.wait()


class FakeShardStore:
    """The persistence calls of a shard, over reply rows in memory."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}  # reply message id -> row
        self.failed: list[tuple[int, str]] = []  # fail_if_streaming calls
        self._next_id = 1

    def add_streaming(self, user_id: str, session_id: str, run_id: str) -> int:
        """A reply row left `streaming` (its run was in flight); its id."""
        reply_id = self._next_id + 1
        self._next_id += 2
        self.rows[reply_id] = {
            "id": reply_id,
            "run_id": run_id,
            "user_id": user_id,
            "session_id": session_id,
            "status": "streaming",
            "text": "",
            "error_code": None,
            "final_seq": None,
        }
        return reply_id

    def row_of(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.rows.values() if r["run_id"] == run_id), None)

    async def begin_turn(
        self,
        user_id: str,
        session_id: str,
        run_id: str,
        text_: str,
        client_msg_id: str | None,
        retry: bool = False,
        context: bool = False,
        history_limit: int = 0,
    ) -> TurnRecord:
        row = self.row_of(run_id)
        if row is not None:
            return TurnRecord(run_id, row["id"] - 1, row["id"], duplicate=True)
        reply_id = self.add_streaming(user_id, session_id, run_id)
        return TurnRecord(
            run_id,
            reply_id - 1,
            reply_id,
            context=UserContext() if context else None,
            history=[] if history_limit else None,
        )

    async def finish_reply(
        self, reply_message_id: int, text_: str, status: str, final_seq: int | None = None
    ) -> None:
        self.rows[reply_message_id].update(status=status, text=text_, final_seq=final_seq)

    async def load_context(self, user_id: str) -> UserContext:
        return UserContext()

    async def load_conversation(
        self, user_id: str, session_id: str, limit: int, exclude_run_id: str | None = None
    ) -> list[dict[str, str]]:
        return []

    async def run_record(self, user_id: str, run_id: str) -> dict[str, Any] | None:
        row = self.row_of(run_id)
        return dict(row) if row is not None and row["user_id"] == user_id else None

    async def fail_if_streaming(self, reply_message_id: int, error_code: str) -> dict[str, Any]:
        self.failed.append((reply_message_id, error_code))
        row = self.rows[reply_message_id]
        if row["status"] == "streaming":
            row.update(status="failed", error_code=error_code)
        return dict(row)

    async def streaming_replies(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows.values() if r["status"] == "streaming"]


class FakeAgent:
    """An agent actor as a shard sees it: runs it holds, and how those that ended ended."""

    def __init__(self) -> None:
        self.started: list[RunSpec] = []
        self.held: set[str] = set()
        self.outcomes: dict[str, RunOutcome] = {}
        self.cancelled: list[str] = []
        self.announced: list[tuple[str, str, list[Event]]] = []

    def finish(self, outcome: RunOutcome) -> None:
        """The run ended on this agent (it is asked, not told: `report_end`, `runs_status`)."""
        self.held.discard(outcome.run_id)
        self.outcomes[outcome.run_id] = outcome

    def restart(self) -> None:
        """The actor restarted: it holds nothing and knows no run."""
        self.held.clear()
        self.outcomes.clear()

    def started_ids(self) -> list[str]:
        return [spec.run_id for spec in self.started]

    async def cancel(self, run_id: str) -> bool:
        self.cancelled.append(run_id)
        return run_id in self.held

    async def replay_and_subscribe(
        self, run_id: str, after_seq: int, replica_id: str
    ) -> list[Event] | None:
        return None

    async def texts(self, run_ids: list[str]) -> dict[str, str]:
        return {run_id: "" for run_id in run_ids if run_id in self.held}

    async def final_event(self, run_id: str) -> Event | None:
        return None

    async def start_run(self, spec: RunSpec) -> None:
        self.started.append(spec)
        if not spec.cancelled:
            self.held.add(spec.run_id)

    async def announce_final(self, run_id: str, user_id: str, events: list[Event]) -> bool:
        self.announced.append((run_id, user_id, events))
        return True

    async def holding(self, run_ids: list[str]) -> list[str]:
        return [run_id for run_id in run_ids if run_id in self.held]

    async def report_end(self, run_id: str) -> RunOutcome | None:
        return self.outcomes.get(run_id)

    async def runs_status(self, run_ids: list[str]) -> dict[str, RunOutcome | None]:
        return {
            run_id: self.outcomes.get(run_id)
            for run_id in run_ids
            if run_id in self.held or run_id in self.outcomes
        }


@dataclass
class ShardRig:
    """A `UserShard` over fakes, with the fake clock its watchdog sleeps on."""

    shard: UserShard
    store: FakeShardStore
    agents: list[FakeAgent]
    clock: FakeClock

    async def chat(self, run_id: str, *, user: str = "u", session: str = "s", **kw: Any) -> Any:
        """Send a chat from replica `r1` (unless `replica_id` says otherwise)."""
        fields = {"replica_id": "r1", **kw}
        return await self.shard.chat(ChatRequest(user, run_id, "hi", session_id=session, **fields))

    async def started(self, run_id: str) -> None:
        """Wait until the task starting `run_id` on its agent is done."""
        task = self.shard.runs[run_id].task
        assert task is not None, f"run {run_id} was not launched"
        await task

    async def end(self, run_id: str, status: str = "completed", user: str = "u") -> None:
        """Its agent reports the run ended."""
        reply_id = self.store.row_of(run_id)["id"]  # type: ignore[index]
        await self.shard.run_ended(user, RunOutcome(run_id, status, "done", reply_id))

    async def drive(
        self,
        done: Callable[[], bool],
        step_s: float = 2.0,
        task: asyncio.Future[Any] | None = None,
    ) -> None:
        """Let time pass, `step_s` whenever some task sleeps on the clock, until `done()`
        (checked whenever something sleeps, or `task` ends)."""
        for _ in range(200):
            if done():
                return
            sleeping = asyncio.ensure_future(self.clock.sleeping())
            await asyncio.wait({sleeping, *([task] if task else [])}, return_when="FIRST_COMPLETED")
            if not sleeping.done():
                sleeping.cancel()
                continue
            sleeping.result()
            if done():
                return
            self.clock.advance(step_s)
        raise AssertionError("not done after 200 steps")


def shard_rig(
    agents: int = 1,
    store: FakeShardStore | None = None,
    agent_type: type[FakeAgent] | None = None,
    **settings: Any,
) -> ShardRig:
    """A shard (index 0 of `shards`, default 1) over a fake store and `agents` fake agents."""
    clock = FakeClock()
    store = store or FakeShardStore()
    fakes = [(agent_type or FakeAgent)() for _ in range(agents)]
    shard = UserShard(
        Settings(**{"shards": 1, **settings}),
        index=0,
        store=store,
        agents=fakes,
        agent_names=AGENT_NAMES,
        clock=clock,
        sleep=clock.sleep,
    )
    return ShardRig(shard, store, fakes, clock)


class FlakyShardStore(FakeShardStore):
    """A `FakeShardStore` whose calls fail (`ConnectionError`) as many times as `fails` says.

    `fails[method]`: how many of its next calls fail; `fails[("begin_turn", user)]` the
    same for one user's `begin_turn`. `calls` lists every call made, failed or not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fails: dict[Any, int] = {}
        self.calls: list[tuple[str, Any]] = []

    def _maybe_fail(self, key: Any, arg: Any = None) -> None:
        name = key[0] if isinstance(key, tuple) else key
        self.calls.append((name, arg))
        if self.fails.get(key, 0) > 0:
            self.fails[key] -= 1
            raise ConnectionError(f"{name} failed (a fault injected by the test)")

    def attempts(self, name: str) -> int:
        """How many calls of `name` were made."""
        return sum(1 for called, _ in self.calls if called == name)

    async def begin_turn(self, user_id: str, *args: Any, **kwargs: Any) -> TurnRecord:
        self._maybe_fail(("begin_turn", user_id), user_id)
        return await super().begin_turn(user_id, *args, **kwargs)

    async def fail_if_streaming(self, reply_message_id: int, error_code: str) -> dict[str, Any]:
        self._maybe_fail("fail_if_streaming", reply_message_id)
        return await super().fail_if_streaming(reply_message_id, error_code)

    async def streaming_replies(self) -> list[dict[str, Any]]:
        self._maybe_fail("streaming_replies")
        return await super().streaming_replies()


class BrokenAgent(FakeAgent):
    """A `FakeAgent` whose `runs_status` answers garbage while `broken` (the watchdog fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    async def runs_status(self, run_ids: list[str]) -> dict[str, RunOutcome | None]:
        if self.broken:
            return None  # type: ignore[return-value]
        return await super().runs_status(run_ids)


def flaky_rig(agents: int = 1, **settings: Any) -> tuple[ShardRig, FlakyShardStore]:
    """`shard_rig` over a `FlakyShardStore` and `BrokenAgent`s (not broken yet)."""
    store = FlakyShardStore()
    return shard_rig(agents, store=store, agent_type=BrokenAgent, **settings), store


class GatedSleep:
    """A fake `asyncio.sleep`: records each delay and returns only when released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.waiting = asyncio.Event()
        self._release = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.waiting.set()
        await self._release.wait()
        self._release.clear()

    async def release(self) -> None:
        """Let the sleeping loop go on, and wait until it sleeps again or runs."""
        self.waiting.clear()
        self._release.set()
        await asyncio.sleep(0)  # one loop turn: the supervised task resumes
