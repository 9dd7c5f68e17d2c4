"""SQLite only: group commit, restart recovery, query plans, migrations, bad files.

What every backend must do is in tests/contract; this is what the SQLite file adds.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatchd.domain.errors import StoreError, StoreLocked
from dispatchd.domain.ids import IdGenerator
from dispatchd.domain.models import Message, Status
from dispatchd.store.sqlite import SqliteStore, count_messages, retention
from dispatchd.store.sqlite import messages as sql
from dispatchd.store.sqlite.schema import SCHEMA_VERSION
from tests.helpers import NOW, NUMBER, queued_message


def _message(ids: IdGenerator, number: str = NUMBER, at: float = NOW) -> Message:
    return queued_message(ids.new(), number, at)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "db" / "dispatchd.db", clock=lambda: NOW)
    yield s
    await s.close()


async def test_concurrent_inserts_share_commits_and_all_persist(store: SqliteStore) -> None:
    ids = IdGenerator()
    commits = 0
    original = store._transaction

    def counting(ops):
        nonlocal commits
        commits += 1
        return original(ops)

    store._transaction = counting  # type: ignore[method-assign]
    msgs = [_message(ids) for _ in range(200)]
    await asyncio.gather(*(store.insert([m], "accepted") for m in msgs))
    assert commits < 200, "concurrent inserts should be group-committed"
    assert count_messages(store.path) == 200


async def test_a_failing_write_does_not_fail_the_others_in_its_batch(
    store: SqliteStore,
) -> None:
    ids = IdGenerator()
    dup = _message(ids)
    await store.insert([dup], "accepted")
    fresh = [_message(ids) for _ in range(5)]
    results = await asyncio.gather(
        store.insert([dup], "accepted"),
        *(store.insert([m], "accepted") for m in fresh),
        store.insert([_message(ids), _message(ids)], "accepted"),
        return_exceptions=True,
    )
    assert isinstance(results[0], StoreError)
    assert isinstance(results[0].__cause__, sqlite3.IntegrityError)
    assert results[1:] == [None] * 6
    assert count_messages(store.path) == 8


async def test_second_process_on_the_same_database_is_refused(store: SqliteStore) -> None:
    with pytest.raises(StoreLocked):
        await SqliteStore.open(store.path)


async def test_opening_requeues_what_a_dead_process_left_sending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "restart.db"
    ids = IdGenerator()
    store = await SqliteStore.open(path, clock=lambda: NOW)
    msgs = [replace(_message(ids), status_callback_url="https://hooks.example/s") for _ in "ab"]
    await store.insert(msgs, "accepted")
    await store.insert([_message(ids, at=NOW + 3600)], "accepted")  # not due: stays queued
    claimed = await store.claim(10, 30)
    assert store.recovered_at_open == 0
    await store.close()  # the process dies before any provider answers

    caplog.set_level(logging.INFO, logger="dispatchd.store.sqlite")
    store = await SqliteStore.open(path, clock=lambda: NOW + 5)
    try:
        assert store.recovered_at_open == 2
        assert "event=recovered_after_restart count=2" in caplog.text
        for msg in msgs:
            got = await store.get(msg.id)
            assert got is not None
            assert (got.status, got.next_attempt_at) == (Status.QUEUED, NOW + 5)
            assert (got.history[-1].status, got.history[-1].detail) == (
                Status.QUEUED,
                "requeued after restart",
            )
            assert [c.status for c in got.callbacks][-1] is Status.QUEUED
        # The old leases are void: their tokens move nothing; a new claim does.
        assert not await store.mark_sent(claimed[0], "provider1", "p-1", (), NOW + 5)
        again = await store.claim(10, 30)
        assert {c.id for c in again} == {m.id for m in msgs}
        assert {c.attempt for c in again} == {2}
    finally:
        await store.close()
    store = await SqliteStore.open(path, clock=lambda: NOW + 6)
    assert store.recovered_at_open == 2  # the second claim died with its process too
    await store.close()


async def test_foreign_sqlite_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not one of dispatchd's"):
        await SqliteStore.open(path)


async def test_garbage_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot use"):
        await SqliteStore.open(path)


# The hot statements must use an index: their cost is O(log n) in stored messages.
HOT_QUERIES: dict[str, tuple[str, Any, str]] = {
    "claim due": (
        sql.CLAIM_DUE,
        {"now": NOW, "limit": 10, "lease_until": NOW},
        "messages_due",
    ),
    "claim expired lease": (
        sql.CLAIM_LEASE_EXPIRED,
        {"now": NOW, "limit": 10, "lease_until": NOW},
        "messages_leased",
    ),
    "expire due": (
        sql.EXPIRE_DUE,
        {"now": NOW, "limit": 10, "detail": "expired"},
        "messages_expiry",
    ),
    "report timeout": (
        sql.TIME_OUT_REPORTS,
        {"now": NOW, "limit": 10, "detail": "unknown", "sent_before": NOW},
        "messages_sent",
    ),
    "retention purge": (
        retention.SELECT_PURGEABLE,
        {"before": NOW, "limit": 10},
        "messages_finished",
    ),
    "provider id, newest unfinished": (
        sql.SELECT_BY_PROVIDERS_ID,
        ("pid", "smsc"),
        "messages_provider_message_id",
    ),
    "mark sent": (sql.MARK_SENT, ("p", "x", NOW, "id", "t"), "PRIMARY KEY"),
    "mark sent late": (sql.MARK_SENT_LATE, ("p", "x", "id"), "PRIMARY KEY"),
    "apply report": (
        sql.APPLY_REPORT,
        ("delivered", "x", None, None, NOW, "id"),
        "PRIMARY KEY",
    ),
    "requeue": (sql.REQUEUE, (NOW, "c", "d", NOW, "id", "t"), "PRIMARY KEY"),
    "finish": (sql.FINISH, ("failed", "c", "d", NOW, "id", "t"), "PRIMARY KEY"),
    "release": (sql.RELEASE_ONE, (NOW, NOW, "id", "t"), "PRIMARY KEY"),
    "suppress queued": (sql.END_QUEUED_TO_NUMBER, ("c", "d", NOW, NUMBER), "to_number"),
    "report by provider id": (sql.SELECT_BY_PROVIDER_ID, ("x",), "provider_message_id"),
    "next due": (sql.NEXT_DUE, (), "messages_due"),
    "list by number": (
        sql.LIST_MESSAGES[(True, False)],
        ("+17034573322", "~", 10),
        "messages_to_number",
    ),
}


@pytest.mark.parametrize("name", sorted(HOT_QUERIES))
async def test_hot_queries_use_an_index(store: SqliteStore, name: str) -> None:
    sql, params, index = HOT_QUERIES[name]
    plan = await store.explain(sql, params if isinstance(params, dict) else list(params))
    print(f"{name}: {plan}")
    assert not any(step.startswith("SCAN messages") for step in plan), plan
    assert any(index in step for step in plan), plan


async def test_a_failing_write_alone_leaves_the_store_usable(store: SqliteStore) -> None:
    ids = IdGenerator()
    msg = _message(ids)
    await store.insert([msg], "accepted")
    with pytest.raises(StoreError, match="refused"):
        await store.insert([msg], "accepted")
    await store.insert([_message(ids)], "accepted")
    assert count_messages(store.path) == 2


async def test_a_version_1_database_is_upgraded_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    ids = IdGenerator()
    store = await SqliteStore.open(path)
    kept = _message(ids)
    await store.insert([kept], "accepted")
    await store.close()
    # Turn the file back into what version 1 wrote: no scheduling, validity or callback
    # columns, no lease tokens.
    conn = sqlite3.connect(path)
    for trigger in ("webhooks_on_insert", "webhooks_on_status"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE webhooks")
    conn.execute("DROP TABLE idempotency_keys")
    for column in ("send_at", "validity_period", "status_callback_url", "lease_token"):
        conn.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = await SqliteStore.open(path)
    try:
        got = await store.get(kept.id)
        assert got is not None and got.body == "hello" and got.send_at is None
        fresh = _message(ids)
        await store.insert([fresh], "accepted")
        assert (await store.get(fresh.id)) is not None
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# Version 2's callback outbox: every pending row had a due time, waiting ones included.
V2_WEBHOOKS = """
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    url TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_http_status INTEGER,
    last_error TEXT,
    finished_at REAL
);
CREATE INDEX webhooks_due ON webhooks(next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhooks_message ON webhooks(message_id, id);
CREATE TRIGGER webhooks_on_insert AFTER INSERT ON messages
WHEN new.status_callback_url IS NOT NULL
BEGIN
    INSERT INTO webhooks (message_id, url, status, payload, created_at, next_attempt_at)
    VALUES (new.id, new.status_callback_url, new.status, '{}', new.updated_at, new.updated_at);
END;
CREATE TRIGGER webhooks_on_status AFTER UPDATE OF status ON messages
WHEN new.status_callback_url IS NOT NULL AND new.status IS NOT old.status
BEGIN
    INSERT INTO webhooks (message_id, url, status, payload, created_at, next_attempt_at)
    VALUES (new.id, new.status_callback_url, new.status, '{}', new.updated_at, new.updated_at);
END;
"""


async def test_a_version_2_database_gets_waiting_callbacks_out_of_the_due_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    ids = IdGenerator()
    store = await SqliteStore.open(path)
    msg = replace(_message(ids), status_callback_url="http://hooks.example/s")
    await store.insert([msg], "accepted")
    await store.close()
    conn = sqlite3.connect(path)
    for trigger in ("webhooks_on_insert", "webhooks_on_status"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE webhooks")
    conn.execute("ALTER TABLE messages DROP COLUMN lease_token")
    conn.executescript(V2_WEBHOOKS)
    rows = [
        # (id, message, status, state, attempts, next_attempt_at)
        (1, msg.id, "queued", "pending", 1, NOW),  # its head, retried once
        (2, msg.id, "sending", "pending", 0, NOW + 1),  # waiting behind it
        (3, msg.id, "sent", "pending", 0, NOW + 2),
        (4, "m-b", "queued", "delivered", 1, NOW),
        (5, "m-b", "sending", "pending", 0, NOW + 1),  # its turn: the queued one is done
        (6, "m-b", "sent", "pending", 0, NOW + 2),
        (7, "m-c", "queued", "pending", 2, NOW + 50),  # on a backoff
    ]
    conn.executemany(
        "INSERT INTO webhooks (id, message_id, url, status, payload, state, attempts, "
        "created_at, next_attempt_at) VALUES (?, ?, 'http://hooks.example/s', ?, '{}', ?, ?, "
        "?, ?)",
        [(i, m, status, state, tries, NOW, due) for i, m, status, state, tries, due in rows],
    )
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()

    store = await SqliteStore.open(path, clock=lambda: NOW)
    try:
        due = await store.due_webhooks(NOW + 100, 10, [])
        assert [(w.id, w.status, w.attempts) for w in due] == [
            (1, "queued", 1),
            (5, "sending", 0),
            (7, "queued", 2),
        ]
        # The recreated trigger queues a change behind the message's pending callbacks.
        assert [c.id for c in await store.claim(limit=1, lease=30)] == [msg.id]
        got = await store.get(msg.id)
        assert got is not None and [c.status for c in got.callbacks][-1] == Status.SENDING
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        due_at = dict(conn.execute("SELECT id, next_attempt_at FROM webhooks").fetchall())
        assert due_at == {
            1: NOW,
            2: None,
            3: None,
            4: NOW,
            5: NOW + 1,
            6: None,
            7: NOW + 50,
            8: None,  # queued by the status change after the upgrade
        }
        columns = {r[1]: r[3] for r in conn.execute("PRAGMA table_info(webhooks)")}
        assert columns["next_attempt_at"] == 0  # NOT NULL is gone
        index_sql = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'webhooks_due'"
        ).fetchone()[0]
        assert "next_attempt_at IS NOT NULL" in index_sql
        triggers = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        assert triggers == {"webhooks_on_insert", "webhooks_on_status"}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_a_version_3_database_gets_lease_tokens_and_its_leases_requeued(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    ids = IdGenerator()
    store = await SqliteStore.open(path, clock=lambda: NOW)
    leased, waiting = _message(ids), _message(ids, at=NOW + 60)
    await store.insert([leased, waiting], "accepted")
    await store.claim(10, 30)
    await store.close()
    # Version 3 had no lease_token: its `sending` rows carry none.
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE messages DROP COLUMN lease_token")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()

    store = await SqliteStore.open(path, clock=lambda: NOW + 10)
    try:
        assert store.recovered_at_open == 1
        assert await store.message_status(leased.id) is Status.QUEUED
        [claim] = await store.claim(10, 30)
        assert (claim.id, claim.attempt) == (leased.id, 2) and claim.token
        assert await store.mark_sent(claim, "provider1", "p-1", (), NOW + 10)
        assert await store.message_status(waiting.id) is Status.QUEUED
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        columns = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
        assert "lease_token" in columns
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def _sent_and_delivered(store: SqliteStore, count: int, at: float) -> list[str]:
    ids = IdGenerator()
    msgs = [replace(_message(ids), body="x" * 400) for _ in range(count)]
    await store.insert(msgs, "accepted")
    for claim in await store.claim(count, 30):
        await store.mark_sent(claim, "provider1", f"p-{claim.id}", (), at)
    return [m.id for m in msgs]


async def test_a_purge_gives_the_freed_pages_back_to_the_file_system(tmp_path: Path) -> None:
    path = tmp_path / "purge.db"
    store = await SqliteStore.open(path, clock=lambda: NOW)
    try:
        await _sent_and_delivered(store, 2000, NOW)
        await store.time_out_reports(NOW, NOW + 1, 5000)
        assert (await store.counts()) == {"unknown": 2000}
        await store.close()  # checkpoints the WAL, so the file holds every page
        grown = path.stat().st_size
        store = await SqliteStore.open(path, clock=lambda: NOW)
        purged = await store.purge_finished(NOW + 2, 5000)
        assert purged.messages == 2000 and purged.history == 2000 * 4
        free = await store.reclaim_space(100)
        assert free > 0, "at most 100 pages a call"
        while free:
            free = await store.reclaim_space(500)
        await store.close()
        shrunk = path.stat().st_size
        assert shrunk < grown / 4, (grown, shrunk)
    finally:
        await store.close()


async def test_a_version_4_database_gets_incremental_auto_vacuum_and_its_indexes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v4.db"
    store = await SqliteStore.open(path, clock=lambda: NOW)
    [kept] = await _sent_and_delivered(store, 1, NOW)
    await store.close()
    # Version 4 had neither the mode nor the two indexes.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")
    conn.execute("DROP INDEX messages_sent")
    conn.execute("DROP INDEX messages_finished")
    conn.execute("PRAGMA user_version = 4")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()

    store = await SqliteStore.open(path, clock=lambda: NOW)
    try:
        assert await store.time_out_reports(NOW, NOW + 1, 10) == [(kept, NUMBER)]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"messages_sent", "messages_finished"} <= indexes
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_a_new_database_is_made_with_incremental_auto_vacuum(store: SqliteStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    finally:
        conn.close()
