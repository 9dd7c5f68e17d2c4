"""`MemoryStore`: the whole store contract in process memory, for fast tests.

It keeps the SQLite backend's semantics statement for statement (the comments name the
statement a step stands for). What SQLite's triggers do, queue a status callback for every
status change, `MemoryStore._set` does here. Nothing is durable; every operation is atomic
because none awaits in the middle.
"""

from __future__ import annotations

import bisect
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from dispatchd.domain.errors import StoreError, StoreUnavailable
from dispatchd.domain.models import (
    FINAL_STATUSES,
    Attempt,
    DeliveryReport,
    ErrorCode,
    HistoryEntry,
    Message,
    Status,
    StatusCallback,
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

_UNFINISHED = frozenset({Status.QUEUED, Status.SENDING})
_EXPIRED_DETAIL = "No provider accepted the message before it expired."
_UNKNOWN_DETAIL = (
    "No delivery report came in time: the provider took the message, and whether it arrived "
    "is unknown."
)
_SUPPRESSED_DETAIL = "The number was reported invalid; the message was not sent."
# SQLite's Julian day number of the Unix epoch, in milliseconds.
_EPOCH_JD_MS = 210866760000000.0


def _callback_time(ts: float) -> str:
    """`ts` as SQLite's strftime('%Y-%m-%dT%H:%M:%fZ', ts, 'unixepoch') renders it."""
    # The same float steps as SQLite (to whole milliseconds, rounded half up), so the
    # payloads of both backends agree byte for byte.
    ms = int(ts * 1000.0 + _EPOCH_JD_MS + 0.5) - int(_EPOCH_JD_MS)
    secs, frac = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(secs))}.{frac:03d}Z"


