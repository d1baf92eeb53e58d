"""A run's end is told only once it is stored: retried while the store fails, then told as is."""

from __future__ import annotations

from actors.agent_manager import AgentManager, RunSpec
from actors.events import FINAL_TYPES, Event
from actors.reply_end import NOT_STORED
from actors.sim_model import SimulatedModel
from config import Settings
from tests.unit.fakes import FakeObserver, FakeServices, FakeStore

RETRY_S = 30.0


class FakeClock:
    """A clock that only the manager's backoff sleeps move on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FailingStore(FakeStore):
    """Fails the first `failures` attempts (every one when None), then stores."""

    def __init__(self, failures: int | None) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0
        self.manager: AgentManager | None = None
        self.final_told_before: list[bool] = []  # per attempt: was a final event out?

    async def finish_reply(
        self,
        reply_message_id: int,
        text_: str,
        status: str,
        final_seq: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.attempts += 1
        assert self.manager is not None
        buffer = self.manager.hub.get("r1")
        self.final_told_before.append(buffer is None or buffer.finished)
        if self.failures is None or self.attempts <= self.failures:
            raise ConnectionError("the database is down")
        await super().finish_reply(reply_message_id, text_, status, final_seq, error_code)


def manager_with(store: FailingStore, clock: FakeClock) -> AgentManager:
    agents = AgentManager(
        Settings(),
        services=FakeServices(),
        store=store,
        observer=FakeObserver(),
        model=SimulatedModel(ttft_s=0.0, tokens_per_s=1e6, reply_tokens=5),
        clock=clock,
        sleep=clock.sleep,
        store_retry_s=RETRY_S,
    )
    store.manager = agents
    return agents


def finals(agents: AgentManager) -> list[Event]:
    events = agents.hub.replay("r1", 0)
    assert events is not None
    return [e for e in events if e["type"] in FINAL_TYPES]


SPEC = RunSpec(run_id="r1", user_id="u", session_id="s", text="hi", reply_message_id=7)


async def test_the_end_is_told_once_after_it_is_stored() -> None:
    clock = FakeClock()
    store = FailingStore(failures=3)
    agents = manager_with(store, clock)
    outcome = await agents.run_turn(SPEC)
    assert store.attempts == 4
    assert store.final_told_before == [False] * 4  # nothing told while not stored
    assert len(store.finished) == 1
    _, stored_text, stored_status, final_seq, code = store.finished[0]
    assert (stored_status, code) == ("completed", None) and stored_text
    told = finals(agents)
    assert told == [
        {
            "type": "run.completed",
            "message_id": 7,
            "text": stored_text,
            "run_id": "r1",
            "seq": final_seq,
        }
    ]
    assert outcome.status == "completed" and outcome.text == stored_text
    assert len(clock.slept) == 3 and clock.slept == sorted(clock.slept)  # backoff grows
    stats = agents.stats()
    assert stats["store_retries"] == 3 and stats["store_failures"] == 0


async def test_a_store_that_never_recovers_is_told_as_failed_within_the_bound() -> None:
    clock = FakeClock()
    start = clock.now
    store = FailingStore(failures=None)
    agents = manager_with(store, clock)
    outcome = await agents.run_turn(SPEC)
    assert store.attempts > 3  # retried with backoff ...
    assert clock.now - start <= RETRY_S  # ... within the bound
    assert store.final_told_before == [False] * store.attempts
    assert store.finished == []  # the row stays `streaming` for the shard's recovery
    code, message = NOT_STORED
    assert [(e["type"], e["error"]) for e in finals(agents)] == [
        ("run.failed", {"code": code, "message": message})
    ]
    assert outcome.status == "failed"
    assert agents.stats()["store_failures"] == 1
    assert await agents.holding(["r1"]) == []  # recovery will find it held by no agent
