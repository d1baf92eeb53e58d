"""Actor crashes: only the runs an actor held fail, nothing stored is lost, new chats work."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from actors.sharding import shard_for
from tests.integration.chat_client import FINAL_TYPES, ChatClient, RunLog, resume_to_final
from tests.integration.conftest import BOTH_DATABASES, REPLICAS, Service, wait_ready

pytestmark = [pytest.mark.ray, BOTH_DATABASES]


def contiguous(run: RunLog) -> bool:
    return run.seqs == list(range(1, len(run.seqs) + 1))


async def agent_holding(service: Service, run_id: str) -> Any:
    for index in range(service.settings.agent_actors):
        handle = service.actor("agent", index)
        if await handle.holding.remote([run_id]):
            return handle
    raise AssertionError(f"no agent holds {run_id}")


def kill(handle: Any) -> None:
    import ray

    ray.kill(handle, no_restart=False)


async def test_agent_crash_fails_only_its_runs_and_new_chats_work(service: Service) -> None:
    async with (
        ChatClient(service.ws_url("u-crash-a")) as victim,
        ChatClient(service.ws_url("u-crash-b")) as bystander,
    ):
        lost_id = await victim.start("a long answer in 400 words")
        for _ in range(3):
            await victim.next_of("message.delta")
        doomed = await agent_holding(service, lost_id)
        other_id = ""
        for attempt in range(6):  # start a run on the other agent (round robin per shard)
            candidate = await bystander.start(f"bystander {attempt} in 200 words")
            if not await doomed.holding.remote([candidate]):
                other_id = candidate
                break
            await bystander.until_final(candidate)
        assert other_id, "no run landed on the surviving agent"
        kill(doomed)
        lost = await victim.until_final(lost_id)
        other = await bystander.until_final(other_id)
        assert lost.final is not None and lost.final["type"] == "run.failed"
        assert lost.final["error"]["code"] == "internal"
        assert contiguous(lost)  # the failure follows the last seq the socket saw
        assert other.final is not None and other.final["type"] == "run.completed"
        assert contiguous(other)
        stored = service.query(
            "SELECT role, status FROM messages WHERE run_id = ? ORDER BY id", lost_id
        )
        assert stored == [("user", "stored"), ("assistant", "failed")]
        again = await victim.turn("are you back?")
        assert again.final is not None and again.final["type"] == "run.completed"
    # Resuming the lost run later still ends it, right after what the client had.
    async with ChatClient(service.ws_url("u-crash-a")) as later:
        await later.send({"type": "resume", "run_id": lost_id, "after_seq": 5})
        final = await later.next_of("run.failed")
        assert final["seq"] == 6 and final["run_id"] == lost_id


async def test_shard_crash_keeps_running_runs_and_fails_queued_ones(service: Service) -> None:
    user = "u-shard-crash"
    async with ChatClient(service.ws_url(user)) as client:
        running = await client.start("keep going in 300 words", session_id="s")
        queued = await client.start("and then this", session_id="s")
        await client.next_of("run.queued")
        kill(service.actor("shard", shard_for(user, service.settings.shards)))
        first = await client.until_final(running)
        second = await client.until_final(queued)
        assert first.final is not None and first.final["type"] == "run.completed"
        assert contiguous(first)
        assert second.final is not None and second.final["type"] == "run.failed"
        assert second.final["seq"] == 3  # accepted (1), queued (2), then the failure
        rows = dict(
            service.query(
                "SELECT run_id, status FROM messages WHERE user_id = ? AND role = 'assistant'",
                user,
            )
        )
        assert rows == {running: "completed", queued: "failed"}
        again = await client.turn("working again?", session_id="s")
        assert again.final is not None and again.final["type"] == "run.completed"


async def test_after_a_shard_restart_a_users_sockets_on_every_replica_hear_new_runs(
    service: Service,
) -> None:
    """A restarted shard is told each replica's sockets again (`rejoin`), not only new ones."""
    user, sockets = "u-shard-rejoin", 6
    index = shard_for(user, service.settings.shards)
    stats_url = f"{service.http}/api/websocket/performance/stats"
    async with (
        AsyncExitStack() as stack,
        httpx.AsyncClient(headers=service.admin_headers(), timeout=30) as http,
    ):
        clients = [
            await stack.enter_async_context(ChatClient(service.ws_url(user)))
            for _ in range(sockets)
        ]
        for _ in range(100):  # the replicas' reports reach the stats every second
            replicas = (await http.get(stats_url)).json()["ingress"]["replicas"]
            if len(replicas) == REPLICAS and all(r["sockets"] for r in replicas):
                break
            await asyncio.sleep(0.2)  # poll for the condition, bounded
        assert all(r["sockets"] for r in replicas), replicas  # the user is on both replicas
        shard = service.actor("shard", index)
        kill(shard)

        async def connections() -> dict[str, int]:
            try:
                stats = await asyncio.wait_for(shard.stats.remote(), 5)
            except Exception:  # still restarting
                return {}
            return dict(stats["connections"])

        # The restarted shard (no socket opened on it: `opened` 0; the killed one may
        # still answer for a moment) knows no socket until each replica rejoins.
        expected = {"active": sockets, "opened": 0, "closed": 0}
        for _ in range(150):
            if (counted := await connections()) == expected:
                break
            await asyncio.sleep(0.2)  # poll for the condition, bounded
        assert counted == expected
        run = await clients[0].turn("hello again")
        assert run.final is not None and run.final["type"] == "run.completed"
        for other in clients[1:]:  # on this replica or the other one
            heard = await other.until_final(run.run_id)
            assert heard.final == run.final and contiguous(heard)


