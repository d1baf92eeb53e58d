"""Persistence against a real SQLite file: turns, replies, history, todos, preferences, batching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from actors.call_batcher import BatchItemFailed
from actors.group_commit import WriterClosed
from actors.persistence import Persistence, TurnRecord
from config import Settings
from tests.databases import Database

GUARD = 10.0  # upper bound for something that must happen


def settings_for(db: Database, flush_ms: float = 0.0, **more: Any) -> Settings:
    return Settings(database_url=db.url, persist_flush_ms=flush_ms, **more)


@pytest.fixture
async def p(db: Database) -> AsyncIterator[Persistence]:
    persistence = Persistence(settings_for(db))
    await persistence.start()
    try:
        yield persistence
    finally:
        await persistence.close()


def raw_rows(db: Database, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the database directly, bypassing the code under test."""
    return db.rows(sql, *args)


async def turn(
    p: Persistence,
    run_id: str,
    text: str = "hello",
    *,
    user: str = "alice",
    session: str = "s1",
    client_msg_id: str | None = None,
) -> TurnRecord:
    return await p.begin_turn(user, session, run_id, text, client_msg_id)


# -- turns and replies --------------------------------------------------------


async def test_begin_turn_stores_user_message_and_streaming_reply(p: Persistence) -> None:
    record = await turn(p, "run-1", "hi there", client_msg_id="m1")
    assert record.run_id == "run-1"
    assert record.duplicate is False
    assert record.reply_message_id != record.user_message_id
    rows = await p.history("alice", "s1", limit=10, before=None)
    assert [(r["id"], r["role"], r["text"], r["status"], r["run_id"]) for r in rows] == [
        (record.user_message_id, "user", "hi there", "stored", "run-1"),
        (record.reply_message_id, "assistant", "", "streaming", "run-1"),
    ]
    assert rows[0]["client_msg_id"] == "m1"
    assert await p.count_messages() == 2
    assert await p.run_record("alice", "run-1") == {
        "id": record.reply_message_id,
        "text": "",
        "status": "streaming",
        "session_id": "s1",
        "final_seq": None,
        "error_code": None,
    }


async def test_run_record_of_another_user_is_none(p: Persistence) -> None:
    await turn(p, "run-1")
    assert await p.run_record("bob", "run-1") is None
    assert await p.run_record("alice", "nope") is None


async def test_duplicate_client_msg_id_returns_the_original_turn(p: Persistence) -> None:
    first = await turn(p, "run-1", "hello", client_msg_id="m1")
    again = await turn(p, "run-2", "hello again", client_msg_id="m1")
    assert again.duplicate is True
    assert again.run_id == "run-1"
    assert (again.user_message_id, again.reply_message_id) == (
        first.user_message_id,
        first.reply_message_id,
    )
    assert await p.count_messages() == 2
    assert await p.run_record("alice", "run-2") is None


async def test_duplicate_in_the_same_batch(p: Persistence) -> None:
    records = await asyncio.gather(
        turn(p, "run-1", client_msg_id="m1"), turn(p, "run-2", client_msg_id="m1")
    )
    assert sorted(r.duplicate for r in records) == [False, True]
    assert {r.run_id for r in records} == {"run-1"}
    assert await p.count_messages() == 2


async def test_same_client_msg_id_for_another_user_is_not_a_duplicate(p: Persistence) -> None:
    await turn(p, "run-1", client_msg_id="m1")
    other = await turn(p, "run-2", user="bob", client_msg_id="m1")
    assert other.duplicate is False
    assert other.run_id == "run-2"
    assert await p.count_messages() == 4


async def test_no_client_msg_id_never_deduplicates(p: Persistence) -> None:
    await turn(p, "run-1")
    second = await turn(p, "run-2")
    assert second.duplicate is False
    assert await p.count_messages() == 4


async def test_finish_reply_sets_text_status_and_final_seq(p: Persistence, db: Database) -> None:
    record = await turn(p, "run-1")
    await p.finish_reply(record.reply_message_id, "the answer", "completed", final_seq=9)
    stored = await p.run_record("alice", "run-1")
    assert stored is not None
    assert (stored["text"], stored["status"]) == ("the answer", "completed")
    assert raw_rows(
        db,
        "SELECT text, status, final_seq, error_code FROM messages WHERE id = ?",
        record.reply_message_id,
    ) == [("the answer", "completed", 9, None)]
    # The user message is untouched.
    assert raw_rows(
        db, "SELECT text, status FROM messages WHERE id = ?", record.user_message_id
    ) == [("hello", "stored")]


