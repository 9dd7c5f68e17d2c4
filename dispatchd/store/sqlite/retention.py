"""Retention SQL: purging final messages with everything that hangs off them, and giving
the freed pages back to the file system.

The purge walks `messages_finished`, so a cycle costs what it deletes, not the table's size.
A message whose status callbacks are still being tried is kept until they settle: purging it
would drop a callback the client has not had.
"""

from __future__ import annotations

from dispatchd.store.sqlite.messages import FINALS

SELECT_PURGEABLE = f"""
SELECT id FROM messages AS m INDEXED BY messages_finished
WHERE m.status IN ({FINALS}) AND m.updated_at < :before
    AND NOT EXISTS (
        SELECT 1 FROM webhooks INDEXED BY webhooks_message
        WHERE message_id = m.id AND state = 'pending')
ORDER BY m.updated_at LIMIT :limit
"""
# One statement per table and message: each is an index lookup (the *_message indexes).
DELETE_ATTEMPTS = "DELETE FROM attempts WHERE message_id = ?"
DELETE_HISTORY = "DELETE FROM history WHERE message_id = ?"
DELETE_WEBHOOKS = "DELETE FROM webhooks WHERE message_id = ?"
DELETE_MESSAGE = "DELETE FROM messages WHERE id = ?"
FREE_PAGES = "PRAGMA freelist_count"
# Each step of this statement frees one page, and Python's execute() takes one step, so a
# caller runs it once per page (about 50 µs each), closing the cursor: a statement left
# in progress would stop the transaction from committing.
INCREMENTAL_VACUUM = "PRAGMA incremental_vacuum"