async def test_persistence_crash_loses_nothing_acknowledged(service: Service) -> None:
    users = [f"u-db-crash-{i}" for i in range(8)]
    async with asyncio.timeout(120):
        clients = [ChatClient(service.ws_url(u)) for u in users]
        for client in clients:
            await client.__aenter__()
        try:
            for i, client in enumerate(clients):
                await client.chat(f"question {i} in 60 words")
            kill(service.actor("persistence"))
            outcomes: list[dict[str, Any]] = []
            for client in clients:
                while True:  # each chat ends in a final event, or an error if not stored
                    event = await client.recv()
                    if event["type"] == "error" or event["type"] in FINAL_TYPES:
                        outcomes.append(event)
                        break
            accepted = {
                e["run_id"] for c in clients for e in c.received if e["type"] == "run.accepted"
            }
            for run_id in accepted:
                rows = service.query(
                    "SELECT role FROM messages WHERE run_id = ? AND role = 'user'", run_id
                )
                assert rows == [("user",)], run_id
            wait_ready(service.http)
            # A chat is either refused (never accepted) or accepted and then completed: the
            # persistence actor holds no run, and a reply's end is retried until its writer
            # is back, so no accepted run fails or is left without its final event.
            for client, outcome in zip(clients, outcomes, strict=True):
                mine = [e["run_id"] for e in client.received if e["type"] == "run.accepted"]
                if outcome["type"] == "error":
                    assert mine == [], ("an accepted chat was answered with an error", outcome)
                    assert outcome["code"] in ("unavailable", "internal"), outcome
                    continue
                assert mine == [outcome["run_id"]], (mine, outcome)
                run = client.runs[outcome["run_id"]]
                assert outcome["type"] == "run.completed", outcome
                assert contiguous(run) and run.deltas_text == outcome["text"] != ""
                stored = service.query(
                    "SELECT status, text FROM messages WHERE run_id = ? AND role = 'assistant'",
                    outcome["run_id"],
                )
                assert stored == [("completed", outcome["text"])], outcome["run_id"]
            assert accepted, "no chat was accepted across the persistence crash"
            again = await clients[0].turn("after the database came back")
            assert again.final is not None and again.final["type"] == "run.completed"
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)


