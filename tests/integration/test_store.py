"""The store against real SQLite files: group commit, leases, query plans, bad files."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from dispatchd.domain.errors import StoreError, StoreLocked
from dispatchd.domain.ids import IdGenerator
from dispatchd.domain.models import Message, Status
from dispatchd.store import sqlite as store_mod
from dispatchd.store.sqlite import Store
from tests.helpers import NOW, NUMBER, queued_message


def _message(ids: IdGenerator, number: str = NUMBER, at: float = NOW) -> Message:
    return queued_message(ids.new(), number, at)


@pytest.fixture
async def store(tmp_path: Path) -> Store:
    s = await Store.open(tmp_path / "db" / "dispatchd.db")
    yield s  # type: ignore[misc]
    await s.close()


async def test_concurrent_inserts_share_commits_and_all_persist(store: Store) -> None:
    ids = IdGenerator()
    commits = 0
    original = store._transaction

    def counting(ops):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return original(ops)

    store._transaction = counting  # type: ignore[method-assign]
    msgs = [_message(ids) for _ in range(200)]
    await asyncio.gather(*(store.insert(m) for m in msgs))
    assert commits < 200, "concurrent inserts should be group-committed"
    assert store_mod.count_messages(store.path) == 200


async def test_a_failing_write_does_not_fail_the_others_in_its_batch(store: Store) -> None:
    ids = IdGenerator()
    dup = _message(ids)
    await store.insert(dup)
    fresh = [_message(ids) for _ in range(5)]
    results = await asyncio.gather(
        store.insert(dup), *(store.insert(m) for m in fresh), return_exceptions=True
    )
    assert isinstance(results[0], sqlite3.IntegrityError)
    assert results[1:] == [None] * 5
    assert store_mod.count_messages(store.path) == 6


async def test_claim_takes_oldest_due_first_and_leases_them(store: Store) -> None:
    ids = IdGenerator()
    old = _message(ids, at=NOW - 10)
    new = _message(ids, at=NOW)
    later = _message(ids, at=NOW + 100)
    for m in (new, later, old):
        await store.insert(m)
    claimed = await store.claim(NOW, limit=1, lease=30)
    assert [c.id for c in claimed] == [old.id]
    claimed = await store.claim(NOW, limit=10, lease=30)
    assert [c.id for c in claimed] == [new.id], "not-yet-due messages stay queued"
    # Nothing else is due until the lease runs out; then the same message comes back.
    assert await store.claim(NOW + 29, limit=10, lease=30) == []
    again = await store.claim(NOW + 31, limit=10, lease=30)
    assert {c.id for c in again} == {old.id, new.id}
    assert all(c.attempt == 2 for c in again)


async def test_second_process_on_the_same_database_is_refused(store: Store) -> None:
    with pytest.raises(StoreLocked):
        await Store.open(store.path)


async def test_foreign_sqlite_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not one of dispatchd's"):
        await Store.open(path)


async def test_garbage_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot use"):
        await Store.open(path)


# The hot statements must use an index: their cost is O(log n) in stored messages.
HOT_QUERIES = {
    "claim due": (
        store_mod.CLAIM_DUE,
        {"now": NOW, "limit": 10, "lease_until": NOW},
        "messages_due",
    ),
    "claim expired lease": (
        store_mod.CLAIM_LEASE_EXPIRED,
        {"now": NOW, "limit": 10, "lease_until": NOW},
        "messages_leased",
    ),
    "mark sent": (store_mod.MARK_SENT, ("p", "x", NOW, "id"), "PRIMARY KEY"),
    "apply report": (
        store_mod.APPLY_REPORT,
        ("delivered", "x", None, None, NOW, "id"),
        "PRIMARY KEY",
    ),
    "requeue": (store_mod.REQUEUE, (NOW, "c", "d", NOW, "id"), "PRIMARY KEY"),
    "report by provider id": (store_mod.SELECT_BY_PROVIDER_ID, ("x",), "provider_message_id"),
    "next due": (store_mod.NEXT_DUE, (), "messages_due"),
    "list by number": (
        store_mod.LIST_MESSAGES[(True, False)],
        ("+17034573322", "~", 10),
        "messages_to_number",
    ),
}


@pytest.mark.parametrize("name", sorted(HOT_QUERIES))
async def test_hot_queries_use_an_index(store: Store, name: str) -> None:
    sql, params, index = HOT_QUERIES[name]
    plan = await store.explain(sql, params)
    print(f"{name}: {plan}")
    assert not any(step.startswith("SCAN messages") for step in plan), plan
    assert any(index in step for step in plan), plan


async def test_a_failing_write_alone_leaves_the_store_usable(store: Store) -> None:
    ids = IdGenerator()
    msg = _message(ids)
    await store.insert(msg)
    with pytest.raises(sqlite3.IntegrityError):
        await store.insert(msg)
    await store.insert(_message(ids))
    assert store_mod.count_messages(store.path) == 2


async def test_a_version_1_database_is_upgraded_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    ids = IdGenerator()
    store = await Store.open(path)
    kept = _message(ids)
    await store.insert(kept)
    await store.close()
    # Turn the file back into what version 1 wrote: no scheduling, validity or callback columns.
    conn = sqlite3.connect(path)
    for trigger in ("webhooks_on_insert", "webhooks_on_status"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE webhooks")
    conn.execute("DROP TABLE idempotency_keys")
    for column in ("send_at", "validity_period", "status_callback_url"):
        conn.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    store = await Store.open(path)
    try:
        got = await store.get(kept.id)
        assert got is not None and got.body == "hello" and got.send_at is None
        fresh = _message(ids)
        await store.insert(fresh)
        assert (await store.get(fresh.id)) is not None
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
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
    store = await Store.open(path)
    msg = replace(_message(ids), status_callback_url="http://hooks.example/s")
    await store.insert(msg)
    await store.close()
    conn = sqlite3.connect(path)
    for trigger in ("webhooks_on_insert", "webhooks_on_status"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE webhooks")
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

    store = await Store.open(path)
    try:
        due = await store_mod.due_webhooks(store, NOW + 100, 10, [])
        assert [(w.id, w.status, w.attempts) for w in due] == [
            (1, "queued", 1),
            (5, "sending", 0),
            (7, "queued", 2),
        ]
        # The recreated trigger queues a change behind the message's pending callbacks.
        assert [c.id for c in await store.claim(NOW, limit=1, lease=30)] == [msg.id]
        got = await store.get(msg.id)
        assert got is not None and [c.status for c in got.callbacks][-1] == Status.SENDING
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION == 3
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
