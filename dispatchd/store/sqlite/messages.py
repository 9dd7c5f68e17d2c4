"""Message SQL: the named statements, records and row mapping `Store` is built from.

Also the steps its write transactions run on the writer connection (batched inserts, guarded
status transitions, suppression), as functions of a `sqlite3.Connection`, so they run inside
whichever group commit picks them up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from dispatchd.domain.models import (
    Attempt,
    ErrorCode,
    HistoryEntry,
    Message,
    Outcome,
    Status,
    StatusCallback,
)

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], T]


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
# A message's status callbacks: the rows the webhook triggers in SCHEMA queued for it.
SELECT_CALLBACKS = """
SELECT status, url, state, attempts, last_http_status, last_error, created_at, finished_at
FROM webhooks INDEXED BY webhooks_message WHERE message_id = ? ORDER BY id
"""
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


def _callbacks_from_rows(rows: Iterable[Sequence[Any]]) -> tuple[StatusCallback, ...]:
    return tuple(
        StatusCallback(Status(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows
    )
