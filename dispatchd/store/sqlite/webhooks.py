"""The status callback (webhook) outbox, used by dispatchd/webhooks.py.

The triggers in SCHEMA queue a row for every status change of a message that has a
status_callback_url; these read and settle them. A message's callbacks go out in order
because only its oldest pending row has a next_attempt_at: a row queued behind it waits with
NULL, and settling the oldest for good gives the next one its turn in the same transaction.
So the due read is a range scan of the webhooks_due partial index, however many rows wait.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from dispatchd.domain.errors import StoreUnavailable
from dispatchd.store.sqlite.core import Store

# Waiting rows (next_attempt_at NULL) are not in webhooks_due, so this reads only rows whose
# turn it is. Rows already being sent (in memory, passed as a JSON array) are left out so
# none is claimed twice.
DUE_WEBHOOKS = """
SELECT w.id, w.message_id, w.url, w.status, w.payload, w.attempts
FROM webhooks AS w INDEXED BY webhooks_due
WHERE w.state = 'pending' AND w.next_attempt_at <= :now
    AND w.id NOT IN (SELECT value FROM json_each(:in_flight))
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
# After a row is settled for good: the next pending row of its message is due now.
PROMOTE_NEXT_WEBHOOK = """
UPDATE webhooks SET next_attempt_at = :now
WHERE id = (
    SELECT n.id FROM webhooks AS n INDEXED BY webhooks_message
    WHERE n.message_id = (SELECT message_id FROM webhooks WHERE id = :id)
        AND n.state = 'pending'
    ORDER BY n.id LIMIT 1)
    AND next_attempt_at IS NULL
"""
# Rows waiting on a backoff are the only pending ones due after now (new ones are due at once).
NEXT_WEBHOOK_RETRY = (
    "SELECT min(next_attempt_at) FROM webhooks INDEXED BY webhooks_due "
    "WHERE state = 'pending' AND next_attempt_at > ?"
)


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
    """Record one try's outcome: still `pending` (retry at `next_attempt_at`) or final.

    A final outcome makes the message's next callback due at `finished_at`.
    """
    params = {
        "id": webhook_id,
        "state": state,
        "next_attempt_at": next_attempt_at,
        "http_status": http_status,
        "error": error,
        "finished_at": finished_at,
    }

    def op(conn: sqlite3.Connection) -> bool:
        settled = bool(conn.execute(SETTLE_WEBHOOK, params).rowcount)
        if settled and state != "pending":
            # Never left NULL: the message's later callbacks would wait forever.
            now = time.time() if finished_at is None else finished_at
            conn.execute(PROMOTE_NEXT_WEBHOOK, {"id": webhook_id, "now": now})
        return settled

    return await store._write(op)
