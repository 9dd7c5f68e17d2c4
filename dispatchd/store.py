"""SQLite persistence: the only module that speaks SQL.

Writes go through one connection on one thread and are group-committed: every
write requested while the previous transaction was being committed is applied
in the next single transaction, so many concurrent requests share one fsync.
Reads use a separate aiosqlite connection; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import aiosqlite

from dispatchd.errors import StoreError, StoreLocked, StoreUnavailable
from dispatchd.ids import IdGenerator
from dispatchd.models import (
    FINAL_STATUSES,
    Attempt,
    DeliveryReport,
    ErrorCode,
    HistoryEntry,
    Message,
    Outcome,
    Status,
    StatusCallback,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], T]

APPLICATION_ID = 0x53_4D_53_44  # "SMSD": tells our databases from foreign SQLite files
SCHEMA_VERSION = 2

SCHEMA = """
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
    send_at REAL,
    validity_period REAL,
    status_callback_url TEXT
) WITHOUT ROWID;
-- Partial indexes keep the outbox claim O(log n) however many final messages pile up.
CREATE INDEX IF NOT EXISTS messages_due ON messages(next_attempt_at) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS messages_leased ON messages(lease_until) WHERE status = 'sending';
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
-- Status callbacks to clients: a durable outbox, delivered in order per message.
CREATE TABLE IF NOT EXISTS webhooks (
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
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks(next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhooks_message ON webhooks(message_id, id);
-- Triggers, so every status change, whichever statement makes it, queues its callback in the
-- same transaction: none is lost to a crash between the change and the queueing.
CREATE TRIGGER IF NOT EXISTS webhooks_on_insert AFTER INSERT ON messages
WHEN new.status_callback_url IS NOT NULL
BEGIN
    INSERT INTO webhooks (message_id, url, status, payload, created_at, next_attempt_at)
    VALUES (new.id, new.status_callback_url, new.status,
        json_object('id', new.id, 'status', new.status, 'to_number', new.to_number,
            'provider', new.provider,
            'error', CASE WHEN new.error_code IS NULL THEN NULL
                ELSE json_object('code', new.error_code, 'detail', new.error_detail) END,
            'at', strftime('%Y-%m-%dT%H:%M:%fZ', new.updated_at, 'unixepoch')),
        new.updated_at, new.updated_at);
END;
CREATE TRIGGER IF NOT EXISTS webhooks_on_status AFTER UPDATE OF status ON messages
WHEN new.status_callback_url IS NOT NULL AND new.status IS NOT old.status
BEGIN
    INSERT INTO webhooks (message_id, url, status, payload, created_at, next_attempt_at)
    VALUES (new.id, new.status_callback_url, new.status,
        json_object('id', new.id, 'status', new.status, 'to_number', new.to_number,
            'provider', new.provider,
            'error', CASE WHEN new.error_code IS NULL THEN NULL
                ELSE json_object('code', new.error_code, 'detail', new.error_detail) END,
            'at', strftime('%Y-%m-%dT%H:%M:%fZ', new.updated_at, 'unixepoch')),
        new.updated_at, new.updated_at);
END;
"""

# Upgrades from each older schema version, run before SCHEMA (which creates what is missing).
MIGRATIONS = {
    2: [
        "ALTER TABLE messages ADD COLUMN send_at REAL",
        "ALTER TABLE messages ADD COLUMN validity_period REAL",
        "ALTER TABLE messages ADD COLUMN status_callback_url TEXT",
    ],
}

MESSAGE_COLUMNS = (
    "id, to_number, body, status, segments, encoding, provider, provider_message_id, "
    "error_code, error_detail, attempt_count, created_at, updated_at, expires_at, "
    "next_attempt_at, send_at, validity_period, status_callback_url"
)
INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 18)})"
SAVE_RESPONSE = (
    "INSERT OR REPLACE INTO idempotency_keys (scope, key, request_hash, status, body, location, "
    "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_HISTORY = "INSERT INTO history (message_id, status, at, detail) VALUES (?, ?, ?, ?)"
INSERT_ATTEMPT = (
    "INSERT INTO attempts (message_id, provider, started_at, outcome, http_status, latency_ms, "
    "error) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
CLAIM_DUE = """
UPDATE messages SET status = 'sending', lease_until = :lease_until, updated_at = :now,
    attempt_count = attempt_count + 1, next_attempt_at = NULL
WHERE id IN (
    SELECT id FROM messages INDEXED BY messages_due
    WHERE status = 'queued' AND next_attempt_at <= :now
    ORDER BY next_attempt_at LIMIT :limit)
RETURNING id, to_number, body, attempt_count, expires_at
"""
CLAIM_LEASE_EXPIRED = """
UPDATE messages SET lease_until = :lease_until, updated_at = :now,
    attempt_count = attempt_count + 1
WHERE id IN (
    SELECT id FROM messages INDEXED BY messages_leased
    WHERE status = 'sending' AND lease_until <= :now
    ORDER BY lease_until LIMIT :limit)
RETURNING id, to_number, body, attempt_count, expires_at
"""
# INDEXED BY pins the partial indexes: without statistics the planner may prefer
# messages_status, which would sort every queued message to find the oldest.
NEXT_DUE = (
    "SELECT min(next_attempt_at) FROM messages INDEXED BY messages_due WHERE status = 'queued'"
)
NEXT_LEASE_END = (
    "SELECT min(lease_until) FROM messages INDEXED BY messages_leased WHERE status = 'sending'"
)
RELEASE_ALL_LEASES = """
UPDATE messages SET status = 'queued', next_attempt_at = :now, lease_until = NULL,
    updated_at = :now
WHERE status = 'sending'
RETURNING id
"""
RELEASE_ONE = """
UPDATE messages SET status = 'queued', next_attempt_at = ?, lease_until = NULL, updated_at = ?
WHERE id = ? AND status = 'sending'
"""
MARK_SENT = """
UPDATE messages SET status = 'sent', provider = ?, provider_message_id = ?, lease_until = NULL,
    error_code = NULL, error_detail = NULL, updated_at = ?
WHERE id = ? AND status = 'sending'
"""
# A report that raced ahead already finalised the message: keep its status, record who sent it.
MARK_SENT_LATE = """
UPDATE messages SET provider = ?, provider_message_id = coalesce(provider_message_id, ?),
    lease_until = NULL
WHERE id = ?
"""
REQUEUE = """
UPDATE messages SET status = 'queued', next_attempt_at = ?, lease_until = NULL,
    error_code = ?, error_detail = ?, updated_at = ?
WHERE id = ? AND status = 'sending'
"""
FINISH_UNSENT = """
UPDATE messages SET status = ?, error_code = ?, error_detail = ?, lease_until = NULL,
    next_attempt_at = NULL, updated_at = ?
WHERE id = ? AND status IN ('queued', 'sending')
"""
SELECT_STATUS = "SELECT status, to_number FROM messages WHERE id = ?"
APPLY_REPORT = """
UPDATE messages SET status = ?, provider_message_id = coalesce(provider_message_id, ?),
    error_code = ?, error_detail = ?, lease_until = NULL, next_attempt_at = NULL, updated_at = ?
WHERE id = ?
"""
INSERT_SUPPRESSION = "INSERT OR IGNORE INTO suppressions (number, at, reason) VALUES (?, ?, ?)"
QUEUED_TO_NUMBER = "SELECT id FROM messages WHERE to_number = ? AND status = 'queued'"
SELECT_MESSAGE = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?"
SELECT_ATTEMPTS = (
    "SELECT provider, started_at, outcome, http_status, latency_ms, error FROM attempts "
    "WHERE message_id = ? ORDER BY started_at, rowid"
)
SELECT_HISTORY = "SELECT status, at, detail FROM history WHERE message_id = ? ORDER BY rowid"
SELECT_BY_PROVIDER_ID = "SELECT id FROM messages WHERE provider_message_id = ? LIMIT 1"
SELECT_SUPPRESSIONS = "SELECT number FROM suppressions"
# Newest first by id (UUIDv7 sorts by creation time); the cursor is the last id returned.
LIST_MESSAGES = {
    (False, False): f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id < ? ORDER BY id DESC LIMIT ?",
    (True, False): f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE to_number = ? AND id < ? "
    "ORDER BY id DESC LIMIT ?",
    (False, True): f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE status = ? AND id < ? "
    "ORDER BY id DESC LIMIT ?",
    (True, True): f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE to_number = ? AND status = ? "
    "AND id < ? ORDER BY id DESC LIMIT ?",
}
COUNT_BY_STATUS = "SELECT status, count(*) FROM messages GROUP BY status"
# Allocates a fresh page and commits it, as an insert would: succeeds only with space to write.
PROBE_WRITE = (
    "INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', hex(randomblob(2048)))"
)
PROBE_UNDO = "DELETE FROM meta WHERE key = 'write_probe'"
GET_META = "SELECT value FROM meta WHERE key = ?"
PUT_META = "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)"

# Retrying briefly absorbs another process (e.g. sqlite3 CLI) holding the write lock.
BUSY_TIMEOUT_MS = 5000
# Per connection. With millions of stored messages the default 2 MiB cache misses on
# every index insert; 32 MiB keeps the hot index pages resident (RSS stays well bounded).
CACHE_KIB = 32 * 1024


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message reserved for one delivery attempt."""

    id: str
    to_number: str
    body: str
    attempt: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class SavedResponse:
    """The response to an idempotent request, stored in the same transaction as its effect."""

    scope: str
    key: str
    request_hash: str
    status: int
    body: str
    location: str | None
    created_at: float
    expires_at: float

    def row(self) -> tuple[Any, ...]:
        return (
            self.scope,
            self.key,
            self.request_hash,
            self.status,
            self.body,
            self.location,
            self.created_at,
            self.expires_at,
        )


@dataclass(frozen=True, slots=True)
class ReportResult:
    """What applying a delivery report did."""

    found: bool
    applied: bool
    previous: Status | None = None
    number: str | None = None
    requeued_invalid: tuple[str, ...] = ()


def _message_from_row(row: Sequence[Any]) -> Message:
    return Message(
        id=row[0],
        to_number=row[1],
        body=row[2],
        status=Status(row[3]),
        segments=row[4],
        encoding=row[5],
        provider=row[6],
        provider_message_id=row[7],
        error_code=row[8],
        error_detail=row[9],
        attempt_count=row[10],
        created_at=row[11],
        updated_at=row[12],
        expires_at=row[13],
        next_attempt_at=row[14],
        send_at=row[15],
        validity_period=row[16],
        status_callback_url=row[17],
    )


def _message_params(msg: Message) -> tuple[Any, ...]:
    return (
        msg.id,
        msg.to_number,
        msg.body,
        msg.status.value,
        msg.segments,
        msg.encoding,
        msg.provider,
        msg.provider_message_id,
        msg.error_code,
        msg.error_detail,
        msg.attempt_count,
        msg.created_at,
        msg.updated_at,
        msg.expires_at,
        msg.next_attempt_at,
        msg.send_at,
        msg.validity_period,
        msg.status_callback_url,
    )


def _is_unavailable(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    transient = {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
    }
    if code is None:
        return isinstance(exc, sqlite3.OperationalError)
    return (code & 0xFF) in transient


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
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise StoreError("the database cannot use write-ahead logging")
    # FULL syncs the WAL on every commit: a 202 survives power loss, not just a crash.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        if tables:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(target, []):
                    conn.execute(statement)
        # executescript would COMMIT our IMMEDIATE transaction, so run statement by statement.
        for statement in _statements(SCHEMA):
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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


class Store:
    """Durable messages, attempts, history and suppressions."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
        executor: ThreadPoolExecutor,
        lock_file: IO[bytes],
        *,
        ordered: bool = False,
    ) -> None:
        self.path = path
        # Per-recipient ordering: claim a message only after every earlier one to its number.
        self._claim_sql = (
            (CLAIM_LEASE_EXPIRED_ORDERED, CLAIM_DUE_ORDERED, NEXT_DUE_ORDERED)
            if ordered
            else (CLAIM_LEASE_EXPIRED, CLAIM_DUE, NEXT_DUE)
        )
        self._writer = writer
        self._reader = reader
        self._executor = executor
        self._lock_file = lock_file
        self._pending: list[tuple[WriteOp[Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self.healthy = True
        self.last_error: str | None = None

    @classmethod
    async def open(cls, path: Path, *, ordered: bool = False) -> Store:
        """Open (creating if needed) the database at `path`; raise StoreError if unusable.

        `ordered`: hand messages to one number to providers in acceptance order.
        """
        lock_file = _lock(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatchd-writer")
        loop = asyncio.get_running_loop()
        try:
            writer = await loop.run_in_executor(executor, _connect, path)
            await loop.run_in_executor(executor, _prepare, writer)
            await loop.run_in_executor(executor, _index_unfinished, writer, ordered)
            reader = await aiosqlite.connect(path)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.DatabaseError as exc:
            executor.shutdown(wait=False)
            lock_file.close()
            raise StoreError(f"cannot use {path}: {exc}") from exc
        except StoreError as exc:
            executor.shutdown(wait=False)
            lock_file.close()
            raise StoreError(f"cannot use {path}: {exc.message}") from exc
        store = cls(path, writer, reader, executor, lock_file, ordered=ordered)
        store._flusher = asyncio.create_task(store._flush_loop(), name="store-group-commit")
        return store

    @property
    def closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Commit what is pending, then close both connections and release the lock."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        await self._reader.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._writer.close)
        self._executor.shutdown(wait=True)
        self._lock_file.close()

    # -- group commit ---------------------------------------------------------------------

    async def _write(self, op: WriteOp[T]) -> T:
        if self._closing:
            raise StoreUnavailable("the store is shutting down")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                ops = [op for op, _ in batch]
                results = await loop.run_in_executor(self._executor, self._commit, ops)
                for (_, fut), (ok, value) in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
            if self._closing and not self._pending:
                return

    def _commit(self, ops: list[WriteOp[Any]]) -> list[tuple[bool, Any]]:
        """Run ops in one transaction; if one fails, isolate it by running each alone."""
        try:
            return [(True, v) for v in self._transaction(ops)]
        except StoreUnavailable as exc:
            return [(False, exc)] * len(ops)
        except Exception as exc:
            if len(ops) == 1:
                return [(False, exc)]
        out: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                out.append((True, self._transaction([op])[0]))
            except Exception as exc:
                out.append((False, exc))
        return out

    def _transaction(self, ops: list[WriteOp[Any]]) -> list[Any]:
        conn = self._writer
        changes_before = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                values = _run_ops(conn, ops)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                self._mark_unhealthy(str(exc))
                raise StoreUnavailable(f"the database cannot take writes: {exc}") from exc
            raise
        # A transaction that wrote nothing (an empty claim) proves nothing about free space.
        if not self.healthy and conn.total_changes != changes_before:
            logger.info("event=store_recovered")
            self.healthy = True
            self.last_error = None
        return values

    def _mark_unhealthy(self, error: str) -> None:
        if self.healthy:
            logger.error("event=store_unavailable error=%r", error)
        self.healthy = False
        self.last_error = error

    async def probe(self) -> bool:
        """Try a real write (a page's worth, then undone); True when the database takes writes."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(PROBE_WRITE)
            conn.execute(PROBE_UNDO)

        with contextlib.suppress(StoreUnavailable):
            await self._write(op)
        return self.healthy

    # -- writes ---------------------------------------------------------------------------

    async def insert(
        self, msg: Message, detail: str | None = None, saved: SavedResponse | None = None
    ) -> None:
        """Persist a new message and its first history entry (and `saved`), durably."""
        history = (msg.id, msg.status.value, msg.created_at, detail)
        if saved is None:
            await self._write(_Insert(_message_params(msg), history))
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_MESSAGE, _message_params(msg))
            conn.execute(INSERT_HISTORY, history)
            conn.execute(SAVE_RESPONSE, saved.row())

        await self._write(op)

    async def insert_many(
        self, msgs: Sequence[Message], detail: str | None = None, saved: SavedResponse | None = None
    ) -> None:
        """Persist new messages (and `saved`) in one transaction: all of them or none."""

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(INSERT_MESSAGE, [_message_params(m) for m in msgs])
            conn.executemany(
                INSERT_HISTORY, [(m.id, m.status.value, m.created_at, detail) for m in msgs]
            )
            if saved is not None:
                conn.execute(SAVE_RESPONSE, saved.row())

        await self._write(op)

    async def claim(self, now: float, limit: int, lease: float) -> list[Claimed]:
        """Reserve up to `limit` due messages (expired leases first) until `now + lease`."""

        def op(conn: sqlite3.Connection) -> list[Claimed]:
            params = {"now": now, "lease_until": now + lease, "limit": limit}
            lease_expired, due, _ = self._claim_sql
            rows = conn.execute(lease_expired, params).fetchall()
            if len(rows) < limit:
                params["limit"] = limit - len(rows)
                rows += conn.execute(due, params).fetchall()
            conn.executemany(
                INSERT_HISTORY, [(r[0], Status.SENDING.value, now, f"attempt {r[3]}") for r in rows]
            )
            return [Claimed(r[0], r[1], r[2], r[3], r[4]) for r in rows]

        return await self._write(op)

    async def release_all_leases(self, now: float) -> int:
        """Requeue messages a previous process claimed but never finished."""

        def op(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(RELEASE_ALL_LEASES, {"now": now}).fetchall()]
            conn.executemany(
                INSERT_HISTORY,
                [(i, Status.QUEUED.value, now, "requeued after restart") for i in ids],
            )
            return len(ids)

        return await self._write(op)

    async def release(self, ids: Sequence[str], at: float, detail: str) -> int:
        """Give leased messages back to the queue, due at `at`, without waiting for the lease."""

        def op(conn: sqlite3.Connection) -> int:
            return sum(
                _transition(conn, i, RELEASE_ONE, (at, at, i), Status.QUEUED, at, detail)
                for i in ids
            )

        return await self._write(op)

    async def mark_sent(
        self,
        msg_id: str,
        provider: str,
        provider_message_id: str | None,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """Record acceptance by `provider`; False if a report had already finalised it."""

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, msg_id, attempts)
            cur = conn.execute(MARK_SENT, (provider, provider_message_id, now, msg_id))
            if cur.rowcount:
                conn.execute(INSERT_HISTORY, (msg_id, Status.SENT.value, now, f"via {provider}"))
                return True
            conn.execute(MARK_SENT_LATE, (provider, provider_message_id, msg_id))
            return False

        return await self._write(op)

    async def requeue(
        self,
        msg_id: str,
        at: float,
        code: ErrorCode,
        detail: str,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """Put a message back in the queue for another attempt at `at`."""

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, msg_id, attempts)
            params = (at, code.value, detail, now, msg_id)
            return _transition(conn, msg_id, REQUEUE, params, Status.QUEUED, now, detail)

        return await self._write(op)

    async def finish_unsent(
        self,
        msg_id: str,
        status: Status,
        code: ErrorCode,
        detail: str,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """End a message that was never accepted (failed, expired, invalid)."""

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, msg_id, attempts)
            return _finish_unsent(conn, msg_id, status, code, detail, now)

        return await self._write(op)

    async def apply_report(
        self, msg_id: str, report: DeliveryReport, provider: str | None, now: float
    ) -> ReportResult:
        """Apply a delivery report unless the message is already final; suppress on invalid."""

        def op(conn: sqlite3.Connection) -> ReportResult:
            row = conn.execute(SELECT_STATUS, (msg_id,)).fetchone()
            if row is None:
                return ReportResult(found=False, applied=False)
            current, number = Status(row[0]), row[1]
            source = f" from {provider}" if provider else ""
            if current in FINAL_STATUSES:
                detail = f"report '{report.status}'{source} ignored: the message is already final"
                conn.execute(INSERT_HISTORY, (msg_id, current.value, now, detail))
                return ReportResult(found=True, applied=False, previous=current, number=number)
            code, err = _report_error(report.status)
            conn.execute(
                APPLY_REPORT,
                (report.status.value, report.provider_message_id, code, err, now, msg_id),
            )
            conn.execute(
                INSERT_HISTORY, (msg_id, report.status.value, now, f"delivery report{source}")
            )
            suppressed: tuple[str, ...] = ()
            if report.status is Status.INVALID:
                suppressed = _suppress(conn, number, now, f"reported invalid for {msg_id}")
            return ReportResult(True, True, current, number, suppressed)

        return await self._write(op)

    async def ensure_secret(self, candidate: str) -> str:
        """Store `candidate` as the callback secret unless one exists; return the stored one."""

        def op(conn: sqlite3.Connection) -> str:
            conn.execute(PUT_META, ("callback_secret", candidate))
            return str(conn.execute(GET_META, ("callback_secret",)).fetchone()[0])

        return await self._write(op)

    # -- reads ----------------------------------------------------------------------------

    async def _one(self, sql: str, params: Sequence[Any]) -> Any:
        """First row of a query, fetched in the same thread hop as the execute.

        A cursor left open across an await would hold the reader's snapshot, and
        other reads interleaved on this connection would miss fresh commits.
        """
        rows = await self._reader.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def get(self, msg_id: str) -> Message | None:
        """The message with its attempts, history and status callbacks, or None."""
        try:
            row = await self._one(SELECT_MESSAGE, (msg_id,))
            if row is None:
                return None
            attempts = await self._reader.execute_fetchall(SELECT_ATTEMPTS, (msg_id,))
            history = await self._reader.execute_fetchall(SELECT_HISTORY, (msg_id,))
            callbacks = await self._reader.execute_fetchall(SELECT_CALLBACKS, (msg_id,))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
        msg = _message_from_row(row)
        msg = _with_details(msg, attempts, history)
        return replace(msg, callbacks=_callbacks_from_rows(callbacks))

    async def search(
        self, *, to_number: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> list[Message]:
        """Newest first, after `cursor` (an id) when given."""
        params: list[Any] = []
        if to_number is not None:
            params.append(to_number)
        if status is not None:
            params.append(status.value)
        # Every id sorts below "~", so no cursor means "from the newest".
        params += [cursor or "~", limit]
        sql = LIST_MESSAGES[(to_number is not None, status is not None)]
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
        return [_message_from_row(r) for r in rows]

    async def id_for_provider_message(self, provider_message_id: str) -> str | None:
        row = await self._one(SELECT_BY_PROVIDER_ID, (provider_message_id,))
        return None if row is None else str(row[0])

    async def suppressed_numbers(self) -> set[str]:
        rows = await self._reader.execute_fetchall(SELECT_SUPPRESSIONS)
        return {r[0] for r in rows}

    async def next_wakeup(self) -> float | None:
        """Earliest time a queued message falls due or a lease runs out."""
        times = []
        for sql in (self._claim_sql[2], NEXT_LEASE_END):
            row = await self._one(sql, ())
            if row and row[0] is not None:
                times.append(float(row[0]))
        return min(times) if times else None

    async def counts(self) -> dict[str, int]:
        rows = await self._reader.execute_fetchall(COUNT_BY_STATUS)
        return {r[0]: r[1] for r in rows}

    async def explain(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[str]:
        """The query plan of `sql` (for tests proving the hot queries use indexes)."""
        rows = await self._reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        return [str(r[3]) for r in rows]


@dataclass(frozen=True, slots=True)
class _Insert:
    """A new message; batched with the other inserts of its commit into one executemany."""

    message: tuple[Any, ...]
    history: tuple[Any, ...]

    def __call__(self, conn: sqlite3.Connection) -> None:
        conn.execute(INSERT_MESSAGE, self.message)
        conn.execute(INSERT_HISTORY, self.history)


def _run_ops(conn: sqlite3.Connection, ops: list[WriteOp[Any]]) -> list[Any]:
    """Apply ops in one transaction; new messages go first, all at once."""
    inserts = [op for op in ops if isinstance(op, _Insert)]
    if len(inserts) < 2:
        return [op(conn) for op in ops]
    conn.executemany(INSERT_MESSAGE, [i.message for i in inserts])
    conn.executemany(INSERT_HISTORY, [i.history for i in inserts])
    return [None if isinstance(op, _Insert) else op(conn) for op in ops]


def _insert_attempts(conn: sqlite3.Connection, msg_id: str, attempts: Iterable[Attempt]) -> None:
    rows = [
        (msg_id, a.provider, a.started_at, a.outcome, a.http_status, a.latency_ms, a.error)
        for a in attempts
    ]
    conn.executemany(INSERT_ATTEMPT, rows)


def _report_error(status: Status) -> tuple[str | None, str | None]:
    if status is Status.FAILED:
        return ErrorCode.REPORTED_FAILED, "The provider reported the message as not delivered."
    if status is Status.INVALID:
        return ErrorCode.REPORTED_INVALID.value, "The provider reported the number as invalid."
    return None, None


def _suppress(conn: sqlite3.Connection, number: str, now: float, reason: str) -> tuple[str, ...]:
    """Suppress `number` and end its queued messages as invalid; return their ids."""
    conn.execute(INSERT_SUPPRESSION, (number, now, reason))
    ids = tuple(r[0] for r in conn.execute(QUEUED_TO_NUMBER, (number,)).fetchall())
    detail = "The number was reported invalid; the message was not sent."
    for msg_id in ids:
        _finish_unsent(conn, msg_id, Status.INVALID, ErrorCode.NUMBER_SUPPRESSED, detail, now)
    return ids


def _transition(
    conn: sqlite3.Connection,
    msg_id: str,
    sql: str,
    params: Sequence[Any],
    status: Status,
    at: float,
    detail: str,
) -> bool:
    """Run a guarded status update; record it in history only if it applied."""
    if not conn.execute(sql, params).rowcount:
        return False
    conn.execute(INSERT_HISTORY, (msg_id, status.value, at, detail))
    return True


def _finish_unsent(
    conn: sqlite3.Connection,
    msg_id: str,
    status: Status,
    code: ErrorCode,
    detail: str,
    now: float,
) -> bool:
    params = (status.value, code.value, detail, now, msg_id)
    return _transition(conn, msg_id, FINISH_UNSENT, params, status, now, detail)


def _with_details(
    msg: Message, attempts: Iterable[Sequence[Any]], history: Iterable[Sequence[Any]]
) -> Message:
    return replace(
        msg,
        attempts=tuple(Attempt(r[0], r[1], Outcome(r[2]), r[3], r[4], r[5]) for r in attempts),
        history=tuple(HistoryEntry(Status(r[0]), r[1], r[2]) for r in history),
    )


def database_files(path: Path) -> list[Path]:
    """The database and its WAL/shm/lock companions (for tests and cleanup)."""
    return [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", ".lock")]


# -- offline helpers for the benchmark (synchronous; never used by the running daemon) ----

COUNT_MESSAGES = "SELECT count(*) FROM messages"
COUNT_UNFINISHED = "SELECT count(*) FROM messages WHERE status IN ('queued', 'sending', 'sent')"
DELIVERY_LATENCIES = (
    "SELECT (updated_at - created_at) * 1000 FROM messages "
    "WHERE status = 'delivered' AND created_at >= ?"
)


def _read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def count_messages(path: Path) -> int:
    """How many messages the database holds."""
    with contextlib.closing(_read_only(path)) as conn:
        return int(conn.execute(COUNT_MESSAGES).fetchone()[0])


def count_unfinished(path: Path) -> int:
    """Messages not yet delivered, failed, invalid or expired (nor merely sent)."""
    with contextlib.closing(_read_only(path)) as conn:
        return int(conn.execute(COUNT_UNFINISHED).fetchone()[0])


def delivery_latencies(path: Path, since: float) -> tuple[int, list[float]]:
    """Accepted-to-delivered milliseconds of messages created after `since`."""
    with contextlib.closing(_read_only(path)) as conn:
        values = [float(r[0]) for r in conn.execute(DELIVERY_LATENCIES, (since,))]
    return len(values), values


def seed_backlog(path: Path, count: int, chunk: int = 50_000) -> None:
    """Fill the database with `count` delivered messages, history and attempts included.

    Ids are UUIDv7s from a day ago so new messages still sort after them.
    """
    now = time.time() - 86_400
    ids = IdGenerator(clock_ms=lambda: int(now * 1000))
    conn = _connect(path)
    try:
        _prepare(conn)
        done = 0
        while done < count:
            n = min(chunk, count - done)
            batch = [ids.new() for _ in range(n)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                INSERT_MESSAGE,
                [
                    (
                        i,
                        f"+1703457{k % 10_000:04d}",
                        "backlog",
                        "delivered",
                        1,
                        "GSM-7",
                        "provider2",
                        i,
                        None,
                        None,
                        1,
                        now,
                        now,
                        now + 3600,
                        None,
                        None,
                        None,
                        None,
                    )
                    for k, i in enumerate(batch, done)
                ],
            )
            conn.executemany(
                INSERT_HISTORY,
                [
                    (i, s, now, None)
                    for i in batch
                    for s in ("queued", "sending", "sent", "delivered")
                ],
            )
            conn.executemany(
                INSERT_ATTEMPT, [(i, "provider2", now, "accepted", 200, 1.0, None) for i in batch]
            )
            conn.execute("COMMIT")
            done += n
    finally:
        conn.close()


# =========================================================================================
# Operator console support (used by service.py and control.py). Kept as one appended block
# of module functions so it stays clear of the Store class while that is being reworked.
# =========================================================================================

OLDEST_QUEUED = "SELECT created_at FROM messages WHERE status = 'queued' ORDER BY id LIMIT 1"
COUNT_WAITING_RETRY = "SELECT count(*) FROM messages WHERE status = 'queued' AND attempt_count > 0"
DELETE_SUPPRESSION = "DELETE FROM suppressions WHERE number = ?"
INSERT_NOTE = (
    "INSERT INTO history (message_id, status, at, detail) "
    "SELECT id, status, ?, ? FROM messages WHERE id = ?"
)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The outbox at a glance."""

    counts: dict[str, int]
    oldest_queued_at: float | None
    waiting_retry: int  # queued again after an attempt found no provider


async def queue_stats(store: Store) -> QueueStats:
    """Counts by status, the oldest queued message's creation time, messages awaiting retry."""
    try:
        counts = await store.counts()
        # _one, not a cursor held across an await, which would pin the reader's snapshot.
        oldest = await store._one(OLDEST_QUEUED, ())
        waiting = await store._one(COUNT_WAITING_RETRY, ())
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
    return QueueStats(
        counts,
        float(oldest[0]) if oldest else None,
        int(waiting[0]) if waiting else 0,
    )


async def lift_suppression(store: Store, number: str) -> bool:
    """Allow messages to `number` again; False if it was not suppressed."""

    def op(conn: sqlite3.Connection) -> bool:
        return bool(conn.execute(DELETE_SUPPRESSION, (number,)).rowcount)

    return await store._write(op)


async def add_note(store: Store, msg_id: str, detail: str, now: float) -> bool:
    """Append a history entry that keeps the message's status; False if there is no message."""

    def op(conn: sqlite3.Connection) -> bool:
        return bool(conn.execute(INSERT_NOTE, (now, detail, msg_id)).rowcount)

    return await store._write(op)


# =========================================================================================
# Status callbacks (webhooks) outbox, used by webhooks.py. The triggers in SCHEMA queue a
# row for every status change of a message that has a status_callback_url; these read and
# settle them.
# =========================================================================================

# Only the oldest pending row of a message is eligible, so a message's callbacks go out in
# order: the next waits until the previous is delivered or given up. Rows already being sent
# (in memory, passed as a JSON array) are left out so none is claimed twice.
DUE_WEBHOOKS = """
SELECT w.id, w.message_id, w.url, w.status, w.payload, w.attempts
FROM webhooks AS w INDEXED BY webhooks_due
WHERE w.state = 'pending' AND w.next_attempt_at <= :now
    AND w.id NOT IN (SELECT value FROM json_each(:in_flight))
    AND NOT EXISTS (
        SELECT 1 FROM webhooks AS e INDEXED BY webhooks_message
        WHERE e.message_id = w.message_id AND e.id < w.id AND e.state = 'pending')
ORDER BY w.next_attempt_at, w.id
LIMIT :limit
"""
# Guarded on 'pending' so an outcome can never reopen or overwrite a settled row.
SETTLE_WEBHOOK = """
UPDATE webhooks SET state = :state, attempts = attempts + 1,
    next_attempt_at = coalesce(:next_attempt_at, next_attempt_at),
    last_http_status = :http_status, last_error = :error, finished_at = :finished_at
WHERE id = :id AND state = 'pending'
"""
# Rows waiting on a backoff are the only pending ones due after now (new ones are due at once).
NEXT_WEBHOOK_RETRY = (
    "SELECT min(next_attempt_at) FROM webhooks INDEXED BY webhooks_due "
    "WHERE state = 'pending' AND next_attempt_at > ?"
)
SELECT_CALLBACKS = """
SELECT status, url, state, attempts, last_http_status, last_error, created_at, finished_at
FROM webhooks INDEXED BY webhooks_message WHERE message_id = ? ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class DueWebhook:
    """A status callback ready to be sent: the oldest pending one of its message."""

    id: int
    message_id: str
    url: str
    status: str
    payload: str  # the JSON body, sent byte for byte as stored
    attempts: int  # tries made before this one


async def due_webhooks(
    store: Store, now: float, limit: int, in_flight: Iterable[int]
) -> list[DueWebhook]:
    """Up to `limit` callbacks due at `now`, oldest first, at most one per message."""
    params = {"now": now, "limit": limit, "in_flight": json.dumps(sorted(in_flight))}
    try:
        rows = await store._reader.execute_fetchall(DUE_WEBHOOKS, params)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
    return [DueWebhook(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


async def next_webhook_retry(store: Store, now: float) -> float | None:
    """When the earliest callback waiting on a backoff falls due, if any."""
    try:
        row = await store._one(NEXT_WEBHOOK_RETRY, (now,))
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
    return None if row is None or row[0] is None else float(row[0])


async def settle_webhook(
    store: Store,
    webhook_id: int,
    *,
    state: str,
    next_attempt_at: float | None,
    http_status: int | None,
    error: str | None,
    finished_at: float | None,
) -> bool:
    """Record one try's outcome: still `pending` (retry at `next_attempt_at`) or final."""
    params = {
        "id": webhook_id,
        "state": state,
        "next_attempt_at": next_attempt_at,
        "http_status": http_status,
        "error": error,
        "finished_at": finished_at,
    }

    def op(conn: sqlite3.Connection) -> bool:
        return bool(conn.execute(SETTLE_WEBHOOK, params).rowcount)

    return await store._write(op)


def _callbacks_from_rows(rows: Iterable[Sequence[Any]]) -> tuple[StatusCallback, ...]:
    return tuple(
        StatusCallback(Status(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows
    )


# =========================================================================================
# Idempotency keys (used by idempotency.py). Saved responses are written by `Store.insert`
# and `Store.insert_many` in the transaction of the messages they answer; these look them
# up and purge the expired ones.
# =========================================================================================

SELECT_SAVED_RESPONSE = """
SELECT request_hash, status, body, location, created_at, expires_at FROM idempotency_keys
WHERE scope = ? AND key = ? AND expires_at > ?
"""
# Batched, so a large backlog of expired keys never holds the writer for long; the inner
# SELECT walks idempotency_keys_expiry (see tests/integration/test_idempotency.py).
PURGE_SAVED_RESPONSES = """
DELETE FROM idempotency_keys WHERE (scope, key) IN (
    SELECT scope, key FROM idempotency_keys INDEXED BY idempotency_keys_expiry
    WHERE expires_at <= ? LIMIT ?)
"""


async def find_saved_response(
    store: Store, scope: str, key: str, now: float
) -> SavedResponse | None:
    """The response kept for `key` in `scope`, unless it expired by `now`."""
    try:
        row = await store._one(SELECT_SAVED_RESPONSE, (scope, key, now))
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
    if row is None:
        return None
    return SavedResponse(scope, key, row[0], int(row[1]), row[2], row[3], row[4], row[5])


async def purge_saved_responses(store: Store, now: float, limit: int) -> int:
    """Delete up to `limit` keys that expired by `now`; return how many were deleted."""

    def op(conn: sqlite3.Connection) -> int:
        return int(conn.execute(PURGE_SAVED_RESPONSES, (now, limit)).rowcount)

    return await store._write(op)


# =========================================================================================
# Per-recipient ordering (`[delivery] ordering = "per_recipient"`): the claim statements
# above, plus one condition. A message is claimed only when no earlier message (smaller id:
# UUIDv7s sort by acceptance) to the same number is still queued or sending, so a number's
# messages reach providers one at a time, in acceptance order, retries included. The IN
# subquery is evaluated before its UPDATE changes anything, so of several due messages to
# one number a claim takes only the oldest. Unordered mode keeps the plain statements.
# =========================================================================================

# Only unfinished messages are in this partial index, so the check costs O(log n) however
# long a number's delivered history is. Unordered mode drops it: it would cost every status
# change an index write for nothing.
CREATE_UNFINISHED_INDEX = """
CREATE INDEX IF NOT EXISTS messages_unfinished_by_number ON messages(to_number, id)
    WHERE status IN ('queued', 'sending')"""
DROP_UNFINISHED_INDEX = "DROP INDEX IF EXISTS messages_unfinished_by_number"
_NO_EARLIER_UNFINISHED = """NOT EXISTS (
        SELECT 1 FROM messages AS earlier INDEXED BY messages_unfinished_by_number
        WHERE earlier.to_number = m.to_number AND earlier.id < m.id
            AND earlier.status IN ('queued', 'sending'))"""


def _index_unfinished(conn: sqlite3.Connection, ordered: bool) -> None:
    """Create the per-number index of unfinished messages in ordered mode; drop it otherwise."""
    conn.execute(CREATE_UNFINISHED_INDEX if ordered else DROP_UNFINISHED_INDEX)


CLAIM_DUE_ORDERED = f"""
UPDATE messages SET status = 'sending', lease_until = :lease_until, updated_at = :now,
    attempt_count = attempt_count + 1, next_attempt_at = NULL
WHERE id IN (
    SELECT id FROM messages AS m INDEXED BY messages_due
    WHERE m.status = 'queued' AND m.next_attempt_at <= :now AND {_NO_EARLIER_UNFINISHED}
    ORDER BY m.next_attempt_at LIMIT :limit)
RETURNING id, to_number, body, attempt_count, expires_at
"""
# A lapsed lease is taken back under the same rule. With ordering on, only the oldest
# unfinished message of a number can be `sending`, so this only guards against a state the
# claim above cannot make (a later message leased while an earlier one waits).
CLAIM_LEASE_EXPIRED_ORDERED = f"""
UPDATE messages SET lease_until = :lease_until, updated_at = :now,
    attempt_count = attempt_count + 1
WHERE id IN (
    SELECT id FROM messages AS m INDEXED BY messages_leased
    WHERE m.status = 'sending' AND m.lease_until <= :now AND {_NO_EARLIER_UNFINISHED}
    ORDER BY m.lease_until LIMIT :limit)
RETURNING id, to_number, body, attempt_count, expires_at
"""
# The worker sleeps until this: a due message waiting behind an earlier one must not count,
# or the worker would spin. It is woken when that earlier one's delivery ends.
NEXT_DUE_ORDERED = f"""
SELECT m.next_attempt_at FROM messages AS m INDEXED BY messages_due
WHERE m.status = 'queued' AND {_NO_EARLIER_UNFINISHED}
ORDER BY m.next_attempt_at LIMIT 1
"""


# =========================================================================================
# Live status (used by web.py for event streams and long polls): the narrow reads a woken
# watcher makes, one query each, instead of the whole message with its attempts.
# =========================================================================================

SELECT_STATUS_ONLY = "SELECT status FROM messages WHERE id = ?"


async def message_status(store: Store, msg_id: str) -> Status | None:
    """The message's status, or None if there is no such message."""
    try:
        row = await store._one(SELECT_STATUS_ONLY, (msg_id,))
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
    return None if row is None else Status(row[0])


async def message_history(store: Store, msg_id: str) -> tuple[HistoryEntry, ...]:
    """The message's history, oldest first (empty if there is no such message)."""
    try:
        rows = await store._reader.execute_fetchall(SELECT_HISTORY, (msg_id,))
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
    return tuple(HistoryEntry(Status(r[0]), r[1], r[2]) for r in rows)
