"""Operator console support, used by service.py and control.py.

Queue statistics for snapshots, lifting a suppression, and notes in a message's history.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from dispatchd.domain.errors import StoreUnavailable
from dispatchd.store.sqlite.core import Store

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