async def test_finish_reply_failed_with_error_code(p: Persistence, db: Database) -> None:
    record = await turn(p, "run-1")
    await p.finish_reply(
        record.reply_message_id, "", "failed", final_seq=3, error_code="model_error"
    )
    assert raw_rows(
        db,
        "SELECT status, final_seq, error_code FROM messages WHERE id = ?",
        record.reply_message_id,
    ) == [("failed", 3, "model_error")]


async def test_finish_reply_refuses_a_non_final_status(p: Persistence) -> None:
    record = await turn(p, "run-1")
    with pytest.raises(ValueError):
        await p.finish_reply(record.reply_message_id, "x", "streaming")


# -- reads --------------------------------------------------------------------


async def test_history_is_oldest_first_with_limit_and_before(p: Persistence) -> None:
    records = [await turn(p, f"run-{i}", f"q{i}") for i in range(3)]
    for i, record in enumerate(records):
        await p.finish_reply(record.reply_message_id, f"a{i}", "completed")
    await turn(p, "other-session", "elsewhere", session="s2")
    await turn(p, "other-user", "not mine", user="bob")

    everything = await p.history("alice", "s1", limit=100, before=None)
    assert [r["text"] for r in everything] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    ids = [r["id"] for r in everything]
    assert ids == sorted(ids)

    newest = await p.history("alice", "s1", limit=2, before=None)
    assert [r["text"] for r in newest] == ["q2", "a2"]

    page = await p.history("alice", "s1", limit=3, before=records[2].user_message_id)
    assert [r["text"] for r in page] == ["a0", "q1", "a1"]

    assert await p.history("alice", "s1", limit=10, before=ids[0]) == []
    assert await p.history("alice", "nope", limit=10, before=None) == []


async def test_history_row_shape(p: Persistence) -> None:
    await turn(p, "run-1", client_msg_id="m1")
    [row, _reply] = await p.history("alice", "s1", limit=10, before=None)
    assert set(row) == {"id", "run_id", "role", "text", "status", "client_msg_id", "created_at"}


async def test_load_conversation_excludes_run_and_empty_texts(p: Persistence) -> None:
    done = await turn(p, "run-1", "first question")
    await p.finish_reply(done.reply_message_id, "first answer", "completed")
    cancelled = await turn(p, "run-2", "second question")
    await p.finish_reply(cancelled.reply_message_id, "", "cancelled")  # empty: left out
    await turn(p, "run-3", "current question")  # its reply is still streaming

    conversation = await p.load_conversation("alice", "s1", limit=20, exclude_run_id="run-3")
    assert conversation == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]

    with_current = await p.load_conversation("alice", "s1", limit=20)
    assert with_current[-1] == {"role": "user", "content": "current question"}
    assert all(item["content"] for item in with_current)


async def test_load_conversation_keeps_the_newest_within_limit(p: Persistence) -> None:
    for i in range(3):
        record = await turn(p, f"run-{i}", f"q{i}")
        await p.finish_reply(record.reply_message_id, f"a{i}", "completed")
    conversation = await p.load_conversation("alice", "s1", limit=3)
    assert [item["content"] for item in conversation] == ["a1", "q2", "a2"]
    assert await p.load_conversation("alice", "s1", limit=0) == []
    assert await p.load_conversation("alice", "s2", limit=10) == []


