"""Idempotency key SQL.

Saved responses are written by `SqliteStore.insert` in the transaction of the messages they
answer; these look them up and purge the expired ones.
"""

from __future__ import annotations

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
