"""The status callback (webhook) outbox SQL.

The triggers in SCHEMA queue a row for every status change of a message that has a
status_callback_url; these read and settle them. A message's callbacks go out in order
because only its oldest pending row has a next_attempt_at: a row queued behind it waits with
NULL, and settling the oldest for good gives the next one its turn in the same transaction.
So the due read is a range scan of the webhooks_due partial index, however many rows wait.
"""

from __future__ import annotations

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