async def test_begin_turn_can_bring_back_context_and_history_read_before_it(
    p: Persistence,
) -> None:
    first = await turn(p, "run-1", "q1")
    await p.finish_reply(first.reply_message_id, "a1", "completed")
    todo = await p.add_todo("alice", "buy milk")
    await p.set_preference("alice", "tone", "brief")
    plain = await turn(p, "run-2", "q2")
    assert plain.context is None and plain.history is None  # not asked for
    await p.finish_reply(plain.reply_message_id, "a2", "completed")

    record = await p.begin_turn("alice", "s1", "run-3", "q3", None, context=True, history_limit=3)
    assert record.context == await p.load_context("alice")
    assert record.context is not None and record.context.todos == [
        {"id": todo["id"], "text": "buy milk"}
    ]
    # The newest three finished messages, without the turn being stored.
    assert record.history == [
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    other = await p.begin_turn("alice", "s2", "run-4", "x", None, history_limit=5)
    assert other.history == [] and other.context is None


async def test_first_turns_read_nothing_new_and_everything_stored_before(
    db: Database,
) -> None:
    """A user or session the turn creates skips its reads; one that exists is read,
    also by a new process that has not seen it yet."""
    first = Persistence(settings_for(db))
    await first.start()
    try:
        fresh = await first.begin_turn("bob", "s1", "r1", "hi", None, context=True, history_limit=5)
        assert fresh.context is not None and fresh.context.preferences == {}
        assert fresh.history == []
        await first.finish_reply(fresh.reply_message_id, "hello bob", "completed")
        await first.set_preference("carol", "tone", "brief")  # a user with no turn yet
        carol = await first.begin_turn("carol", "s1", "r2", "hi", None, context=True)
        assert carol.context is not None and carol.context.preferences == {"tone": "brief"}
    finally:
        await first.close()
    second = Persistence(settings_for(db))  # knows no user or session yet
    await second.start()
    try:
        again = await second.begin_turn("bob", "s1", "r3", "and?", None, history_limit=5)
        assert again.history == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello bob"},
        ]
    finally:
        await second.close()
    # Both rows come from one statement: each id is the one its row got.
    stored = "SELECT id, role, status FROM messages WHERE run_id = 'r3' ORDER BY id"
    assert raw_rows(db, stored) == [
        (again.user_message_id, "user", "stored"),
        (again.reply_message_id, "assistant", "streaming"),
    ]


async def test_batch_twins_answer_each_call_in_order(p: Persistence) -> None:
    """One call carries many turns; a bad one fails alone."""
    records = await p.begin_turns(
        [("alice", "s1", "b1", "hi", None), ("bob", "s1", "b2", "yo", None)]
    )
    assert [r.run_id for r in records] == ["b1", "b2"]
    done = await p.finish_replies(
        [
            (records[0].reply_message_id, "hello", "completed"),
            (records[1].reply_message_id, "", "on"),
        ]
    )
    assert done[0] is None and isinstance(done[1], BatchItemFailed)
    assert "not a final status" in str(done[1])
    stored = await p.run_record("alice", "b1")
    assert stored is not None and stored["status"] == "completed"


# -- todos and preferences ----------------------------------------------------


async def test_todos_add_list_complete(p: Persistence) -> None:
    milk = await p.add_todo("alice", "buy milk")
    mom = await p.add_todo("alice", "call mom")
    assert milk == {"id": milk["id"], "text": "buy milk", "done": False}
    assert mom["id"] != milk["id"]

    context = await p.load_context("alice")
    assert context.todos == [
        {"id": milk["id"], "text": "buy milk"},
        {"id": mom["id"], "text": "call mom"},
    ]

    assert await p.complete_todo("alice", milk["id"]) == {
        "id": milk["id"],
        "text": "buy milk",
        "done": True,
    }
    assert (await p.load_context("alice")).todos == [{"id": mom["id"], "text": "call mom"}]


async def test_complete_todo_of_another_user_is_none(p: Persistence) -> None:
    todo = await p.add_todo("alice", "secret plan")
    assert await p.complete_todo("bob", todo["id"]) is None
    assert await p.complete_todo("alice", 999_999) is None
    assert (await p.load_context("alice")).todos == [{"id": todo["id"], "text": "secret plan"}]
    assert (await p.load_context("bob")).todos == []


async def test_set_preference_upserts(p: Persistence) -> None:
    assert await p.set_preference("alice", "drink", "tea") == {"key": "drink", "value": "tea"}
    await p.set_preference("alice", "theme", "dark")
    await p.set_preference("alice", "drink", "coffee")
    await p.set_preference("bob", "drink", "water")
    assert (await p.load_context("alice")).preferences == {"drink": "coffee", "theme": "dark"}
    assert (await p.load_context("bob")).preferences == {"drink": "water"}


async def test_unknown_user_has_empty_context(p: Persistence) -> None:
    context = await p.load_context("nobody")
    assert (context.preferences, context.todos) == ({}, [])


# -- group commit -------------------------------------------------------------


