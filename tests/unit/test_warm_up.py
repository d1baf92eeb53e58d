"""The agent manager's warm-up: one SDK run off the record, once, whatever the model."""

from __future__ import annotations

from typing import Any

import pytest
from agents import Runner

from actors import agent_manager
from actors.agent_manager import AgentManager
from actors.sim_model import SimulatedModel
from config import Settings
from tests.unit.fakes import FakeObserver, FakeServices, FakeStore


def manager_with(settings: Settings, **kwargs: Any) -> tuple[AgentManager, FakeStore]:
    store = FakeStore()
    manager = AgentManager(
        settings, services=FakeServices(), store=store, observer=FakeObserver(), **kwargs
    )
    return manager, store


async def test_warm_up_runs_the_sdk_once_and_records_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[Any] = []
    real = Runner.run_streamed

    def counting(*args: Any, **kwargs: Any) -> Any:
        runs.append(kwargs.get("run_config"))
        return real(*args, **kwargs)

    monkeypatch.setattr(agent_manager.Runner, "run_streamed", counting)
    configured = SimulatedModel(ttft_s=0.0, tokens_per_s=1000, reply_tokens=3)
    manager, store = manager_with(Settings(), model=configured)
    assert not manager.stats()["warmed_up"]
    assert await manager.warm_up()
    assert manager.stats()["warmed_up"]
    assert await manager.warm_up()
    assert len(runs) == 1  # once per manager
    assert configured.calls == 0  # its own instant model, not the configured one
    assert store.finished == []
    stats = manager.stats()
    assert (stats["started"], stats["active"], stats["buffered_runs"]) == (0, 0, 0)
    assert manager.hub.events_sent == 0


async def test_warm_up_sends_nothing_to_a_configured_endpoint() -> None:
    # Nothing listens on port 9 of loopback: any request would fail the warm-up.
    settings = Settings(
        model="openai",
        openai_model="m",
        openai_base_url="http://127.0.0.1:9/v1",
        openai_max_retries=0,
    )
    manager, store = manager_with(settings)
    try:
        assert await manager.warm_up()
    finally:
        await manager.model.close()
    assert store.finished == []
