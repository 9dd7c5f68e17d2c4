"""The database file: schema, migrations, pragmas, the process lock and connection setup."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dispatchd.domain.errors import StoreError, StoreLocked
from dispatchd.store.sqlite.messages import FINALS

logger = logging.getLogger("dispatchd.store.sqlite")

APPLICATION_ID = 0x53_4D_53_44  # "SMSD": tells our databases from foreign SQLite files
SCHEMA_VERSION = 5

# The body of a status callback, rendered in SQL so the triggers can queue it in the very
# transaction that changes the status.
_CALLBACK_BODY = """json_object('id', new.id, 'status', new.status, 'to_number', new.to_number,
            'provider', new.provider,
            'error', CASE WHEN new.error_code IS NULL THEN NULL
                ELSE json_object('code', new.error_code, 'detail', new.error_detail) END,
            'at', strftime('%Y-%m-%dT%H:%M:%fZ', new.updated_at, 'unixepoch'))"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    to_number TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    segments INTEGER NOT NULL,
    encoding TEXT NOT NULL,
    provider TEXT,
    provider_message_id TEXT,
    error_code TEXT,
    error_detail TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    next_attempt_at REAL,
    lease_until REAL,
    lease_token TEXT,
    send_at REAL,
    validity_period REAL,
    status_callback_url TEXT
) WITHOUT ROWID;
-- Partial indexes keep the outbox claim O(log n) however many final messages pile up.
CREATE INDEX IF NOT EXISTS messages_due ON messages(next_attempt_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS messages_leased ON messages(lease_until) WHERE status = 'sending';
CREATE INDEX IF NOT EXISTS messages_expiry ON messages(expires_at) WHERE status = 'queued';
-- `updated_at` of a sent message is when it was sent (the report timeout's sweep), of a
-- final one when it ended (retention's purge).
CREATE INDEX IF NOT EXISTS messages_sent ON messages(updated_at) WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS messages_finished ON messages(updated_at) WHERE status IN ({FINALS});
CREATE INDEX IF NOT EXISTS messages_to_number ON messages(to_number, id);
CREATE INDEX IF NOT EXISTS messages_status ON messages(status, id);
CREATE INDEX IF NOT EXISTS messages_provider_message_id ON messages(provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    started_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    latency_ms REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts(message_id);
CREATE TABLE IF NOT EXISTS history (
    message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at REAL NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS history_message ON history(message_id);
CREATE TABLE IF NOT EXISTS suppressions (
    number TEXT PRIMARY KEY,
    at REAL NOT NULL,
    reason TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
-- Idempotency keys (Stripe semantics): the first response to a key, replayed to repeats.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    location TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys(expires_at);
-- Status callbacks to clients: a durable outbox, delivered in order per message. Only the
-- oldest pending row of a message has a next_attempt_at; the rows behind it wait with NULL
-- (outside webhooks_due) until settling it gives the next one its turn.
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    url TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL,
    last_http_status INTEGER,
    last_error TEXT,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks(next_attempt_at)
    WHERE state = 'pending' AND next_attempt_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhooks_message ON webhooks(message_id, id);
-- Triggers, so every status change, whichever statement makes it, queues its callback in the
-- same transaction: none is lost to a crash between the change and the queueing.
CREATE TRIGGER IF NOT EXISTS webhooks_on_insert AFTER INSERT ON messages
WHEN new.status_callback_url IS NOT NULL
BEGIN
    INSERT INTO webhooks (message_id, url, status, payload, created_at, next_attempt_at)
    VALUES (new.id, new.status_callback_url, new.status,
        {_CALLBACK_BODY},
        new.updated_at, new.updated_at);
END;
-- Behind a pending callback of the same message, the new one waits (NULL: not due).
CREATE TRIGGER IF NOT EXISTS webhooks_on_status AFTER UPDATE OF status ON messages
WHEN new.status_callback_url IS NOT NULL AND new.status IS NOT old.status
BEGIN
    INSERT INTO webhooks (message_id, url, status, payload, created_at, next_attempt_at)
    VALUES (new.id, new.status_callback_url, new.status,
        {_CALLBACK_BODY},
        new.updated_at,
        CASE WHEN EXISTS (
            SELECT 1 FROM webhooks INDEXED BY webhooks_message
            WHERE message_id = new.id AND state = 'pending')
        THEN NULL ELSE new.updated_at END);
END;
"""

# Version 3: waiting callbacks get next_attempt_at NULL, so the column loses NOT NULL (a
# table rebuild in SQLite). The triggers are dropped for SCHEMA to recreate, new style.
_WEBHOOKS_V3 = """
CREATE TABLE webhooks_v3 (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    url TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL,
    last_http_status INTEGER,
    last_error TEXT,
    finished_at REAL
)
"""
_WEBHOOK_COLUMNS = (
    "id, message_id, url, status, payload, state, attempts, created_at, next_attempt_at, "
    "last_http_status, last_error, finished_at"
)
# Every pending row but the oldest of its message waits for its turn.
_WAIT_BEHIND_HEAD = """
UPDATE webhooks SET next_attempt_at = NULL
WHERE state = 'pending' AND id NOT IN (
    SELECT min(id) FROM webhooks WHERE state = 'pending' GROUP BY message_id)
"""


def _waiting_webhooks(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TRIGGER IF EXISTS webhooks_on_insert")
    conn.execute("DROP TRIGGER IF EXISTS webhooks_on_status")
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'webhooks'"
    ).fetchone()
    if not has_table:
        return  # from version 1: SCHEMA creates it
    conn.execute(_WEBHOOKS_V3)
    conn.execute(
        f"INSERT INTO webhooks_v3 ({_WEBHOOK_COLUMNS}) SELECT {_WEBHOOK_COLUMNS} FROM webhooks"
    )
    conn.execute("DROP TABLE webhooks")  # and its indexes, which SCHEMA recreates
    conn.execute("ALTER TABLE webhooks_v3 RENAME TO webhooks")
    conn.execute(_WAIT_BEHIND_HEAD)


# Upgrades from each older schema version, run before SCHEMA (which creates what is missing):
# statements, or a function of the connection when an upgrade depends on what is there.
MIGRATIONS: dict[int, list[str | Callable[[sqlite3.Connection], None]]] = {
    2: [
        "ALTER TABLE messages ADD COLUMN send_at REAL",
        "ALTER TABLE messages ADD COLUMN validity_period REAL",
        "ALTER TABLE messages ADD COLUMN status_callback_url TEXT",
    ],
    3: [_waiting_webhooks],
    # Version 4: fenced leases. A claim's token must come back with every later transition.
    # Rows left `sending` by an older version have none; opening requeues them anyway.
    4: ["ALTER TABLE messages ADD COLUMN lease_token TEXT"],
    # Version 5 adds only indexes (SCHEMA creates them) and incremental auto-vacuum, which
    # `_incremental_vacuum` switches on before the migration transaction.
}


# Retrying briefly absorbs another process (e.g. sqlite3 CLI) holding the write lock.
BUSY_TIMEOUT_MS = 5000
# Per connection. With millions of stored messages the default 2 MiB cache misses on
# every index insert; 32 MiB keeps the hot index pages resident (RSS stays well bounded).
CACHE_KIB = 32 * 1024


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    """Check the file is ours (or empty), then bring the schema up to date."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id != APPLICATION_ID and tables:
        raise StoreError("the file is an SQLite database, but not one of dispatchd's")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this dispatchd "
            f"understands ({SCHEMA_VERSION}); upgrade dispatchd"
        )
    _incremental_vacuum(conn, has_tables=bool(tables))
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise StoreError("the database cannot use write-ahead logging")
    # FULL syncs the WAL on every commit: a 202 survives power loss, not just a crash.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if tables:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for step in MIGRATIONS.get(target, []):
                    if isinstance(step, str):
                        conn.execute(step)
                    else:
                        step(conn)
        # executescript would COMMIT our IMMEDIATE transaction, so run statement by statement.
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# PRAGMA auto_vacuum's value for INCREMENTAL.
_INCREMENTAL = 2


def _incremental_vacuum(conn: sqlite3.Connection, *, has_tables: bool) -> None:
    """Let purged pages go back to the file system (`PRAGMA incremental_vacuum`).

    The mode is fixed when the first table is created; a file made before version 5 has
    none, and only a full VACUUM (a rewrite of the file, once) can switch it on.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
        return
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if has_tables:
        logger.info("event=vacuum_for_incremental_auto_vacuum reason=schema_upgrade")
        started = time.monotonic()
        conn.execute("VACUUM")
        logger.info("event=vacuum_done seconds=%.1f", time.monotonic() - started)


def _lock(path: Path) -> IO[bytes]:
    """Take an exclusive lock beside the database, so one process alone owns its leases."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(f"{path}.lock", "wb")  # noqa: SIM115 - held for the store's lifetime
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock_file.close()
        raise StoreLocked(f"another dispatchd process is using {path}") from exc
    return lock_file


def _statements(script: str) -> list[str]:
    """Split a script into statements; a trigger's body keeps its inner semicolons."""
    out: list[str] = []
    current = ""
    for line in script.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current += line + "\n"
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out