async def test_concurrent_turns_are_grouped_into_fewer_batches(db: Database) -> None:
    p = Persistence(settings_for(db, flush_ms=20))
    try:
        writes = 40
        records = await asyncio.gather(
            *(turn(p, f"run-{i}", f"q{i}", user=f"user-{i % 5}") for i in range(writes))
        )
        assert {r.run_id for r in records} == {f"run-{i}" for i in range(writes)}
        stats = p.stats()
        assert stats["written"] == writes
        assert stats["batches"] < writes
        assert stats["failed"] == 0
        assert await p.count_messages() == 2 * writes
    finally:
        await p.close()


async def test_failing_op_in_a_batch_fails_only_its_caller(db: Database) -> None:
    """New users in a batch that fails and is retried op by op must still be stored."""
    p = Persistence(settings_for(db, flush_ms=20))
    await p.start()

    async def bad(conn: AsyncConnection) -> None:
        raise RuntimeError("bad write")

    try:
        results = await asyncio.gather(
            turn(p, "run-a", "from a", user="new-a"),
            p._writer.submit(bad),
            turn(p, "run-b", "from b", user="new-b"),
            p.add_todo("new-c", "a todo"),
            return_exceptions=True,
        )
        assert isinstance(results[1], RuntimeError)
        good = [results[0], results[2], results[3]]
        assert not [r for r in good if isinstance(r, BaseException)], good
        assert await p.count_messages() == 4
        assert [r["text"] for r in await p.history("new-a", "s1", 10, None)] == ["from a", ""]
        assert len((await p.load_context("new-c")).todos) == 1
        assert p.stats()["failed"] == 1
    finally:
        await p.close()


async def test_failing_op_in_a_batch_of_known_users(db: Database) -> None:
    p = Persistence(settings_for(db, flush_ms=20))

    async def bad(conn: AsyncConnection) -> None:
        raise RuntimeError("bad write")

    try:
        await turn(p, "warm-a", user="a")
        await turn(p, "warm-b", user="b")
        results = await asyncio.gather(
            turn(p, "run-a", user="a"),
            p._writer.submit(bad),
            turn(p, "run-b", user="b"),
            return_exceptions=True,
        )
        assert isinstance(results[1], RuntimeError)
        assert isinstance(results[0], TurnRecord)
        assert isinstance(results[2], TurnRecord)
        assert await p.count_messages() == 8
    finally:
        await p.close()


async def test_failed_batch_does_not_lose_a_new_session_row(db: Database) -> None:
    p = Persistence(settings_for(db, flush_ms=20))

    async def bad(conn: AsyncConnection) -> None:
        raise RuntimeError("bad write")

    try:
        await turn(p, "warm", user="a", session="s-old")
        results = await asyncio.gather(
            turn(p, "run-new", user="a", session="s-new"),
            p._writer.submit(bad),
            return_exceptions=True,
        )
        assert isinstance(results[0], TurnRecord)
        assert isinstance(results[1], RuntimeError)
    finally:
        await p.close()
    assert raw_rows(
        db, "SELECT session_id FROM sessions WHERE user_id = 'a' ORDER BY session_id"
    ) == [("s-new",), ("s-old",)]


async def test_close_commits_everything_queued(db: Database) -> None:
    p = Persistence(settings_for(db))
    await p.start()
    entered, release = asyncio.Event(), asyncio.Event()

    async def gate(conn: AsyncConnection) -> None:
        entered.set()
        await release.wait()

    try:
        gate_task = asyncio.create_task(p._writer.submit(gate))
        await asyncio.wait_for(entered.wait(), GUARD)  # the writer is busy
        queued = [asyncio.create_task(turn(p, f"run-{i}", f"q{i}", user=f"u{i}")) for i in range(6)]
        for _ in range(5000):  # poll (bounded) until every turn waits in the queue
            if p.stats()["queue_depth"] == 6:
                break
            await asyncio.sleep(0.001)  # the turns reach the queue; the gate holds the writer
        assert p.stats()["queue_depth"] == 6
        assert not any(task.done() for task in queued)

        closer = asyncio.create_task(p.close())
        for _ in range(100):  # event-loop turns: close runs until it waits for the queue
            await asyncio.sleep(0)
        assert not closer.done()  # it waits for the queued writes
        release.set()
        await asyncio.wait_for(closer, GUARD)
        assert gate_task.done()
        assert all(task.done() and not task.exception() for task in queued)
    finally:
        release.set()
        await p.close()
    assert raw_rows(db, "SELECT COUNT(*) FROM messages") == [(12,)]


