"""Live status, used by the web layer's event streams and long polls.

The narrow reads a woken watcher makes, one query each, instead of the whole message with
its attempts.
"""

from __future__ import annotations

import sqlite3

from dispatchd.domain.errors import StoreUnavailable
from dispatchd.domain.models import HistoryEntry, Status
from dispatchd.store.sqlite.core import Store
from dispatchd.store.sqlite.messages import SELECT_HISTORY

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
