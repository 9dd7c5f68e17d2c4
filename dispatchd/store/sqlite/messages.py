"""Message SQL: the named statements `SqliteStore` is built from, and its row mapping.

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
    FINAL_STATUSES,
    Attempt,
    ErrorCode,
    HistoryEntry,
    Message,
    Outcome,
    Status,
    StatusCallback,
)
from dispatchd.store.api import Claimed, SavedResponse

T = TypeVar("T")
# The final statuses as an SQL list, for `status IN (...)`.
FINALS = ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATUSES))
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
# Each claimed row gets its own fencing token: randomblob() is evaluated per row.
NEW_TOKEN = "lower(hex(randomblob(16)))"
CLAIMED_COLUMNS = "id, to_number, body, attempt_count, expires_at, lease_token, segments"
CLAIM_DUE = f"""
UPDATE messages SET status = 'sending', lease_until = :lease_until, lease_token = {NEW_TOKEN},
    updated_at = :now, attempt_count = attempt_count + 1, next_attempt_at = NULL
WHERE id IN (
    SELECT id FROM messages INDEXED BY messages_due
    WHERE status = 'queued' AND next_attempt_at <= :now
    ORDER BY next_attempt_at LIMIT :limit)
RETURNING {CLAIMED_COLUMNS}
"""
# A new token, so the holder whose lease ran out can no longer move the message.
CLAIM_LEASE_EXPIRED = f"""
UPDATE messages SET lease_until = :lease_until, lease_token = {NEW_TOKEN}, updated_at = :now,
    attempt_count = attempt_count + 1
WHERE id IN (
    SELECT id FROM messages INDEXED BY messages_leased
    WHERE status = 'sending' AND lease_until <= :now
    ORDER BY lease_until LIMIT :limit)
RETURNING {CLAIMED_COLUMNS}
"""
# INDEXED BY pins the partial indexes: without statistics the planner may prefer
# messages_status, which would sort every queued message to find the oldest.
NEXT_DUE = (
    "SELECT min(next_attempt_at) FROM messages INDEXED BY messages_due WHERE status = 'queued'"
)
NEXT_LEASE_END = (
    "SELECT min(lease_until) FROM messages INDEXED BY messages_leased WHERE status = 'sending'"
)
# Only at open, under the file lock: no other process can hold one of these leases.
RELEASE_ALL_LEASES = """
UPDATE messages SET status = 'queued', next_attempt_at = :now, lease_until = NULL,
    lease_token = NULL, updated_at = :now
WHERE status = 'sending'
RETURNING id
"""
# Every transition of a claimed message is fenced: it applies only for the lease's holder.
# Queued messages past their validity, whatever the providers' state; through the partial
# index, so the sweep costs what it expires, not the queue's length.
EXPIRE_DUE = """
UPDATE messages SET status = 'expired', error_code = 'expired', error_detail = :detail,
    next_attempt_at = NULL, updated_at = :now
WHERE id IN (
    SELECT id FROM messages INDEXED BY messages_expiry
    WHERE status = 'queued' AND expires_at <= :now
    ORDER BY expires_at LIMIT :limit)
RETURNING id, to_number
"""
EXPIRED_DETAIL = "No provider accepted the message before it expired."
UNKNOWN_DETAIL = (
    "No delivery report came in time: the provider took the message, and whether it arrived "
    "is unknown."
)
# Sent messages whose report did not come by :sent_before. `updated_at` is when it was sent:
# nothing else changes a `sent` row until its report.
TIME_OUT_REPORTS = """
UPDATE messages SET status = 'unknown', error_code = 'report_timeout', error_detail = :detail,
    updated_at = :now
WHERE id IN (
    SELECT id FROM messages INDEXED BY messages_sent
    WHERE status = 'sent' AND updated_at <= :sent_before
    ORDER BY updated_at LIMIT :limit)
RETURNING id, to_number
"""
# As if never claimed: the claim's attempt is given back.
DEFER_ONE = """
UPDATE messages SET status = 'queued', next_attempt_at = ?, lease_until = NULL,
    lease_token = NULL, updated_at = ?, attempt_count = max(attempt_count - 1, 0)
WHERE id = ? AND status = 'sending' AND lease_token = ?
"""
RELEASE_ONE = """
UPDATE messages SET status = 'queued', next_attempt_at = ?, lease_until = NULL,
    lease_token = NULL, updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_token = ?
"""
MARK_SENT = """
UPDATE messages SET status = 'sent', provider = ?, provider_message_id = ?, lease_until = NULL,
    lease_token = NULL, error_code = NULL, error_detail = NULL, updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_token = ?
"""
# A report that raced ahead already finalised the message: keep its status, record who sent
# it. Only a final message: one merely leased again belongs to its new holder.
MARK_SENT_LATE = f"""
UPDATE messages SET provider = ?, provider_message_id = coalesce(provider_message_id, ?)
WHERE id = ? AND status IN ({FINALS})
"""
REQUEUE = """
UPDATE messages SET status = 'queued', next_attempt_at = ?, lease_until = NULL,
    lease_token = NULL, error_code = ?, error_detail = ?, updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_token = ?
"""
FINISH = """
UPDATE messages SET status = ?, error_code = ?, error_detail = ?, lease_until = NULL,
    lease_token = NULL, next_attempt_at = NULL, updated_at = ?
WHERE id = ? AND status = 'sending' AND lease_token = ?
"""
SELECT_STATUS = "SELECT status, to_number, provider FROM messages WHERE id = ?"
APPLY_REPORT = """
UPDATE messages SET status = ?, provider_message_id = coalesce(provider_message_id, ?),
    error_code = ?, error_detail = ?, lease_until = NULL, lease_token = NULL,
    next_attempt_at = NULL, updated_at = ?