async def test_write_after_close_is_refused(db: Database) -> None:
    p = Persistence(settings_for(db))
    await turn(p, "run-1")
    await p.close()
    with pytest.raises(WriterClosed):
        await turn(p, "run-2")
    await p.close()


async def test_reopen_sees_rows_and_leaves_streaming_replies_to_the_shards(db: Database) -> None:
    first = Persistence(settings_for(db))
    try:
        finished = await turn(first, "run-1", "q1", client_msg_id="m1")
        await first.finish_reply(finished.reply_message_id, "a1", "completed", final_seq=4)
        crashed = await turn(first, "run-2", "q2")  # never finished
        await first.add_todo("alice", "todo")
        await first.set_preference("alice", "k", "v")
    finally:
        await first.close()

    second = Persistence(settings_for(db))
    try:
        await second.start()
        assert await second.count_messages() == 4
        assert await second.run_record("alice", "run-1") == {
            "id": finished.reply_message_id,
            "text": "a1",
            "status": "completed",
            "session_id": "s1",
            "final_seq": 4,
            "error_code": None,
        }
        leftover = await second.run_record("alice", "run-2")
        assert leftover is not None
        assert leftover["id"] == crashed.reply_message_id
        # An agent may still be running it (only this writer restarted): shards decide.
        assert leftover["status"] == "streaming"
        assert [r["run_id"] for r in await second.streaming_replies()] == ["run-2"]
        context = await second.load_context("alice")
        assert (len(context.todos), context.preferences) == (1, {"k": "v"})
        again = await turn(second, "run-3", client_msg_id="m1")
        assert (again.duplicate, again.run_id) == (True, "run-1")
        assert await second.ping() is True
    finally:
        await second.close()


async def test_a_retried_turn_is_found_by_run_id_not_stored_twice(p: Persistence) -> None:
    first = await turn(p, "run-r")
    again = await p.begin_turn("alice", "s1", "run-r", "hello", None, True)
    assert again == first
    assert await p.count_messages() == 2


async def test_reads_do_not_wait_behind_a_write_batch(p: Persistence) -> None:
    from actors.db_schema import todos

    await turn(p, "run-0")
    inside, release = asyncio.Event(), asyncio.Event()

    async def held_open(conn: AsyncConnection) -> None:  # a batch that takes its time
        await conn.execute(
            todos.insert().values(user_id="alice", text="held", done=False, created_at=0.0)
        )
        inside.set()
        await release.wait()

    writing = asyncio.ensure_future(p._write(held_open))
    await asyncio.wait_for(inside.wait(), GUARD)
    # The write batch holds its transaction open: reads answer anyway, without its rows.
    history = await asyncio.wait_for(p.history("alice", "s1", 10, None), GUARD)
    context = await asyncio.wait_for(p.load_context("alice"), GUARD)
    assert [row["run_id"] for row in history] == ["run-0", "run-0"]
    assert context.todos == []
    assert not writing.done()
    release.set()
    await asyncio.wait_for(writing, GUARD)
    assert [t["text"] for t in (await p.load_context("alice")).todos] == ["held"]


# -- bounded memory -----------------------------------------------------------


async def test_known_users_and_sessions_are_bounded_and_rechecked(db: Database) -> None:
    p = Persistence(settings_for(db), known_max=2)
    try:
        for user in ("u1", "u2", "u3"):
            await turn(p, f"run-{user}", user=user, session="s1")
        await turn(p, "run-u1-s2", user="u1", session="s2")
        stats = p.stats()
        assert (stats["known_users"], stats["known_sessions"], stats["known_max"]) == (2, 2, 2)
        # u1 was forgotten and comes back: the database is asked again, nothing doubled,
        # and its session's history is read (it is not new).
        p_turn = await p.begin_turn("u1", "s1", "run-u1-again", "more", None, history_limit=5)
        assert p_turn.history == [{"role": "user", "content": "hello"}]
        assert raw_rows(db, "SELECT COUNT(*) FROM users") == [(3,)]
        assert raw_rows(db, "SELECT COUNT(*) FROM sessions") == [(4,)]
    finally:
        await p.close()
