"""`raychat drain` before a full stop: runs in flight end stored, nothing new is taken.

Drained actors stay draining, so this test deploys a side app in a namespace
of its own, with its own actors and database file, and removes them after.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from actors.factory import drain_actors
from actors.remote import actor_name
from config import Settings
from tests.integration.chat_client import ChatClient
from tests.integration.conftest import Service, side_app

pytestmark = pytest.mark.ray


@pytest.fixture
def drained_app(service: Service, tmp_path: Path) -> Iterator[tuple[str, Settings, Path]]:
    import ray

    db_path = tmp_path / "drain.db"
    overrides = {
        "namespace": "raychat-drain-" + uuid.uuid4().hex[:8],
        "database_url": f"sqlite+aiosqlite:///{db_path}",
    }
    settings = service.settings.model_copy(update=overrides)
    try:
        with side_app(service, "raychat-drain", "/drain", **overrides) as base:
            yield base, settings, db_path
    finally:  # the side app's actors are detached: remove them
        names = [actor_name(settings, "persistence")]
        names += [actor_name(settings, "agent", i) for i in range(settings.agent_actors)]
        names += [actor_name(settings, "shard", i) for i in range(settings.shards)]
        for name in names:
            with contextlib.suppress(ValueError):  # never created
                ray.kill(ray.get_actor(name, namespace=settings.namespace), no_restart=True)


def stored(db_path: Path, run_id: str) -> tuple[str, str, str | None]:
    with sqlite3.connect(db_path) as db:
        row = db.execute(
            "SELECT status, text, error_code FROM messages WHERE run_id = ? AND role = 'assistant'",
            (run_id,),
        ).fetchone()
    return (row[0], row[1], row[2])


async def test_drain_stores_runs_in_flight_and_refuses_new_chats(
    drained_app: tuple[str, Settings, Path],
) -> None:
    base, settings, db_path = drained_app
    async with ChatClient(base + _token(settings, "u-drain")) as client:
        streaming = await client.start("a long answer in 400 words", session_id="s")
        await client.next_of("message.delta")
        queued = await client.start("and then this", session_id="s")  # waits behind it

        # Sockets stay open at first, to see a chat refused while the service is drained.
        report = await asyncio.to_thread(drain_actors, settings, close_sockets=False)
        assert report["queued_runs_failed"] == 1 and report["runs_stopped"] == 1

        run = await client.until_final(streaming)
        assert run.final is not None and run.final["type"] == "run.failed"
        assert run.final["error"]["code"] == "shutdown"
        status, text, code = stored(db_path, streaming)
        assert (status, code) == ("failed", "shutdown")
        assert text and text == run.deltas_text  # the partial reply, as streamed
        assert stored(db_path, queued) == ("failed", "", "shutdown")
        never_ran = await client.until_final(queued)
        assert never_ran.final is not None and never_ran.final["error"]["code"] == "shutdown"
        assert never_ran.seqs == list(range(1, len(never_ran.seqs) + 1))

        await client.chat("anyone there?", session_id="other")
        refused = await client.next_of("error")
        assert refused["code"] == "unavailable"

        again = await asyncio.to_thread(drain_actors, settings)  # now closing the sockets
        assert again["queued_runs_failed"] == 0 and again["runs_stopped"] == 0
        assert await client.until_closed() == 1001
    async with ChatClient(base + _token(settings, "u-drain-late")) as late:
        assert await late.until_closed() == 1001

    http = base.replace("ws://", "http://", 1).split("/api/websocket/ws")[0]
    admin = {"Authorization": f"Bearer {_token(settings, 'drain-admin', admin=True)}"}
    async with httpx.AsyncClient(timeout=30) as web:
        stats = (await web.get(f"{http}/api/websocket/performance/stats", headers=admin)).json()
    assert stats["runs"]["drained"] == 1 and stats["runs"]["lost"] == 0


def _token(settings: Settings, user_id: str, admin: bool = False) -> str:
    from actors.auth import codec_for

    return codec_for(settings).issue(user_id, admin=admin)