WHERE id = ?
"""
INSERT_SUPPRESSION = "INSERT OR IGNORE INTO suppressions (number, at, reason) VALUES (?, ?, ?)"
# The queued messages to a suppressed number end invalid; those being sent finish as usual.
# By number, not status: the queue may be long, one number's messages are few.
END_QUEUED_TO_NUMBER = """
UPDATE messages INDEXED BY messages_to_number
SET status = 'invalid', error_code = ?, error_detail = ?, next_attempt_at = NULL, updated_at = ?
WHERE to_number = ? AND status = 'queued'
RETURNING id
"""
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
# A provider may use an id again (SMSCs wrap their counters): it then means the message
# still waiting for its report, else its latest one.
_UNFINISHED_NEWEST = f"ORDER BY status IN ({FINALS}), id DESC LIMIT 1"
SELECT_BY_PROVIDER_ID = (
    f"SELECT id FROM messages WHERE provider_message_id = ? {_UNFINISHED_NEWEST}"
)
SELECT_BY_PROVIDERS_ID = (
    f"SELECT id FROM messages WHERE provider_message_id = ? AND provider = ? {_UNFINISHED_NEWEST}"
)
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


def _saved_row(saved: SavedResponse) -> tuple[Any, ...]:
    return (
        saved.scope,
        saved.key,
        saved.request_hash,
        saved.status,
        saved.body,
        saved.location,
        saved.created_at,
        saved.expires_at,
    )


def _claimed_from_row(row: Sequence[Any]) -> Claimed:
    return Claimed(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


@dataclass(frozen=True, slots=True)
class _Insert:
    """New messages (and a saved response); batched with the other inserts of its commit."""

    messages: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]
    saved: list[tuple[Any, ...]]

    @classmethod
    def of(cls, msgs: Sequence[Message], detail: str, saved: SavedResponse | None) -> _Insert:
        return cls(
            [_message_params(m) for m in msgs],
            [(m.id, m.status.value, m.created_at, detail) for m in msgs],
            [] if saved is None else [_saved_row(saved)],
        )

    def __call__(self, conn: sqlite3.Connection) -> None:
        if len(self.messages) == 1:  # the common case: no executemany overhead
            conn.execute(INSERT_MESSAGE, self.messages[0])
            conn.execute(INSERT_HISTORY, self.history[0])
        else:
            conn.executemany(INSERT_MESSAGE, self.messages)
            conn.executemany(INSERT_HISTORY, self.history)
        if self.saved:
            conn.execute(SAVE_RESPONSE, self.saved[0])


def _run_ops(conn: sqlite3.Connection, ops: list[WriteOp[Any]]) -> list[Any]:
    """Apply ops in one transaction; new messages go first, all at once."""
    inserts = [op for op in ops if isinstance(op, _Insert)]
    if len(inserts) < 2:
        return [op(conn) for op in ops]
    conn.executemany(INSERT_MESSAGE, [m for i in inserts for m in i.messages])
    conn.executemany(INSERT_HISTORY, [h for i in inserts for h in i.history])
    conn.executemany(SAVE_RESPONSE, [s for i in inserts for s in i.saved])
    return [None if isinstance(op, _Insert) else op(conn) for op in ops]


def _insert_attempts(conn: sqlite3.Connection, msg_id: str, attempts: Iterable[Attempt]) -> None:
    rows = [
        (msg_id, a.provider, a.started_at, a.outcome.value, a.http_status, a.latency_ms, a.error)
        for a in attempts
    ]
    if rows:
        conn.executemany(INSERT_ATTEMPT, rows)


def _report_error(status: Status) -> tuple[str | None, str | None]:
    if status is Status.FAILED:
        return (
            ErrorCode.REPORTED_FAILED.value,
            "The provider reported the message as not delivered.",
        )
    if status is Status.INVALID:
        return ErrorCode.REPORTED_INVALID.value, "The provider reported the number as invalid."
    return None, None


SUPPRESSED_DETAIL = "The number was reported invalid; the message was not sent."


def _suppress(conn: sqlite3.Connection, number: str, now: float, reason: str) -> tuple[str, ...]:
    """Suppress `number` and end its queued messages as invalid; return their ids."""
    conn.execute(INSERT_SUPPRESSION, (number, now, reason))
    params = (ErrorCode.NUMBER_SUPPRESSED.value, SUPPRESSED_DETAIL, now, number)
    ids = tuple(sorted(r[0] for r in conn.execute(END_QUEUED_TO_NUMBER, params).fetchall()))
    conn.executemany(
        INSERT_HISTORY, [(i, Status.INVALID.value, now, SUPPRESSED_DETAIL) for i in ids]
    )
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


def _with_details(
    msg: Message, attempts: Iterable[Sequence[Any]], history: Iterable[Sequence[Any]]
) -> Message:
    return replace(
        msg,
        attempts=tuple(Attempt(r[0], r[1], Outcome(r[2]), r[3], r[4], r[5]) for r in attempts),
        history=_history_from_rows(history),
    )


def _history_from_rows(rows: Iterable[Sequence[Any]]) -> tuple[HistoryEntry, ...]:
    return tuple(HistoryEntry(Status(r[0]), r[1], r[2]) for r in rows)


def _callbacks_from_rows(rows: Iterable[Sequence[Any]]) -> tuple[StatusCallback, ...]:
    return tuple(
        StatusCallback(Status(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows
    )
