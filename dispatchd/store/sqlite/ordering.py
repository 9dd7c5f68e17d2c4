"""Per-recipient ordering (`[delivery] ordering = "per_recipient"`): the ordered claim SQL.

The claim statements of messages.py, plus one condition. A message is claimed only when no
earlier message (smaller id: UUIDv7s sort by acceptance) to the same number is still queued
or sending, so a number's messages reach providers one at a time, in acceptance order,
retries included. The IN subquery is evaluated before its UPDATE changes anything, so of
several due messages to one number a claim takes only the oldest. Unordered mode keeps the
plain statements.
"""

from __future__ import annotations

import sqlite3

from dispatchd.store.sqlite.messages import CLAIMED_COLUMNS, NEW_TOKEN

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
UPDATE messages SET status = 'sending', lease_until = :lease_until, lease_token = {NEW_TOKEN},
    updated_at = :now, attempt_count = attempt_count + 1, next_attempt_at = NULL
WHERE id IN (
    SELECT id FROM messages AS m INDEXED BY messages_due
    WHERE m.status = 'queued' AND m.next_attempt_at <= :now AND {_NO_EARLIER_UNFINISHED}
    ORDER BY m.next_attempt_at LIMIT :limit)
RETURNING {CLAIMED_COLUMNS}
"""
# A lapsed lease is taken back under the same rule. With ordering on, only the oldest
# unfinished message of a number can be `sending`, so this only guards against a state the
# claim above cannot make (a later message leased while an earlier one waits).
CLAIM_LEASE_EXPIRED_ORDERED = f"""
UPDATE messages SET lease_until = :lease_until, lease_token = {NEW_TOKEN}, updated_at = :now,
    attempt_count = attempt_count + 1
WHERE id IN (
    SELECT id FROM messages AS m INDEXED BY messages_leased
    WHERE m.status = 'sending' AND m.lease_until <= :now AND {_NO_EARLIER_UNFINISHED}
    ORDER BY m.lease_until LIMIT :limit)
RETURNING {CLAIMED_COLUMNS}
"""
# The worker sleeps until this: a due message waiting behind an earlier one must not count,
# or the worker would spin. It is woken when that earlier one's delivery ends.
NEXT_DUE_ORDERED = f"""
SELECT m.next_attempt_at FROM messages AS m INDEXED BY messages_due
WHERE m.status = 'queued' AND {_NO_EARLIER_UNFINISHED}
ORDER BY m.next_attempt_at LIMIT 1
"""
