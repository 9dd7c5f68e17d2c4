"""`SqliteStore`: the store contract on one SQLite file.

Writes go through one connection on one thread and are group-committed: every
write requested while the previous transaction was being committed is applied
in the next single transaction, so many concurrent requests share one fsync.
Reads use a separate aiosqlite connection; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import aiosqlite

from dispatchd.domain.errors import StoreError, StoreUnavailable
from dispatchd.domain.models import (
    Attempt,
    DeliveryReport,
    ErrorCode,
    HistoryEntry,
    Message,
    Status,
)
from dispatchd.store.api import (
    Claimed,
    DueWebhook,
    Purged,
    QueueStats,
    ReportResult,
    SavedResponse,
    Store,
    ignored_report,
)
from dispatchd.store.sqlite.backup import BackupJob, BackupResult
from dispatchd.store.sqlite.console import (
    COUNT_WAITING_RETRY,
    DELETE_SUPPRESSION,
    INSERT_NOTE,
    OLDEST_QUEUED,
)
from dispatchd.store.sqlite.idempotency import PURGE_SAVED_RESPONSES, SELECT_SAVED_RESPONSE
from dispatchd.store.sqlite.live import SELECT_STATUS_ONLY
from dispatchd.store.sqlite.messages import (
    APPLY_REPORT,
    CLAIM_DUE,
    CLAIM_LEASE_EXPIRED,
    COUNT_BY_STATUS,
    DEFER_ONE,
    EXPIRE_DUE,
    EXPIRED_DETAIL,
    FINISH,
    GET_META,
    INSERT_HISTORY,
    LIST_MESSAGES,
    MARK_SENT,
    MARK_SENT_LATE,
    NEXT_DUE,
    NEXT_LEASE_END,
    PROBE_UNDO,
    PROBE_WRITE,
    PUT_META,
    RELEASE_ALL_LEASES,
    RELEASE_ONE,
    REQUEUE,
    SELECT_ATTEMPTS,
    SELECT_BY_PROVIDER_ID,
    SELECT_BY_PROVIDERS_ID,
    SELECT_CALLBACKS,
    SELECT_HISTORY,
    SELECT_MESSAGE,
    SELECT_STATUS,
    SELECT_SUPPRESSIONS,
    TIME_OUT_REPORTS,
    UNKNOWN_DETAIL,
    T,
    WriteOp,
    _callbacks_from_rows,
    _claimed_from_row,
    _history_from_rows,
    _Insert,
    _insert_attempts,
    _message_from_row,
    _report_error,
    _run_ops,
    _suppress,
    _transition,
    _with_details,
)
from dispatchd.store.sqlite.ordering import (
    CLAIM_DUE_ORDERED,
    CLAIM_LEASE_EXPIRED_ORDERED,
    NEXT_DUE_ORDERED,
    _index_unfinished,
)
from dispatchd.store.sqlite.retention import (
    DELETE_ATTEMPTS,
    DELETE_HISTORY,
    DELETE_MESSAGE,
    DELETE_WEBHOOKS,
    FREE_PAGES,
    INCREMENTAL_VACUUM,
    SELECT_PURGEABLE,
)
from dispatchd.store.sqlite.schema import BUSY_TIMEOUT_MS, CACHE_KIB, _connect, _lock, _prepare
from dispatchd.store.sqlite.webhooks import (
    DUE_WEBHOOKS,
    NEXT_WEBHOOK_RETRY,
    PROMOTE_NEXT_WEBHOOK,
    SETTLE_WEBHOOK,
)

# The package's name, so log lines from every module of the backend share one logger.
logger = logging.getLogger("dispatchd.store.sqlite")


def _is_unavailable(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    transient = {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
    }
    if code is None:
        return isinstance(exc, sqlite3.OperationalError)
    return (code & 0xFF) in transient


def _release_all_leases(conn: sqlite3.Connection, now: float) -> int:
    """Requeue what a previous process claimed but never finished (safe under the file lock)."""
    ids = [r[0] for r in conn.execute(RELEASE_ALL_LEASES, {"now": now}).fetchall()]
    conn.executemany(
        INSERT_HISTORY, [(i, Status.QUEUED.value, now, "requeued after restart") for i in ids]
    )
    return len(ids)


class SqliteStore:
    """Durable messages, attempts, history, suppressions, idempotency keys and callbacks."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
        executor: ThreadPoolExecutor,
        lock_file: IO[bytes],
        *,
        ordered: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        # Per-recipient ordering: claim a message only after every earlier one to its number.
        self._claim_sql = (
            (CLAIM_LEASE_EXPIRED_ORDERED, CLAIM_DUE_ORDERED, NEXT_DUE_ORDERED)
            if ordered
            else (CLAIM_LEASE_EXPIRED, CLAIM_DUE, NEXT_DUE)
        )
        self._clock = clock
        self._writer = writer
        self._reader = reader
        self._executor = executor
        self._lock_file = lock_file
        self._pending: list[tuple[WriteOp[Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._reader_closed = False
        self.healthy = True
        self.last_error: str | None = None
        # Messages a previous process left `sending`, requeued by `open`.
        self.recovered_at_open = 0

    @classmethod
    async def open(
        cls, path: Path, *, ordered: bool = False, clock: Callable[[], float] = time.time
    ) -> SqliteStore:
        """Open (creating if needed) the database at `path`; raise StoreError if unusable.

        `ordered`: hand messages to one number to providers in acceptance order. `clock`
        times leases. Messages a previous process left `sending` are requeued: the file
        lock proves that process is gone.
        """
        lock_file = _lock(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatchd-writer")
        loop = asyncio.get_running_loop()
        try:
            writer = await loop.run_in_executor(executor, _connect, path)
            await loop.run_in_executor(executor, _prepare, writer)
            await loop.run_in_executor(executor, _index_unfinished, writer, ordered)
            reader = await aiosqlite.connect(path)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.DatabaseError as exc:
            executor.shutdown(wait=False)
            lock_file.close()
            raise StoreError(f"cannot use {path}: {exc}") from exc
        except StoreError as exc:
            executor.shutdown(wait=False)
            lock_file.close()
            raise StoreError(f"cannot use {path}: {exc.message}") from exc
        store = cls(path, writer, reader, executor, lock_file, ordered=ordered, clock=clock)
        store._flusher = asyncio.create_task(store._flush_loop(), name="store-group-commit")
        try:
            now = clock()
            store.recovered_at_open = await store._write(lambda c: _release_all_leases(c, now))
        except BaseException:
            await store.close()
            raise
        if store.recovered_at_open:
            logger.info("event=recovered_after_restart count=%d", store.recovered_at_open)
        return store

    @property
    def closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Commit what is pending, then close both connections and release the lock."""
        if self._reader_closed:
            return
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        self._reader_closed = True
        await self._reader.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._writer.close)
        self._executor.shutdown(wait=True)
        self._lock_file.close()

    # -- group commit ---------------------------------------------------------------------

    async def _write(self, op: WriteOp[T]) -> T:
        if self._closing:
            raise StoreUnavailable("the store is shutting down")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                ops = [op for op, _ in batch]
                results = await loop.run_in_executor(self._executor, self._commit, ops)
                for (_, fut), (ok, value) in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
            if self._closing and not self._pending:
                return

    def _commit(self, ops: list[WriteOp[Any]]) -> list[tuple[bool, Any]]:
        """Run ops in one transaction; if one fails, isolate it by running each alone."""
        try:
            return [(True, v) for v in self._transaction(ops)]
        except StoreUnavailable as exc:
            return [(False, exc)] * len(ops)
        except Exception as exc:
            if len(ops) == 1:
                return [(False, _as_store_error(exc))]
        out: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                out.append((True, self._transaction([op])[0]))
            except Exception as exc:
                out.append((False, _as_store_error(exc)))
        return out

    def _transaction(self, ops: list[WriteOp[Any]]) -> list[Any]:
        conn = self._writer
        changes_before = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                values = _run_ops(conn, ops)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _is_unavailable(exc):
                self._mark_unhealthy(str(exc))
                raise StoreUnavailable(f"the database cannot take writes: {exc}") from exc
            raise
        # A transaction that wrote nothing (an empty claim) proves nothing about free space.
        if not self.healthy and conn.total_changes != changes_before:
            logger.info("event=store_recovered")
            self.healthy = True
            self.last_error = None
        return values

    def _mark_unhealthy(self, error: str) -> None:
        if self.healthy:
            logger.error("event=store_unavailable error=%r", error)
        self.healthy = False
        self.last_error = error

    async def probe(self) -> bool:
        """Try a real write (a page's worth, then undone); True when the database takes writes."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(PROBE_WRITE)
            conn.execute(PROBE_UNDO)

        with contextlib.suppress(StoreUnavailable):
            await self._write(op)
        return self.healthy

    # -- accepting ------------------------------------------------------------------------

    async def insert(
        self, msgs: Sequence[Message], detail: str, saved: SavedResponse | None = None
    ) -> None:
        """Persist new messages, their first history entries and `saved`: all or none.

        Inserts requested together are batched into one statement per table.
        """
        if msgs or saved is not None:
            await self._write(_Insert.of(msgs, detail, saved))

    async def suppress(self, number: str, now: float, reason: str) -> tuple[str, ...]:
        """Refuse messages to `number`; its queued messages end invalid (their ids)."""

        def op(conn: sqlite3.Connection) -> tuple[str, ...]:
            return _suppress(conn, number, now, reason)

        return await self._write(op)

    async def ensure_secret(self, candidate: str) -> str:
        """Store `candidate` as the callback secret unless one exists; return the stored one."""

        def op(conn: sqlite3.Connection) -> str:
            conn.execute(PUT_META, ("callback_secret", candidate))
            return str(conn.execute(GET_META, ("callback_secret",)).fetchone()[0])

        return await self._write(op)

    # -- delivery -------------------------------------------------------------------------

    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        """Lease up to `limit` due messages (expired leases first) for `lease` seconds."""
        now = self._clock()

        def op(conn: sqlite3.Connection) -> list[Claimed]:
            params = {"now": now, "lease_until": now + lease, "limit": limit}
            lease_expired, due, _ = self._claim_sql
            rows = conn.execute(lease_expired, params).fetchall()
            if len(rows) < limit:
                params["limit"] = limit - len(rows)
                rows += conn.execute(due, params).fetchall()
            conn.executemany(
                INSERT_HISTORY, [(r[0], Status.SENDING.value, now, f"attempt {r[3]}") for r in rows]
            )
            return [_claimed_from_row(r) for r in rows]

        if limit <= 0:
            return []
        return await self._write(op)

    async def next_wakeup(self) -> float | None:
        """Earliest time a queued message falls due or a lease runs out."""
        times = []
        for sql in (self._claim_sql[2], NEXT_LEASE_END):
            row = await self._one(sql, ())
            if row and row[0] is not None:
                times.append(float(row[0]))
        return min(times) if times else None

    async def mark_sent(
        self,
        claim: Claimed,
        provider: str,
        provider_message_id: str | None,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """Record acceptance by `provider`; False if a report finalised it first or the lease
        was lost (the provider and its id are still recorded on a finalised message)."""
        attempts = tuple(attempts)

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, claim.id, attempts)
            params = (provider, provider_message_id, now, claim.id, claim.token)
            if conn.execute(MARK_SENT, params).rowcount:
                conn.execute(INSERT_HISTORY, (claim.id, Status.SENT.value, now, f"via {provider}"))
                return True
            conn.execute(MARK_SENT_LATE, (provider, provider_message_id, claim.id))
            return False

        return await self._write(op)

    async def requeue(
        self,
        claim: Claimed,
        at: float,
        code: ErrorCode,
        detail: str,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """Put a claimed message back in the queue, due at `at`; False if the lease was lost."""
        attempts = tuple(attempts)

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, claim.id, attempts)
            params = (at, code.value, detail, now, claim.id, claim.token)
            return _transition(conn, claim.id, REQUEUE, params, Status.QUEUED, now, detail)

        return await self._write(op)

    async def release(self, claims: Sequence[Claimed], at: float, detail: str) -> int:
        """Give claimed messages back to the queue, due at `at`, without recording an attempt."""

        def op(conn: sqlite3.Connection) -> int:
            return sum(
                _transition(
                    conn, c.id, RELEASE_ONE, (at, at, c.id, c.token), Status.QUEUED, at, detail
                )
                for c in claims
            )

        if not claims:
            return 0
        return await self._write(op)

    async def defer(self, claim: Claimed, at: float, detail: str) -> bool:
        """Give a claimed message back, due at `at`, without counting the claim's attempt."""

        def op(conn: sqlite3.Connection) -> bool:
            params = (at, at, claim.id, claim.token)
            return _transition(conn, claim.id, DEFER_ONE, params, Status.QUEUED, at, detail)

        return await self._write(op)

    async def expire_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """End queued messages whose validity ran out by `now` (up to `limit`)."""
        params = {"now": now, "limit": limit}
        return await self._end_out_of_time(EXPIRE_DUE, params, Status.EXPIRED, EXPIRED_DETAIL)

    async def time_out_reports(
        self, sent_before: float, now: float, limit: int
    ) -> list[tuple[str, str]]:
        """End `unknown` messages sent by `sent_before` that never had a final report."""
        params = {"now": now, "limit": limit, "sent_before": sent_before}
        return await self._end_out_of_time(TIME_OUT_REPORTS, params, Status.UNKNOWN, UNKNOWN_DETAIL)

    async def _end_out_of_time(
        self, sql: str, params: dict[str, Any], status: Status, detail: str
    ) -> list[tuple[str, str]]:
        """Run a sweep's UPDATE ... RETURNING id, to_number and record each in history."""

        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(sql, {**params, "detail": detail}).fetchall()
            ended = [(str(r[0]), str(r[1])) for r in rows]
            at = params["now"]
            conn.executemany(INSERT_HISTORY, [(i, status.value, at, detail) for i, _ in ended])
            return ended

        return await self._write(op)

    async def finish(
        self,
        claim: Claimed,
        status: Status,
        code: ErrorCode,
        detail: str,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """End a claimed message that no provider took (failed, expired, invalid)."""
        attempts = tuple(attempts)

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, claim.id, attempts)
            params = (status.value, code.value, detail, now, claim.id, claim.token)
            return _transition(conn, claim.id, FINISH, params, status, now, detail)

        return await self._write(op)

    # -- reports --------------------------------------------------------------------------

    async def apply_report(
        self, msg_id: str, report: DeliveryReport, provider: str | None, now: float
    ) -> ReportResult:
        """Apply a delivery report unless the message is already final; suppress on invalid."""

        def op(conn: sqlite3.Connection) -> ReportResult:
            row = conn.execute(SELECT_STATUS, (msg_id,)).fetchone()
            if row is None:
                return ReportResult(found=False, applied=False)
            current, number, sent_by = Status(row[0]), row[1], row[2]
            source = report.source(provider)
            detail = ignored_report(report, source, current, sent_by, provider)
            if detail is not None:
                conn.execute(INSERT_HISTORY, (msg_id, current.value, now, detail))
                return ReportResult(found=True, applied=False, previous=current, number=number)
            code, err = _report_error(report.status)
            conn.execute(
                APPLY_REPORT,
                (report.status.value, report.provider_message_id, code, err, now, msg_id),
            )
            conn.execute(
                INSERT_HISTORY, (msg_id, report.status.value, now, f"delivery report{source}")
            )
            suppressed: tuple[str, ...] = ()
            if report.status is Status.INVALID:
                suppressed = _suppress(conn, number, now, f"reported invalid for {msg_id}")
            return ReportResult(True, True, current, number, suppressed)

        return await self._write(op)

    async def id_for_provider_message(
        self, provider_message_id: str, provider: str | None = None
    ) -> str | None:
        if provider is None:
            row = await self._one(SELECT_BY_PROVIDER_ID, (provider_message_id,))
        else:
            row = await self._one(SELECT_BY_PROVIDERS_ID, (provider_message_id, provider))
        return None if row is None else str(row[0])

    # -- reading --------------------------------------------------------------------------

    async def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        """Every row of a query, fetched in the same thread hop as the execute.

        A cursor left open across an await would hold the reader's snapshot, and
        other reads interleaved on this connection would miss fresh commits.
        """
        if self._reader_closed:
            raise StoreUnavailable("the store is closed")
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the database cannot be read: {exc}") from exc

    async def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        return next(iter(await self._rows(sql, params)), None)

    async def get(self, msg_id: str) -> Message | None:
        """The message with its attempts, history and status callbacks, or None."""
        row = await self._one(SELECT_MESSAGE, (msg_id,))
        if row is None:
            return None
        attempts = await self._rows(SELECT_ATTEMPTS, (msg_id,))
        history = await self._rows(SELECT_HISTORY, (msg_id,))
        callbacks = await self._rows(SELECT_CALLBACKS, (msg_id,))
        msg = _with_details(_message_from_row(row), attempts, history)
        return replace(msg, callbacks=_callbacks_from_rows(callbacks))

    async def search(
        self, *, to_number: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> list[Message]:
        """Newest first, after `cursor` (the last id of the previous page) when given."""
        params: list[Any] = []
        if to_number is not None:
            params.append(to_number)
        if status is not None:
            params.append(status.value)
        # Every id sorts below "~", so no cursor means "from the newest".
        params += [cursor or "~", limit]
        sql = LIST_MESSAGES[(to_number is not None, status is not None)]
        return [_message_from_row(r) for r in await self._rows(sql, params)]

    async def message_status(self, msg_id: str) -> Status | None:
        """Only the message's status (what a woken watcher needs), or None if unknown."""
        row = await self._one(SELECT_STATUS_ONLY, (msg_id,))
        return None if row is None else Status(row[0])

    async def message_history(self, msg_id: str) -> tuple[HistoryEntry, ...]:
        """The message's history, oldest first (empty if unknown)."""
        return _history_from_rows(await self._rows(SELECT_HISTORY, (msg_id,)))

    async def counts(self) -> dict[str, int]:
        """Messages per status (statuses with none are left out)."""
        return {r[0]: r[1] for r in await self._rows(COUNT_BY_STATUS)}

    async def queue_stats(self) -> QueueStats:
        """Counts by status, the oldest queued message's creation time, messages awaiting retry."""
        counts = await self.counts()
        oldest = await self._one(OLDEST_QUEUED)
        waiting = await self._one(COUNT_WAITING_RETRY)
        return QueueStats(
            counts,
            float(oldest[0]) if oldest else None,
            int(waiting[0]) if waiting else 0,
        )

    # -- suppressions and operator actions --------------------------------------------------

    async def suppressed_numbers(self) -> set[str]:
        return {r[0] for r in await self._rows(SELECT_SUPPRESSIONS)}

    async def lift_suppression(self, number: str) -> bool:
        """Allow messages to `number` again; False if it was not suppressed."""

        def op(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(DELETE_SUPPRESSION, (number,)).rowcount)

        return await self._write(op)

    async def add_note(self, msg_id: str, detail: str, now: float) -> bool:
        """Append a history entry that keeps the message's status; False if it is unknown."""

        def op(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(INSERT_NOTE, (now, detail, msg_id)).rowcount)

        return await self._write(op)

    # -- retention --------------------------------------------------------------------------

    async def purge_finished(self, before: float, limit: int) -> Purged:
        """Delete up to `limit` messages that ended before `before`, with what hangs off them."""

        def op(conn: sqlite3.Connection) -> Purged:
            params = {"before": before, "limit": limit}
            ids = [(r[0],) for r in conn.execute(SELECT_PURGEABLE, params).fetchall()]
            if not ids:
                return Purged()
            counts = []
            for sql in (DELETE_ATTEMPTS, DELETE_HISTORY, DELETE_WEBHOOKS, DELETE_MESSAGE):
                before_changes = conn.total_changes
                conn.executemany(sql, ids)
                counts.append(conn.total_changes - before_changes)
            attempts, history, callbacks, messages = counts
            return Purged(messages, attempts, history, callbacks)

        return await self._write(op)

    async def reclaim_space(self, pages: int) -> int:
        """Give up to `pages` free pages back to the file system; how many free remain."""

        def op(conn: sqlite3.Connection) -> int:
            free = int(conn.execute(FREE_PAGES).fetchone()[0])
            for _ in range(min(pages, free)):
                conn.execute(INCREMENTAL_VACUUM).close()
            return int(conn.execute(FREE_PAGES).fetchone()[0])

        return await self._write(op)

    # -- idempotency keys -------------------------------------------------------------------

    async def find_saved_response(self, scope: str, key: str, now: float) -> SavedResponse | None:
        """The response kept for `key` in `scope`, unless it expired by `now`."""
        row = await self._one(SELECT_SAVED_RESPONSE, (scope, key, now))
        if row is None:
            return None
        return SavedResponse(scope, key, row[0], int(row[1]), row[2], row[3], row[4], row[5])

    async def purge_saved_responses(self, now: float, limit: int) -> int:
        """Delete up to `limit` keys that expired by `now`; return how many went."""

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute(PURGE_SAVED_RESPONSES, (now, limit)).rowcount)

        return await self._write(op)

    # -- the status callback outbox ---------------------------------------------------------

    async def due_webhooks(
        self, now: float, limit: int, in_flight: Iterable[int]
    ) -> list[DueWebhook]:
        """Up to `limit` callbacks due at `now`, oldest first, at most one per message,
        leaving out those in `in_flight`."""
        params = {"now": now, "limit": limit, "in_flight": json.dumps(sorted(in_flight))}
        rows = await self._rows(DUE_WEBHOOKS, params)
        return [DueWebhook(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def next_webhook_retry(self, now: float) -> float | None:
        """When the earliest callback waiting on a backoff falls due, if any."""
        row = await self._one(NEXT_WEBHOOK_RETRY, (now,))
        return None if row is None or row[0] is None else float(row[0])

    async def settle_webhook(
        self,
        webhook_id: int,
        *,
        state: str,
        next_attempt_at: float | None,
        http_status: int | None,
        error: str | None,
        finished_at: float | None,
    ) -> bool:
        """Record one try: still `pending` (again at `next_attempt_at`) or final
        (`delivered` / `failed`), which makes the message's next callback due."""
        params = {
            "id": webhook_id,
            "state": state,
            "next_attempt_at": next_attempt_at,
            "http_status": http_status,
            "error": error,
            "finished_at": finished_at,
        }
        # Never left NULL: the message's later callbacks would wait forever.
        promote_at = self._clock() if finished_at is None else finished_at

        def op(conn: sqlite3.Connection) -> bool:
            settled = bool(conn.execute(SETTLE_WEBHOOK, params).rowcount)
            if settled and state != "pending":
                conn.execute(PROMOTE_NEXT_WEBHOOK, {"id": webhook_id, "now": promote_at})
            return settled

        return await self._write(op)

    # -- SQLite only ----------------------------------------------------------------------

    async def explain(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[str]:
        """The query plan of `sql` (for tests proving the hot queries use indexes)."""
        rows = await self._rows(f"EXPLAIN QUERY PLAN {sql}", params)
        return [str(r[3]) for r in rows]

    async def backup(self, dest: str | Path) -> BackupResult:
        """Copy the database to `dest` (a file, or a directory for a timestamped one) while
        writes go on; raise StoreError saying why it cannot.

        The copy runs on a connection and a thread of its own: on the writer's thread it
        would hold up every accept for as long as it takes. Cancelling stops it and
        removes what it wrote.
        """
        if self._closing:
            raise StoreUnavailable("the store is shutting down")
        job = BackupJob(self.path, dest, clock=self._clock, background=True)
        # A thread of its own, ending with the copy: the copy lowers its priority.
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatchd-backup")
        copying = asyncio.get_running_loop().run_in_executor(thread, job.run)
        thread.shutdown(wait=False)
        try:
            return await asyncio.shield(copying)
        except asyncio.CancelledError:
            # The thread cannot be cancelled, only told to stop; wait until it has cleaned up.
            job.cancel()
            await asyncio.wait([copying])
            if not copying.cancelled():
                copying.exception()  # retrieved: the caller sees the cancellation
            raise


def _as_store_error(exc: Exception) -> Exception:
    """A write the database refused for its content (a duplicate id) as a `StoreError`."""
    if isinstance(exc, sqlite3.IntegrityError):
        error = StoreError(f"the database refused the write: {exc}")
        error.__cause__ = exc
        return error
    return exc


def _satisfies_the_contract(store: SqliteStore) -> Store:
    return store  # mypy proves SqliteStore implements every method of the Protocol
