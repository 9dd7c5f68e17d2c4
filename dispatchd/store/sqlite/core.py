"""The `Store`: message writes group-committed on one writer thread, reads beside them.

Writes go through one connection on one thread and are group-committed: every
write requested while the previous transaction was being committed is applied
in the next single transaction, so many concurrent requests share one fsync.
Reads use a separate aiosqlite connection; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import aiosqlite

from dispatchd.domain.errors import StoreError, StoreUnavailable
from dispatchd.domain.models import (
    FINAL_STATUSES,
    Attempt,
    DeliveryReport,
    ErrorCode,
    Message,
    Status,
)
from dispatchd.store.sqlite.messages import (
    APPLY_REPORT,
    CLAIM_DUE,
    CLAIM_LEASE_EXPIRED,
    COUNT_BY_STATUS,
    GET_META,
    INSERT_HISTORY,
    INSERT_MESSAGE,
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
    SAVE_RESPONSE,
    SELECT_ATTEMPTS,
    SELECT_BY_PROVIDER_ID,
    SELECT_CALLBACKS,
    SELECT_HISTORY,
    SELECT_MESSAGE,
    SELECT_STATUS,
    SELECT_SUPPRESSIONS,
    Claimed,
    ReportResult,
    SavedResponse,
    T,
    WriteOp,
    _callbacks_from_rows,
    _finish_unsent,
    _Insert,
    _insert_attempts,
    _message_from_row,
    _message_params,
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
from dispatchd.store.sqlite.schema import BUSY_TIMEOUT_MS, CACHE_KIB, _connect, _lock, _prepare

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


class Store:
    """Durable messages, attempts, history and suppressions."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
        executor: ThreadPoolExecutor,
        lock_file: IO[bytes],
        *,
        ordered: bool = False,
    ) -> None:
        self.path = path
        # Per-recipient ordering: claim a message only after every earlier one to its number.
        self._claim_sql = (
            (CLAIM_LEASE_EXPIRED_ORDERED, CLAIM_DUE_ORDERED, NEXT_DUE_ORDERED)
            if ordered
            else (CLAIM_LEASE_EXPIRED, CLAIM_DUE, NEXT_DUE)
        )
        self._writer = writer
        self._reader = reader
        self._executor = executor
        self._lock_file = lock_file
        self._pending: list[tuple[WriteOp[Any], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self.healthy = True
        self.last_error: str | None = None

    @classmethod
    async def open(cls, path: Path, *, ordered: bool = False) -> Store:
        """Open (creating if needed) the database at `path`; raise StoreError if unusable.

        `ordered`: hand messages to one number to providers in acceptance order.
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
        store = cls(path, writer, reader, executor, lock_file, ordered=ordered)
        store._flusher = asyncio.create_task(store._flush_loop(), name="store-group-commit")
        return store

    @property
    def closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Commit what is pending, then close both connections and release the lock."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
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
                return [(False, exc)]
        out: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                out.append((True, self._transaction([op])[0]))
            except Exception as exc:
                out.append((False, exc))
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

    # -- writes ---------------------------------------------------------------------------

    async def insert(
        self, msg: Message, detail: str | None = None, saved: SavedResponse | None = None
    ) -> None:
        """Persist a new message and its first history entry (and `saved`), durably."""
        history = (msg.id, msg.status.value, msg.created_at, detail)
        if saved is None:
            await self._write(_Insert(_message_params(msg), history))
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_MESSAGE, _message_params(msg))
            conn.execute(INSERT_HISTORY, history)
            conn.execute(SAVE_RESPONSE, saved.row())

        await self._write(op)

    async def insert_many(
        self, msgs: Sequence[Message], detail: str | None = None, saved: SavedResponse | None = None
    ) -> None:
        """Persist new messages (and `saved`) in one transaction: all of them or none."""

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(INSERT_MESSAGE, [_message_params(m) for m in msgs])
            conn.executemany(
                INSERT_HISTORY, [(m.id, m.status.value, m.created_at, detail) for m in msgs]
            )
            if saved is not None:
                conn.execute(SAVE_RESPONSE, saved.row())

        await self._write(op)

    async def claim(self, now: float, limit: int, lease: float) -> list[Claimed]:
        """Reserve up to `limit` due messages (expired leases first) until `now + lease`."""

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
            return [Claimed(r[0], r[1], r[2], r[3], r[4]) for r in rows]

        return await self._write(op)

    async def release_all_leases(self, now: float) -> int:
        """Requeue messages a previous process claimed but never finished."""

        def op(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(RELEASE_ALL_LEASES, {"now": now}).fetchall()]
            conn.executemany(
                INSERT_HISTORY,
                [(i, Status.QUEUED.value, now, "requeued after restart") for i in ids],
            )
            return len(ids)

        return await self._write(op)

    async def release(self, ids: Sequence[str], at: float, detail: str) -> int:
        """Give leased messages back to the queue, due at `at`, without waiting for the lease."""

        def op(conn: sqlite3.Connection) -> int:
            return sum(
                _transition(conn, i, RELEASE_ONE, (at, at, i), Status.QUEUED, at, detail)
                for i in ids
            )

        return await self._write(op)

    async def mark_sent(
        self,
        msg_id: str,
        provider: str,
        provider_message_id: str | None,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """Record acceptance by `provider`; False if a report had already finalised it."""

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, msg_id, attempts)
            cur = conn.execute(MARK_SENT, (provider, provider_message_id, now, msg_id))
            if cur.rowcount:
                conn.execute(INSERT_HISTORY, (msg_id, Status.SENT.value, now, f"via {provider}"))
                return True
            conn.execute(MARK_SENT_LATE, (provider, provider_message_id, msg_id))
            return False

        return await self._write(op)

    async def requeue(
        self,
        msg_id: str,
        at: float,
        code: ErrorCode,
        detail: str,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """Put a message back in the queue for another attempt at `at`."""

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, msg_id, attempts)
            params = (at, code.value, detail, now, msg_id)
            return _transition(conn, msg_id, REQUEUE, params, Status.QUEUED, now, detail)

        return await self._write(op)

    async def finish_unsent(
        self,
        msg_id: str,
        status: Status,
        code: ErrorCode,
        detail: str,
        attempts: Iterable[Attempt],
        now: float,
    ) -> bool:
        """End a message that was never accepted (failed, expired, invalid)."""

        def op(conn: sqlite3.Connection) -> bool:
            _insert_attempts(conn, msg_id, attempts)
            return _finish_unsent(conn, msg_id, status, code, detail, now)

        return await self._write(op)

    async def apply_report(
        self, msg_id: str, report: DeliveryReport, provider: str | None, now: float
    ) -> ReportResult:
        """Apply a delivery report unless the message is already final; suppress on invalid."""

        def op(conn: sqlite3.Connection) -> ReportResult:
            row = conn.execute(SELECT_STATUS, (msg_id,)).fetchone()
            if row is None:
                return ReportResult(found=False, applied=False)
            current, number = Status(row[0]), row[1]
            source = f" from {provider}" if provider else ""
            if current in FINAL_STATUSES:
                detail = f"report '{report.status}'{source} ignored: the message is already final"
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

    async def ensure_secret(self, candidate: str) -> str:
        """Store `candidate` as the callback secret unless one exists; return the stored one."""

        def op(conn: sqlite3.Connection) -> str:
            conn.execute(PUT_META, ("callback_secret", candidate))
            return str(conn.execute(GET_META, ("callback_secret",)).fetchone()[0])

        return await self._write(op)

    # -- reads ----------------------------------------------------------------------------

    async def _one(self, sql: str, params: Sequence[Any]) -> Any:
        """First row of a query, fetched in the same thread hop as the execute.

        A cursor left open across an await would hold the reader's snapshot, and
        other reads interleaved on this connection would miss fresh commits.
        """
        rows = await self._reader.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def get(self, msg_id: str) -> Message | None:
        """The message with its attempts, history and status callbacks, or None."""
        try:
            row = await self._one(SELECT_MESSAGE, (msg_id,))
            if row is None:
                return None
            attempts = await self._reader.execute_fetchall(SELECT_ATTEMPTS, (msg_id,))
            history = await self._reader.execute_fetchall(SELECT_HISTORY, (msg_id,))
            callbacks = await self._reader.execute_fetchall(SELECT_CALLBACKS, (msg_id,))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
        msg = _message_from_row(row)
        msg = _with_details(msg, attempts, history)
        return replace(msg, callbacks=_callbacks_from_rows(callbacks))

    async def search(
        self, *, to_number: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> list[Message]:
        """Newest first, after `cursor` (an id) when given."""
        params: list[Any] = []
        if to_number is not None:
            params.append(to_number)
        if status is not None:
            params.append(status.value)
        # Every id sorts below "~", so no cursor means "from the newest".
        params += [cursor or "~", limit]
        sql = LIST_MESSAGES[(to_number is not None, status is not None)]
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the database cannot be read: {exc}") from exc
        return [_message_from_row(r) for r in rows]

    async def id_for_provider_message(self, provider_message_id: str) -> str | None:
        row = await self._one(SELECT_BY_PROVIDER_ID, (provider_message_id,))
        return None if row is None else str(row[0])

    async def suppressed_numbers(self) -> set[str]:
        rows = await self._reader.execute_fetchall(SELECT_SUPPRESSIONS)
        return {r[0] for r in rows}

    async def next_wakeup(self) -> float | None:
        """Earliest time a queued message falls due or a lease runs out."""
        times = []
        for sql in (self._claim_sql[2], NEXT_LEASE_END):
            row = await self._one(sql, ())
            if row and row[0] is not None:
                times.append(float(row[0]))
        return min(times) if times else None

    async def counts(self) -> dict[str, int]:
        rows = await self._reader.execute_fetchall(COUNT_BY_STATUS)
        return {r[0]: r[1] for r in rows}

    async def explain(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[str]:
        """The query plan of `sql` (for tests proving the hot queries use indexes)."""
        rows = await self._reader.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        return [str(r[3]) for r in rows]
