"""Kill each actor kind while 50 users chat: every run ends, nothing acknowledged is lost.

The actor is killed at a moment when some runs stream and others are stored
but not yet started on an agent (the riskiest moment for a shard). A restarted
shard rebuilds itself at once (the ingress replicas ask every shard to, every
`RAYCHAT_AGENT_CHECK_S`): a run caught in its setup is announced accepted, then
failed, without waiting for its user to send anything.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets

from actors.sharding import shard_for
from tests.integration.chat_client import FINAL_TYPES, ChatClient
from tests.integration.conftest import Service, wait_ready
from tests.integration.test_faults import kill

pytestmark = pytest.mark.ray

USERS = 50
TURNS = 3
WORDS = 40  # ~0.5 s per run at the suite's 100 tokens/s: many runs stream at any moment
KILL_AFTER_DELTAS = 20  # across all users: runs are streaming by then
FINAL_STATUS = {"run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled"}


@dataclass
class UserLog:
    """One user's socket through the load: what it started and how each run ended."""

    user: str
    accepted: list[str] = field(default_factory=list)
    finals: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)  # `error` answers to a chat
    hung: str | None = None  # a run whose final event never came
    unannounced: list[str] = field(default_factory=list)  # ended without `run.accepted`
    closed: websockets.ConnectionClosed | None = None
    inflight: str | None = None  # the run streaming right now
    seqs: dict[str, list[int]] = field(default_factory=dict)  # run id -> seqs received


class Load:
    """50 users chatting TURNS turns each, counting the deltas they see."""

    def __init__(self, service: Service, kind: str) -> None:
        self.service = service
        self.logs = [UserLog(f"u-ful-{kind}-{i}") for i in range(USERS)]
        self.deltas = 0

    async def user(self, log: UserLog) -> None:
        async with ChatClient(self.service.ws_url(log.user)) as client:
            for turn in range(TURNS):
                await client.chat(f"turn {turn} of {log.user} in {WORDS} words", session_id="s")
                try:
                    await self.one_run(client, log)
                except websockets.ConnectionClosed as closed:
                    log.closed = closed
                    return
                except TimeoutError:
                    log.hung = log.inflight or "(no run.accepted)"
                    return

    async def one_run(self, client: ChatClient, log: UserLog) -> None:
        log.inflight = None
        while True:
            event = await client.recv()
            kind = event["type"]
            if "run_id" in event and "seq" in event:
                log.seqs.setdefault(event["run_id"], []).append(event["seq"])
            if kind == "error":
                log.refused.append(event)
                return
            if kind == "run.accepted" and log.inflight is None:
                log.inflight = event["run_id"]
                log.accepted.append(event["run_id"])
            elif kind == "message.delta":
                self.deltas += 1
            elif kind in FINAL_TYPES and event["run_id"] == log.inflight:
                log.finals[log.inflight] = event
                log.inflight = None
                return
            elif kind in FINAL_TYPES and log.inflight is None:
                # The end of a run lost before its `run.accepted` reached this socket:
                # with one chat at a time, it is the run of the chat just sent.
                log.unannounced.append(event["run_id"])
                log.finals[event["run_id"]] = event
                return

    def streaming_runs(self) -> list[tuple[str, str]]:
        """(user, run id) of the runs under way right now."""
        return [(log.user, log.inflight) for log in self.logs if log.inflight is not None]


async def in_setup(service: Service, kind: str, load: Load) -> list[str]:
    """Users with a run stored (message and reply row) that no agent runs yet.

    Such a run sits in its shard between storing the turn and starting it on
    an agent; its client has not had `run.accepted` yet.
    """
    rows = service.query(
        "SELECT run_id, user_id FROM messages "
        "WHERE user_id LIKE ? AND role = 'assistant' AND status = 'streaming'",
        f"u-ful-{kind}-%",
    )
    accepted = {run_id for log in load.logs for run_id in log.accepted}
    fresh = {run_id: user for run_id, user in rows if run_id not in accepted}
    for index in range(service.settings.agent_actors):
        for run_id in await service.actor("agent", index).holding.remote(list(fresh)):
            fresh.pop(run_id, None)
    return list(fresh.values())


