"""Live status SQL: the narrow read a woken watcher makes instead of the whole message."""

from __future__ import annotations

SELECT_STATUS_ONLY = "SELECT status FROM messages WHERE id = ?"