def _callback_payload(msg: Message) -> str:
    """The body SQLite's trigger renders with json_object (same keys, order and escaping)."""
    error = None if msg.error_code is None else {"code": msg.error_code, "detail": msg.error_detail}
    body = {
        "id": msg.id,
        "status": msg.status.value,
        "to_number": msg.to_number,
        "provider": msg.provider,
        "error": error,
        "at": _callback_time(msg.updated_at),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _report_error(status: Status) -> tuple[str | None, str | None]:
    if status is Status.FAILED:
        return (
            ErrorCode.REPORTED_FAILED.value,
            "The provider reported the message as not delivered.",
        )
    if status is Status.INVALID:
        return ErrorCode.REPORTED_INVALID.value, "The provider reported the number as invalid."
    return None, None


@dataclass(slots=True)
class _Row:
    """A message as its table row: the record plus the lease and its details."""

    msg: Message  # without attempts, history or callbacks
    lease_until: float | None = None
    lease_token: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    callbacks: list[int] = field(default_factory=list)  # webhook ids, oldest first


@dataclass(slots=True)
class _Webhook:
    id: int
    message_id: str
    url: str
    status: Status
    payload: str
    created_at: float
    next_attempt_at: float | None  # None: waiting behind an earlier pending one
    state: str = "pending"
    attempts: int = 0
    last_http_status: int | None = None
    last_error: str | None = None
    finished_at: float | None = None


class MemoryStore:
    """Messages, attempts, history, suppressions, idempotency keys and callbacks in memory."""

    def __init__(self, *, clock: Callable[[], float] = time.time, ordered: bool = False) -> None:
        self._clock = clock
        self._ordered = ordered
        self._rows: dict[str, _Row] = {}
        self._ids: list[str] = []  # sorted: newest last
        self._unfinished: dict[str, set[str]] = {}  # number -> its queued or sending ids
        self._by_provider_id: dict[str, set[str]] = {}
        self._suppressions: dict[str, tuple[float, str]] = {}
        self._meta: dict[str, str] = {}
        self._saved: dict[tuple[str, str], SavedResponse] = {}
        self._webhooks: dict[int, _Webhook] = {}
        self._scheduled: set[int] = set()  # pending webhooks with a next_attempt_at
        self._next_webhook_id = 1
        self._closed = False
        self._refusing: str | None = None

    # -- health ---------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._refusing is None

    @property
    def last_error(self) -> str | None:
        return self._refusing

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True

    async def probe(self) -> bool:
        return self.healthy

    def refuse_writes(self, error: str | None) -> None:
        """Act as a full disk (writes raise StoreUnavailable) until called with None."""
        self._refusing = error

    def _writing(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        if self._refusing is not None:
            raise StoreUnavailable(f"the database cannot take writes: {self._refusing}")

    def _reading(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")

    # -- the row-level steps every write is made of ---------------------------------------

    def _set(self, row: _Row, new: Message) -> None:
        """Replace a message's row; a status change queues its callback, as the trigger does."""
        old, row.msg = row.msg, new
        if new.provider_message_id != old.provider_message_id:
            self._index_provider_id(new.id, old.provider_message_id, new.provider_message_id)
        if new.status is old.status:
            return
        if old.status in _UNFINISHED and new.status not in _UNFINISHED:
            ids = self._unfinished[old.to_number]
            ids.discard(old.id)
            if not ids:
                del self._unfinished[old.to_number]
        self._queue_callback(row)

    def _index_provider_id(self, msg_id: str, old: str | None, new: str | None) -> None:
        if old is not None:
            self._by_provider_id[old].discard(msg_id)
        if new is not None:
            self._by_provider_id.setdefault(new, set()).add(msg_id)

    def _queue_callback(self, row: _Row) -> None:
        msg = row.msg
        if msg.status_callback_url is None:
            return
        # Behind a pending callback of the same message, the new one waits.
        waiting = any(self._webhooks[w].state == "pending" for w in row.callbacks)
        hook = _Webhook(
            id=self._next_webhook_id,
            message_id=msg.id,
            url=msg.status_callback_url,
            status=msg.status,
            payload=_callback_payload(msg),
            created_at=msg.updated_at,
            next_attempt_at=None if waiting else msg.updated_at,
        )
        self._next_webhook_id += 1
        self._webhooks[hook.id] = hook
        row.callbacks.append(hook.id)
        if hook.next_attempt_at is not None:
            self._scheduled.add(hook.id)

    def _history(self, row: _Row, status: Status, at: float, detail: str | None) -> None:
        row.history.append(HistoryEntry(status, at, detail))

    def _held(self, claim: Claimed) -> _Row | None:
        """The claimed message, if the claim still holds its lease."""
        row = self._rows.get(claim.id)
        if row is None or row.msg.status is not Status.SENDING or row.lease_token != claim.token:
            return None
        return row

    def _add_attempts(self, msg_id: str, attempts: Iterable[Attempt]) -> None:
        row = self._rows.get(msg_id)
        if row is not None:
            row.attempts.extend(attempts)

    # -- accepting ------------------------------------------------------------------------

    async def insert(
        self, msgs: Sequence[Message], detail: str, saved: SavedResponse | None = None
    ) -> None:
        """Persist new messages, their first history entries and `saved`: all or none."""
        if not msgs and saved is None:
            return
        self._writing()
        ids = [m.id for m in msgs]
        if len(set(ids)) != len(ids) or any(i in self._rows for i in ids):
            raise StoreError("the database refused the write: a message id is already stored")
        for msg in msgs:
            base = replace(msg, attempts=(), history=(), callbacks=())
            row = self._rows[msg.id] = _Row(base)
            bisect.insort(self._ids, msg.id)
            if msg.status in _UNFINISHED:
                self._unfinished.setdefault(msg.to_number, set()).add(msg.id)
            self._index_provider_id(msg.id, None, msg.provider_message_id)
            self._queue_callback(row)
            self._history(row, msg.status, msg.created_at, detail)
        if saved is not None:
            self._saved[(saved.scope, saved.key)] = saved

    async def ensure_secret(self, candidate: str) -> str:
        self._writing()
        return self._meta.setdefault("callback_secret", candidate)

    # -- delivery -------------------------------------------------------------------------

    def _first_of_its_number(self, msg: Message) -> bool:
        """With ordering on: no earlier message to its number is queued or sending."""
        return not self._ordered or min(self._unfinished[msg.to_number]) == msg.id

    def _claimable(self, now: float) -> tuple[list[_Row], list[_Row]]:
        """Expired leases and due messages, each in the order SQLite's claim takes them."""
        expired, due = [], []
        for number_ids in self._unfinished.values():
            for msg_id in number_ids:
                row = self._rows[msg_id]
                msg = row.msg
                if msg.status is Status.SENDING:
                    if row.lease_until is not None and row.lease_until <= now:
                        expired.append(row)
                elif msg.next_attempt_at is not None and msg.next_attempt_at <= now:
                    due.append(row)
        expired = [r for r in expired if self._first_of_its_number(r.msg)]
        due = [r for r in due if self._first_of_its_number(r.msg)]
        expired.sort(key=lambda r: (r.lease_until, r.msg.id))
        due.sort(key=lambda r: (r.msg.next_attempt_at, r.msg.id))
        return expired, due

    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        """Lease up to `limit` due messages for `lease` seconds: expired leases first."""
        self._writing()
        if limit <= 0:
            return []
        now = self._clock()
        expired, due = self._claimable(now)
        claimed: list[Claimed] = []
        for row in expired[:limit]:  # CLAIM_LEASE_EXPIRED: a new token, the status stays
            token = row.lease_token = secrets.token_hex(16)
            row.lease_until = now + lease
            self._set(
                row, replace(row.msg, updated_at=now, attempt_count=row.msg.attempt_count + 1)
            )
            claimed.append(self._claimed(row, now, token))
        for row in due[: limit - len(claimed)]:  # CLAIM_DUE
            token = row.lease_token = secrets.token_hex(16)
            row.lease_until = now + lease
            self._set(
                row,
                replace(
                    row.msg,
                    status=Status.SENDING,
                    updated_at=now,
                    attempt_count=row.msg.attempt_count + 1,
                    next_attempt_at=None,
                ),
            )
            claimed.append(self._claimed(row, now, token))
        return claimed

    def _claimed(self, row: _Row, now: float, token: str) -> Claimed:
        msg = row.msg
        self._history(row, Status.SENDING, now, f"attempt {msg.attempt_count}")
        return Claimed(
            msg.id, msg.to_number, msg.body, msg.attempt_count, msg.expires_at, token, msg.segments
        )

    async def next_wakeup(self) -> float | None:
        """Earliest time a queued message falls due or a lease runs out."""
        self._reading()
        times = []
        for number_ids in self._unfinished.values():
            for msg_id in number_ids:
                row = self._rows[msg_id]
                if row.msg.status is Status.SENDING:
                    if row.lease_until is not None:
                        times.append(row.lease_until)
                elif row.msg.next_attempt_at is not None and self._first_of_its_number(row.msg):
                    times.append(row.msg.next_attempt_at)
        return min(times, default=None)

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
        self._writing()
        self._add_attempts(claim.id, attempts)
        row = self._held(claim)
        if row is not None:  # MARK_SENT
            row.lease_until = row.lease_token = None
            self._set(
                row,
                replace(
                    row.msg,
                    status=Status.SENT,
                    provider=provider,
                    provider_message_id=provider_message_id,
                    error_code=None,
                    error_detail=None,
                    updated_at=now,
                ),
            )
            self._history(row, Status.SENT, now, f"via {provider}")
            return True
        row = self._rows.get(claim.id)
        if row is not None and row.msg.status in FINAL_STATUSES:  # MARK_SENT_LATE
            kept = row.msg.provider_message_id
            pmid = provider_message_id if kept is None else kept
            self._set(row, replace(row.msg, provider=provider, provider_message_id=pmid))
        return False

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
        self._writing()
        self._add_attempts(claim.id, attempts)
        row = self._held(claim)
        if row is None:
            return False
        row.lease_until = row.lease_token = None
        self._set(
            row,
            replace(
                row.msg,
                status=Status.QUEUED,
                next_attempt_at=at,
                error_code=code.value,
                error_detail=detail,
                updated_at=now,
            ),
        )
        self._history(row, Status.QUEUED, now, detail)
        return True

    async def release(self, claims: Sequence[Claimed], at: float, detail: str) -> int:
        """Give claimed messages back to the queue, due at `at`, without recording an attempt."""
        self._writing()
        released = 0
        for claim in claims:
            row = self._held(claim)
            if row is None:
                continue
            row.lease_until = row.lease_token = None
            self._set(
                row, replace(row.msg, status=Status.QUEUED, next_attempt_at=at, updated_at=at)
            )
            self._history(row, Status.QUEUED, at, detail)
            released += 1
        return released

    async def defer(self, claim: Claimed, at: float, detail: str) -> bool:
        """Give a claimed message back, due at `at`, without counting the claim's attempt."""
        self._writing()
        row = self._held(claim)
        if row is None:
            return False
        row.lease_until = row.lease_token = None
        msg = row.msg
        self._set(
            row,
            replace(
                msg,
                status=Status.QUEUED,
                next_attempt_at=at,
                updated_at=at,
                attempt_count=max(msg.attempt_count - 1, 0),
            ),
        )
        self._history(row, Status.QUEUED, at, detail)
        return True

    async def expire_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """End queued messages whose validity ran out by `now` (up to `limit`)."""
        self._writing()
        due = sorted(
            (row.msg.expires_at, row.msg.id)
            for row in self._rows.values()
            if row.msg.status is Status.QUEUED and row.msg.expires_at <= now
        )[:limit]
        return self._end(
            [i for _, i in due], Status.EXPIRED, ErrorCode.EXPIRED, _EXPIRED_DETAIL, now
        )

    async def time_out_reports(
        self, sent_before: float, now: float, limit: int
    ) -> list[tuple[str, str]]:
        """End `unknown` messages sent by `sent_before` that never had a final report."""
        self._writing()
        due = sorted(
            (row.msg.updated_at, row.msg.id)  # TIME_OUT_REPORTS: updated_at is when it was sent
            for row in self._rows.values()
            if row.msg.status is Status.SENT and row.msg.updated_at <= sent_before
        )[:limit]
        ids = [i for _, i in due]
        return self._end(ids, Status.UNKNOWN, ErrorCode.REPORT_TIMEOUT, _UNKNOWN_DETAIL, now)

    def _end(
        self, ids: list[str], status: Status, code: ErrorCode, detail: str, now: float
    ) -> list[tuple[str, str]]:
        """End unclaimed messages that ran out of time; their (id, number)."""
        for msg_id in ids:
            row = self._rows[msg_id]
            new = replace(
                row.msg, status=status, error_code=code.value, error_detail=detail, updated_at=now
            )
            self._set(row, replace(new, next_attempt_at=None))
            self._history(row, status, now, detail)
        return [(i, self._rows[i].msg.to_number) for i in ids]

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
        self._writing()
        self._add_attempts(claim.id, attempts)
        row = self._held(claim)
        if row is None:
            return False
        row.lease_until = row.lease_token = None
        self._set(
            row,
            replace(
                row.msg,
                status=status,
                error_code=code.value,
                error_detail=detail,
                next_attempt_at=None,
                updated_at=now,
            ),
        )
        self._history(row, status, now, detail)
        return True

    # -- reports --------------------------------------------------------------------------

    async def apply_report(
        self, msg_id: str, report: DeliveryReport, provider: str | None, now: float
    ) -> ReportResult:
        """Apply a delivery report unless the message is final; suppress its number on invalid.

        A report on a final message is recorded in its history and changes nothing.
        """
        self._writing()
        row = self._rows.get(msg_id)
        if row is None:
            return ReportResult(found=False, applied=False)
        current, number = row.msg.status, row.msg.to_number
        source = report.source(provider)
        detail = ignored_report(report, source, current, row.msg.provider, provider)
        if detail is not None:
            self._history(row, current, now, detail)
            return ReportResult(found=True, applied=False, previous=current, number=number)
        code, err = _report_error(report.status)
        kept = row.msg.provider_message_id
        pmid = report.provider_message_id if kept is None else kept
        row.lease_until = row.lease_token = None
        self._set(
            row,
            replace(
                row.msg,
                status=report.status,
                provider_message_id=pmid,
                error_code=code,
                error_detail=err,
                next_attempt_at=None,
                updated_at=now,
            ),
        )
        self._history(row, report.status, now, f"delivery report{source}")
        suppressed: tuple[str, ...] = ()
        if report.status is Status.INVALID:
            suppressed = self._suppress(number, now, f"reported invalid for {msg_id}")
        return ReportResult(True, True, current, number, suppressed)

    def _suppress(self, number: str, now: float, reason: str) -> tuple[str, ...]:
        """Suppress `number` and end its queued messages as invalid; return their ids."""
        self._suppressions.setdefault(number, (now, reason))
        queued = sorted(
            msg_id
            for msg_id in self._unfinished.get(number, ())
            if self._rows[msg_id].msg.status is Status.QUEUED
        )
        for msg_id in queued:
            row = self._rows[msg_id]
            self._set(
                row,
                replace(
                    row.msg,
                    status=Status.INVALID,
                    error_code=ErrorCode.NUMBER_SUPPRESSED.value,
                    error_detail=_SUPPRESSED_DETAIL,
                    next_attempt_at=None,
                    updated_at=now,
                ),
            )
            self._history(row, Status.INVALID, now, _SUPPRESSED_DETAIL)
        return tuple(queued)

    async def id_for_provider_message(
        self, provider_message_id: str, provider: str | None = None
    ) -> str | None:
        self._reading()
        ids = self._by_provider_id.get(provider_message_id, ())
        if provider is not None:
            ids = {i for i in ids if self._rows[i].msg.provider == provider}
        # An id used again means the message still waiting for its report, else the latest.
        return max(ids, key=lambda i: (not self._rows[i].msg.status.final, i), default=None)

    async def suppress(self, number: str, now: float, reason: str) -> tuple[str, ...]:
        """Refuse messages to `number`; its queued messages end invalid (their ids)."""
        self._writing()
        return self._suppress(number, now, reason)

    # -- reading --------------------------------------------------------------------------

    async def get(self, msg_id: str) -> Message | None:
        """The message with its attempts, history and status callbacks, or None."""
        self._reading()
        row = self._rows.get(msg_id)
        if row is None:
            return None
        callbacks = tuple(
            StatusCallback(
                w.status,
                w.url,
                w.state,
                w.attempts,
                w.last_http_status,
                w.last_error,
                w.created_at,
                w.finished_at,
            )
            for w in (self._webhooks[i] for i in row.callbacks)
        )
        return replace(
            row.msg,
            # Oldest first, as SQLite orders them (by start, then as recorded).
            attempts=tuple(sorted(row.attempts, key=lambda a: a.started_at)),
            history=tuple(row.history),
            callbacks=callbacks,
        )

    async def search(
        self, *, to_number: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> list[Message]:
        """Newest first, after `cursor` (the last id of the previous page) when given."""
        self._reading()
        end = len(self._ids) if cursor is None else bisect.bisect_left(self._ids, cursor)
        found: list[Message] = []
        for i in range(end - 1, -1, -1):
            if len(found) >= limit:
                break
            msg = self._rows[self._ids[i]].msg
            if to_number is not None and msg.to_number != to_number:
                continue
            if status is not None and msg.status is not status:
                continue
            found.append(msg)
        return found

    async def message_status(self, msg_id: str) -> Status | None:
        self._reading()
        row = self._rows.get(msg_id)
        return None if row is None else row.msg.status

    async def message_history(self, msg_id: str) -> tuple[HistoryEntry, ...]:
        self._reading()
        row = self._rows.get(msg_id)
        return () if row is None else tuple(row.history)

    async def counts(self) -> dict[str, int]:
        self._reading()
        return dict(sorted(Counter(row.msg.status.value for row in self._rows.values()).items()))

    async def queue_stats(self) -> QueueStats:
        self._reading()
        queued = [
            self._rows[msg_id].msg
            for ids in self._unfinished.values()
            for msg_id in ids
            if self._rows[msg_id].msg.status is Status.QUEUED
        ]
        oldest = min(queued, key=lambda m: m.id, default=None)
        return QueueStats(
            await self.counts(),
            None if oldest is None else oldest.created_at,
            sum(1 for m in queued if m.attempt_count > 0),
        )

    # -- suppressions and operator actions --------------------------------------------------

    async def suppressed_numbers(self) -> set[str]:
        self._reading()
        return set(self._suppressions)

    async def lift_suppression(self, number: str) -> bool:
        self._writing()
        return self._suppressions.pop(number, None) is not None

    async def add_note(self, msg_id: str, detail: str, now: float) -> bool:
        self._writing()
        row = self._rows.get(msg_id)
        if row is None:
            return False
        self._history(row, row.msg.status, now, detail)
        return True

    # -- retention --------------------------------------------------------------------------

    async def purge_finished(self, before: float, limit: int) -> Purged:
        """Delete up to `limit` messages that ended before `before`, with what hangs off them."""
        self._writing()
        ended = sorted(
            (row.msg.updated_at, row.msg.id)
            for row in self._rows.values()
            if row.msg.status in FINAL_STATUSES
            and row.msg.updated_at < before
            and not any(self._webhooks[w].state == "pending" for w in row.callbacks)
        )[: max(limit, 0)]
        purged = Purged()
        for _, msg_id in ended:
            row = self._rows.pop(msg_id)
            del self._ids[bisect.bisect_left(self._ids, msg_id)]
            if row.msg.provider_message_id is not None:
                self._index_provider_id(msg_id, row.msg.provider_message_id, None)
            for hook_id in row.callbacks:
                del self._webhooks[hook_id]
                self._scheduled.discard(hook_id)
            purged += Purged(1, len(row.attempts), len(row.history), len(row.callbacks))
        return purged

    async def reclaim_space(self, pages: int) -> int:
        self._writing()
        return 0  # memory is returned as rows go

    # -- idempotency keys -------------------------------------------------------------------

    async def find_saved_response(self, scope: str, key: str, now: float) -> SavedResponse | None:
        self._reading()
        saved = self._saved.get((scope, key))
        return saved if saved is not None and saved.expires_at > now else None

    async def purge_saved_responses(self, now: float, limit: int) -> int:
        self._writing()
        expired = sorted(
            (s for s in self._saved.values() if s.expires_at <= now), key=lambda s: s.expires_at
        )[: max(limit, 0)]
        for saved in expired:
            del self._saved[(saved.scope, saved.key)]
        return len(expired)

    # -- the status callback outbox ---------------------------------------------------------

    async def due_webhooks(
        self, now: float, limit: int, in_flight: Iterable[int]
    ) -> list[DueWebhook]:
        """Up to `limit` callbacks due at `now`, oldest first, at most one per message,
        leaving out those in `in_flight`."""
        self._reading()
        skip = set(in_flight)
        due = sorted(
            (
                w
                for w in (self._webhooks[i] for i in self._scheduled)
                if w.next_attempt_at is not None and w.next_attempt_at <= now and w.id not in skip
            ),
            key=lambda w: (w.next_attempt_at, w.id),
        )[: max(limit, 0)]
        return [
            DueWebhook(w.id, w.message_id, w.url, w.status.value, w.payload, w.attempts)
            for w in due
        ]

    async def next_webhook_retry(self, now: float) -> float | None:
        self._reading()
        times = (self._webhooks[i].next_attempt_at for i in self._scheduled)
        return min((t for t in times if t is not None and t > now), default=None)

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
        self._writing()
        hook = self._webhooks.get(webhook_id)
        if hook is None or hook.state != "pending":
            return False
        hook.state = state
        hook.attempts += 1
        if next_attempt_at is not None:
            hook.next_attempt_at = next_attempt_at
        hook.last_http_status, hook.last_error, hook.finished_at = http_status, error, finished_at
        if state == "pending":
            if hook.next_attempt_at is not None:
                self._scheduled.add(hook.id)
            return True
        self._scheduled.discard(hook.id)
        # The message's next pending callback gets its turn (never left waiting forever).
        pending = [
            w
            for w in (self._webhooks[i] for i in self._rows[hook.message_id].callbacks)
            if w.state == "pending"
        ]
        if pending and pending[0].next_attempt_at is None:
            pending[0].next_attempt_at = self._clock() if finished_at is None else finished_at
            self._scheduled.add(pending[0].id)
        return True


def _satisfies_the_contract(store: MemoryStore) -> Store:
    return store  # mypy proves MemoryStore implements every method of the Protocol