async def victim(service: Service, kind: str, load: Load, fresh: list[str]) -> Any:
    """An actor of `kind` with runs streaming on it (agent) or being set up in it (shard)."""
    if kind == "persistence":
        return service.actor("persistence")
    if kind == "shard":
        shards = Counter(shard_for(user, service.settings.shards) for user in fresh)
        return service.actor("shard", shards.most_common(1)[0][0])
    running = [run_id for _, run_id in load.streaming_runs()]
    held = []
    for index in range(service.settings.agent_actors):
        handle = service.actor("agent", index)
        held.append((len(await handle.holding.remote(running)), index, handle))
    count, _, handle = max(held, key=lambda item: item[:2])
    assert count, f"no agent holds any of {running}"
    return handle


async def kill_mid_load(
    service: Service, kind: str, load: Load, users: asyncio.Future[Any]
) -> None:
    """Kill an actor once runs stream and others are stored but not yet on an agent."""
    while not users.done():
        if load.deltas >= KILL_AFTER_DELTAS and load.streaming_runs():
            fresh = await in_setup(service, kind, load)
            if fresh:
                kill(await victim(service, kind, load, fresh))
                return
        await asyncio.sleep(0.01)  # poll for the moment to strike, bounded by the load
    raise AssertionError("the load ended before runs were both streaming and in setup")


def reply_statuses(service: Service, kind: str) -> dict[str, str]:
    rows = service.query(
        "SELECT run_id, status FROM messages WHERE user_id LIKE ? AND role = 'assistant'",
        f"u-ful-{kind}-%",
    )
    return dict(rows)


@pytest.mark.parametrize("kind", ["agent", "shard", "persistence"])
async def test_killing_an_actor_under_load_loses_no_acknowledged_run(
    service: Service, kind: str
) -> None:
    load = Load(service, kind)
    async with asyncio.timeout(150):
        users = asyncio.gather(*(load.user(log) for log in load.logs))
        await kill_mid_load(service, kind, load, users)
        await users
        wait_ready(service.http)  # the actor restarted and answers (bounded)

    logs = load.logs
    for log in logs:
        # A socket may only go away with a close frame (none is expected here).
        assert log.closed is None or log.closed.rcvd is not None, (log.user, log.closed)
        # Every run this client started ended with a final event on its socket.
        if log.closed is None and log.hung is None:
            assert set(log.finals) - set(log.unannounced) == set(log.accepted), log.user
        # A chat that could not be taken while the actor restarted says so.
        assert all(e["code"] == "internal" for e in log.refused), log.refused
    accepted = [run_id for log in logs for run_id in log.accepted]
    finals = {run_id: e for log in logs for run_id, e in log.finals.items()}
    if kind == "agent":  # the kill did hit runs: they failed, numbered after what was seen
        failed = [e for e in finals.values() if e["type"] == "run.failed"]
        assert failed and all(e["error"]["code"] == "internal" for e in failed)
    assert len(accepted) >= USERS  # most chats were accepted despite the kill
    for log in logs:
        for run_id in log.accepted:
            seqs = log.seqs[run_id]
            assert seqs == list(range(1, len(seqs) + 1)), (run_id, seqs)

    # New chats work: a fresh user, and every user of the load (the affected ones among them).
    async with asyncio.timeout(90):
        names = [f"u-ful-{kind}-fresh"] + [log.user for log in logs]

        async def again(user: str) -> str:
            async with ChatClient(service.ws_url(user)) as client:
                run = await client.turn(f"after the {kind} came back", session_id="s")
                assert run.final is not None
                return str(run.final["type"])

        outcomes = await asyncio.gather(*(again(user) for user in names))
    assert outcomes == ["run.completed"] * len(names)

    # Every acknowledged user message is stored, and its reply ends in a final status
    # (a chat refused while the actor restarted may be stored too: it must end as well).
    for _ in range(150):
        statuses = reply_statuses(service, kind)
        if "streaming" not in statuses.values():
            break
        await asyncio.sleep(0.2)  # poll for the condition, bounded
    assert {r: s for r, s in statuses.items() if s not in FINAL_STATUS.values()} == {}
    stored = service.query(
        "SELECT run_id FROM messages WHERE user_id LIKE ? AND role = 'user'", f"u-ful-{kind}-%"
    )
    assert set(accepted) <= {run_id for (run_id,) in stored}
    assert set(accepted) <= set(statuses)
    # What a socket was told is what the database holds.
    told = {run_id: FINAL_STATUS[event["type"]] for run_id, event in finals.items()}
    assert told == {run_id: statuses[run_id] for run_id in finals}

    hung = [(log.user, log.hung) for log in logs if log.hung]
    assert hung == []
