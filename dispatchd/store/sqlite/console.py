"""Operator console SQL: queue statistics, lifting a suppression, notes in a history."""

from __future__ import annotations

OLDEST_QUEUED = "SELECT created_at FROM messages WHERE status = 'queued' ORDER BY id LIMIT 1"
COUNT_WAITING_RETRY = "SELECT count(*) FROM messages WHERE status = 'queued' AND attempt_count > 0"
DELETE_SUPPRESSION = "DELETE FROM suppressions WHERE number = ?"
INSERT_NOTE = (
    "INSERT INTO history (message_id, status, at, detail) "
    "SELECT id, status, ?, ? FROM messages WHERE id = ?"
)
