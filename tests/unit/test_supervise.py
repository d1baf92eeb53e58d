"""The supervisor of background loops: restart with backoff, health while down, stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from actors.supervise import Supervisor
from tests.unit.fakes import GatedSleep


async def until(condition: Callable[[], bool], turns: int = 1000) -> None:
    """Let the event loop turn until `condition` holds; fail after `turns` turns."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)  # one event-loop turn, not a wait for time
    raise AssertionError("the condition never held")


async def test_a_failing_loop_is_restarted_with_growing_backoff_and_is_down_meanwhile() -> None:
    sleep = GatedSleep()
    failures = 2
    running = asyncio.Event()
    forever = asyncio.Event()

    async def loop() -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise RuntimeError("poll failed")
        running.set()
        await forever.wait()

    supervisor = Supervisor("replica", sleep=sleep)
    supervisor.start("poll-0", loop)
    await sleep.waiting.wait()
    assert not supervisor.healthy()  # down between the failure and the restart
    with pytest.raises(RuntimeError, match="poll-0 .RuntimeError: poll failed"):
        supervisor.check()
    await sleep.release()
    await until(lambda: sleep.waiting.is_set())
    await sleep.release()
    await running.wait()
    assert sleep.delays == [0.05, 0.1]
    assert supervisor.healthy()
    supervisor.check()
    report = supervisor.stats()["poll-0"]
    assert (
        report["restarts"] == 2
        and report["up"]
        and report["last_error"] == ("RuntimeError: poll failed")
    )
    await supervisor.stop()
    assert supervisor.loops == {}


async def test_a_loop_that_may_end_is_finished_not_restarted() -> None:
    sleep = GatedSleep()

    async def watcher() -> None:
        return None

    supervisor = Supervisor("replica", sleep=sleep)
    supervisor.start("drain-watch", watcher, ends=True)
    await until(lambda: supervisor.loops["drain-watch"].finished)
    assert supervisor.healthy()
    assert supervisor.stats()["drain-watch"]["restarts"] == 0
    assert sleep.delays == []
    await supervisor.stop()


async def test_a_loop_that_must_not_end_is_restarted_when_it_returns() -> None:
    sleep = GatedSleep()
    calls = 0

    async def loop() -> None:
        nonlocal calls
        calls += 1

    supervisor = Supervisor("shard-0", sleep=sleep)
    supervisor.start("watchdog", loop)
    await sleep.waiting.wait()
    assert not supervisor.healthy()
    assert supervisor.stats()["watchdog"]["last_error"] == "returned"
    await sleep.release()
    await until(lambda: calls == 2)
    await supervisor.stop()


async def test_a_non_critical_loop_down_leaves_the_owner_healthy() -> None:
    sleep = GatedSleep()

    async def loop() -> None:
        raise ValueError("boom")

    supervisor = Supervisor("replica", sleep=sleep)
    supervisor.start("housekeeping", loop, critical=False)
    await sleep.waiting.wait()
    assert supervisor.loops["housekeeping"].down
    assert supervisor.healthy()
    await supervisor.stop()


async def test_backoff_starts_afresh_after_a_long_healthy_run() -> None:
    sleep = GatedSleep()
    now = [0.0]
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            now[0] += 60.0  # this run lasted a minute before it failed
        raise RuntimeError("lost")

    supervisor = Supervisor("replica", sleep=sleep, clock=lambda: now[0])
    supervisor.start("poll-1", loop)
    for _ in range(3):
        await until(lambda: sleep.waiting.is_set())
        await sleep.release()
    await until(lambda: len(sleep.delays) == 4)
    assert sleep.delays == [0.05, 0.1, 0.05, 0.1]
    await supervisor.stop()


async def test_two_loops_may_not_share_a_name() -> None:
    supervisor = Supervisor("replica")
    blocker = asyncio.Event()
    supervisor.start("poll-0", blocker.wait)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("poll-0", blocker.wait)
    await supervisor.stop()
