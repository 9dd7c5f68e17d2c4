"""SQLite persistence: the only backend that speaks SQL, and none of it leaves the package.

- `core`: `SqliteStore`, the `dispatchd.store.api.Store` contract on one file:
  group-committed writes on one writer thread, reads beside them.
- `schema`: the database file: schema, migrations, pragmas, the process lock, connections.
- `messages`: message SQL, row mapping and the steps write transactions run.
- `ordering`: the claim SQL for per-recipient ordering.
- `console`, `webhooks`, `idempotency`, `live`: the SQL of one feature each.
- `offline`: synchronous helpers for the benchmark, never used by the running daemon.
"""

from __future__ import annotations

from dispatchd.store.sqlite.core import SqliteStore
from dispatchd.store.sqlite.offline import (
    count_messages,
    count_unfinished,
    delivery_latencies,
    seed_backlog,
)

__all__ = [
    "SqliteStore",
    "count_messages",
    "count_unfinished",
    "delivery_latencies",
    "seed_backlog",
]