async def test_serve_app_restart_mid_stream_then_resume(service: Service) -> None:
    from ray import serve

    from tests.integration.conftest import APP_NAME, deploy

    user = "u-redeploy"
    async with ChatClient(service.ws_url(user)) as client:
        # Long enough to outlast the outage: Serve keeps a stopping direct-ingress replica
        # up for its deregistration window (1 s here, conftest.TEST_REPLICA_ENV) before the app
        # can be deployed again. The test stops it once it has seen it go on.
        run_id = await client.start("a long story in 5000 words")
        await client.next_of("message.delta")
        serve.delete(APP_NAME, _blocking=False)
        # The replica closes its sockets with 1001 as soon as Serve starts to stop it,
        # well inside the shutdown budget, so the close frame gets through the proxy.
        assert await client.until_closed() == 1001
        seen = list(client.runs[run_id].events)
    assert client.runs[run_id].final is None, "the socket should be cut mid-stream"
    deploy(service.settings)
    wait_ready(service.http)
    async with ChatClient(service.ws_url(user)) as again:
        await again.send({"type": "resume", "run_id": run_id, "after_seq": seen[-1]["seq"]})
        # The run went on through the restart: new text arrives live on the new socket.
        for _ in range(3):
            await again.next_of("message.delta")
        await again.send({"type": "cancel", "run_id": run_id})
        rest = await again.until_final(run_id)
    events = seen + rest.events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    final = events[-1]
    assert final["type"] == "run.cancelled"
    text = "".join(e["text"] for e in events if e["type"] == "message.delta")
    assert text == final["text"] != ""
    assert service.query(
        "SELECT status, text FROM messages WHERE run_id = ? AND role = 'assistant'", run_id
    ) == [("cancelled", text)]


async def test_rolling_redeploy_closes_sockets_1001_and_runs_resume(service: Service) -> None:
    """A new version replaces the replicas: each socket gets 1001 at once, runs go on."""
    import uuid

    from tests.integration.conftest import deploy

    clients = [ChatClient(service.ws_url(f"u-rollout-{index}")) for index in range(4)]
    rollout: asyncio.Future[None] | None = None
    try:
        for client in clients:
            await client.__aenter__()
        # 60 s of tokens: the 1001 comes once the new replicas are up, which took over
        # 15 s on a loaded 2-core machine; the runs must still be going then. Once each
        # has gone on after its resume, it is cancelled (nobody waits for its end).
        run_ids = [await client.start("a long story in 6000 words") for client in clients]
        for client in clients:
            await client.next_of("message.delta")
        # A drain budget far longer than the runs: without the early 1001 the old
        # replicas would hold these sockets until the runs end or Serve kills them.
        rollout = asyncio.ensure_future(
            asyncio.to_thread(
                deploy, service.settings, uuid.uuid4().hex, graceful_shutdown_timeout_s=120
            )
        )
        codes = [await client.until_closed() for client in clients]
        assert codes == [1001] * len(clients)
        cut = zip(clients, run_ids, strict=True)
        seen = [list(client.runs[run_id].events) for client, run_id in cut]
        assert all(events[-1]["type"] not in FINAL_TYPES for events in seen)
        # Reconnect at once, as a client does after 1001, while the old replicas still
        # drain (Serve keeps a stopping direct-ingress replica up for a deregistration
        # window): every run resumes where its socket was cut, and completes.
        rests = await asyncio.gather(
            *(
                resume_to_final(
                    service.ws_url(f"u-rollout-{index}"), run_id, events[-1]["seq"], cancel=True
                )
                for index, (run_id, events) in enumerate(zip(run_ids, seen, strict=True))
            )
        )
        for before, rest in zip(seen, rests, strict=True):
            events = before + rest.events
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert any(e["type"] == "message.delta" for e in rest.events)  # streamed on
            assert events[-1]["type"] == "run.cancelled"
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)
        if rollout is not None:
            await rollout
    wait_ready(service.http)
