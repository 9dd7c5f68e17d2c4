"""Idempotency keys, used by dispatchd/idempotency.py.

Saved responses are written by `Store.insert` and `Store.insert_many` in the transaction of
the messages they answer; these look them up and purge the expired ones.
"""

from __future__ import annotations

import sqlite3

from dispatchd.domain.errors import StoreUnavailable
from dispatchd.store.sqlite.core import Store
from dispatchd.store.sqlite.messages import SavedResponse

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
