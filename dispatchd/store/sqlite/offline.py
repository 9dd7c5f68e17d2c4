"""Offline helpers for the benchmark: synchronous, never used by the running daemon."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from dispatchd.domain.ids import IdGenerator
from dispatchd.store.sqlite.messages import INSERT_ATTEMPT, INSERT_HISTORY, INSERT_MESSAGE
from dispatchd.store.sqlite.schema import BUSY_TIMEOUT_MS, _connect, _prepare

COUNT_MESSAGES = "SELECT count(*) FROM messages"
# Messages scheduled for later (send_at ahead) are not waited for: they are meant to wait.
COUNT_UNFINISHED = (
    "SELECT count(*) FROM messages WHERE status IN ('queued', 'sending', 'sent') "
    "AND (send_at IS NULL OR send_at <= ?)"
)
DELIVERY_LATENCIES = (
    "SELECT (updated_at - created_at) * 1000 FROM messages "
    "WHERE status = 'delivered' AND created_at >= ?"
)


def _read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def count_messages(path: Path) -> int:
    """How many messages the database holds."""
    with contextlib.closing(_read_only(path)) as conn:
        return int(conn.execute(COUNT_MESSAGES).fetchone()[0])


def count_unfinished(path: Path) -> int:
    """Messages due by now not yet delivered, failed, invalid or expired (nor merely sent)."""
    with contextlib.closing(_read_only(path)) as conn:
        return int(conn.execute(COUNT_UNFINISHED, (time.time(),)).fetchone()[0])


def delivery_latencies(path: Path, since: float) -> tuple[int, list[float]]:
    """Accepted-to-delivered milliseconds of messages created after `since`."""
    with contextlib.closing(_read_only(path)) as conn:
        values = [float(r[0]) for r in conn.execute(DELIVERY_LATENCIES, (since,))]
    return len(values), values


def seed_backlog(path: Path, count: int, chunk: int = 50_000) -> None:
    """Fill the database with `count` delivered messages, history and attempts included.

    Ids are UUIDv7s from a day ago so new messages still sort after them.
    """
    now = time.time() - 86_400
    ids = IdGenerator(clock_ms=lambda: int(now * 1000))
    conn = _connect(path)
    try:
        _prepare(conn)
        done = 0
        while done < count:
            n = min(chunk, count - done)
            batch = [ids.new() for _ in range(n)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                INSERT_MESSAGE,
                [
                    (
                        i,
                        f"+1703457{k % 10_000:04d}",
                        "backlog",
                        "delivered",
                        1,
                        "GSM-7",
                        "provider2",
                        i,
                        None,
                        None,
                        1,
                        now,
                        now,
                        now + 3600,
                        None,
                        None,
                        None,
                        None,
                    )
                    for k, i in enumerate(batch, done)
                ],
            )
            conn.executemany(
                INSERT_HISTORY,
                [
                    (i, s, now, None)
                    for i in batch
                    for s in ("queued", "sending", "sent", "delivered")
                ],
            )
            conn.executemany(
                INSERT_ATTEMPT, [(i, "provider2", now, "accepted", 200, 1.0, None) for i in batch]
            )
            conn.execute("COMMIT")
            done += n
    finally:
        conn.close()
