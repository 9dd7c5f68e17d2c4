"""The store contract: every operation the rest of dispatchd asks of persistence.

Each backend (`sqlite`, `memory`, later `postgres`) implements all of `Store`, and one
contract suite (tests/contract) runs against each of them. Nothing outside `store/` knows
which backend it talks to, and no SQL leaves a backend.

Rules every backend keeps, because several processes may one day share one database:
- Claims are fenced. `claim` hands out a lease token with each message; `mark_sent`,
  `requeue`, `finish` and `release` change the message only for the holder of that token,
  so a worker whose lease ran out and was reclaimed elsewhere cannot overwrite the newer
  attempt.
- Lease times come from the store's clock, not the caller's.
- Final statuses (`delivered`, `failed`, `invalid`, `expired`, `unknown`) never change.
- Every status change of a message with a `status_callback_url`, including its insert as
  `queued`, queues one status callback in the same transaction as the change.
- A saved idempotent response is committed in the same transaction as the messages it
  answers: a crash keeps both or neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dispatchd.domain.models import (
    FINAL_STATUSES,
    Attempt,
    DeliveryReport,
    ErrorCode,
    HistoryEntry,
    Message,
    Status,
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message reserved for one delivery attempt, until its lease runs out."""

    id: str
    to_number: str
    body: str
    attempt: int
    expires_at: float
    token: str  # the lease's fencing token: later transitions must present it
    segments: int = 1  # what the provider's rate limit counts


@dataclass(frozen=True, slots=True)
class SavedResponse:
    """The response to an idempotent request, stored in the same transaction as its effect."""

    scope: str
    key: str
    request_hash: str
    status: int
    body: str
    location: str | None
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ReportResult:
    """What applying a delivery report did."""

    found: bool
    applied: bool
    previous: Status | None = None
    number: str | None = None
    # Queued messages to a number reported invalid, ended `invalid` in the same transaction.
    requeued_invalid: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The outbox at a glance."""

    counts: dict[str, int]
    oldest_queued_at: float | None
    waiting_retry: int  # queued again after an attempt found no provider


@dataclass(frozen=True, slots=True)
class Purged:
    """Rows one retention batch deleted, per table."""

    messages: int = 0
    attempts: int = 0
    history: int = 0
    callbacks: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(
            self.messages + other.messages,
            self.attempts + other.attempts,
            self.history + other.history,
            self.callbacks + other.callbacks,
        )


@dataclass(frozen=True, slots=True)
class DueWebhook:
    """A status callback ready to be sent: the oldest pending one of its message."""

    id: int
    message_id: str
    url: str
    status: str
    payload: str  # the JSON body, sent byte for byte as stored
    attempts: int  # tries made before this one


def ignored_report(
    report: DeliveryReport,
    source: str,
    current: Status,
    sent_by: str | None,
    provider: str | None,
) -> str | None:
    """Why a report changes nothing (the history line), or None when it applies.

    Finals stay final. A report from a provider other than the one that took the message
    is only recorded: after a rejection and a failover, the first provider's late
    "failed" must not end a message another provider has.
    """
    if current in FINAL_STATUSES:
        return f"report '{report.status}'{source} ignored: the message is already final"
    if provider is not None and sent_by is not None and provider != sent_by:
        return f"report '{report.status}'{source} ignored: the message was sent through {sent_by}"
    return None


class Store(Protocol):
    """Durable messages, attempts, history, suppressions, idempotency keys and callbacks.

    Reads raise `StoreUnavailable` when the database cannot be read, writes when it cannot
    take writes; `healthy` and `last_error` say which state the store is in.

    The `attempts` given to `mark_sent`, `requeue` and `finish` are recorded even when the
    lease was lost: those provider calls were made.
    """

    @property
    def healthy(self) -> bool:
        """False while the database refuses writes."""
        ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def closed(self) -> bool: ...

    async def close(self) -> None:
        """Commit what is pending and release every resource."""
        ...

    async def probe(self) -> bool:
        """Try a real write; True (and healthy again) when the database takes writes."""
        ...

    # -- accepting ------------------------------------------------------------------------

    async def insert(
        self, msgs: Sequence[Message], detail: str, saved: SavedResponse | None = None
    ) -> None:
        """Persist new messages, their first history entries and `saved`: all or none.

        Raises `StoreError` (and stores nothing) if one of the ids is already stored.
        """
        ...

    async def ensure_secret(self, candidate: str) -> str:
        """Keep `candidate` as the callback-token secret unless one exists; return the kept one."""
        ...

    # -- delivery -------------------------------------------------------------------------

    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        """Lease up to `limit` due messages for `lease` seconds: expired leases first."""
        ...

    async def next_wakeup(self) -> float | None:
        """Earliest time a queued message falls due or a lease runs out."""
        ...

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
        ...

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
        ...

    async def release(self, claims: Sequence[Claimed], at: float, detail: str) -> int:
        """Give claimed messages back to the queue, due at `at`, without recording an attempt."""
        ...

    async def expire_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """End `expired` up to `limit` queued messages whose validity ran out by `now`,
        soonest first, whatever the providers' state; their (id, number)."""
        ...

    async def time_out_reports(
        self, sent_before: float, now: float, limit: int
    ) -> list[tuple[str, str]]:
        """End `unknown` up to `limit` messages still `sent` (no final report) that were sent
        by `sent_before`, longest-waiting first; their (id, number)."""
        ...

    async def defer(self, claim: Claimed, at: float, detail: str) -> bool:
        """Give a claimed message back, due at `at`, as if it had not been claimed: the claim
        does not count as an attempt (a provider's rate limit or throttle held it)."""
        ...

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
        ...

    # -- reports --------------------------------------------------------------------------

    async def apply_report(
        self, msg_id: str, report: DeliveryReport, provider: str | None, now: float
    ) -> ReportResult:
        """Apply a delivery report unless the message is final; suppress its number on invalid.

        A report on a final message is recorded in its history and changes nothing.
        """
        ...

    async def id_for_provider_message(
        self, provider_message_id: str, provider: str | None = None
    ) -> str | None:
        """The message the provider knows by this id (only among `provider`'s, if given).

        An id used again means the message not final yet, else the newest one.
        """
        ...

    # -- reading --------------------------------------------------------------------------

    async def get(self, msg_id: str) -> Message | None:
        """The message with its attempts, history and status callbacks, or None."""
        ...

    async def search(
        self, *, to_number: str | None, status: Status | None, limit: int, cursor: str | None
    ) -> list[Message]:
        """Newest first, after `cursor` (the last id of the previous page) when given."""
        ...

    async def message_status(self, msg_id: str) -> Status | None:
        """Only the message's status (what a woken watcher needs), or None if unknown."""
        ...

    async def message_history(self, msg_id: str) -> tuple[HistoryEntry, ...]:
        """The message's history, oldest first (empty if unknown)."""
        ...

    async def counts(self) -> dict[str, int]:
        """Messages per status (statuses with none are left out)."""
        ...

    async def queue_stats(self) -> QueueStats: ...

    # -- suppressions and operator actions --------------------------------------------------

    async def suppressed_numbers(self) -> set[str]: ...

    async def suppress(self, number: str, now: float, reason: str) -> tuple[str, ...]:
        """Refuse messages to `number` from now on; its queued messages end `invalid` (their
        ids are returned)."""
        ...

    async def lift_suppression(self, number: str) -> bool:
        """Allow messages to `number` again; False if it was not suppressed."""
        ...

    async def add_note(self, msg_id: str, detail: str, now: float) -> bool:
        """Append a history entry that keeps the message's status; False if it is unknown."""
        ...

    # -- retention --------------------------------------------------------------------------

    async def purge_finished(self, before: float, limit: int) -> Purged:
        """Delete up to `limit` messages that ended before `before`, longest-ended first, with
        their attempts, history and status callbacks. A message with a callback still pending
        is kept. Suppressions and idempotency keys are not touched."""
        ...

    async def reclaim_space(self, pages: int) -> int:
        """Give up to `pages` free pages back to the file system; how many free remain
        (0 for backends that manage their space themselves)."""
        ...

    # -- idempotency keys -------------------------------------------------------------------

    async def find_saved_response(self, scope: str, key: str, now: float) -> SavedResponse | None:
        """The response kept for `key` in `scope`, unless it expired by `now`."""
        ...

    async def purge_saved_responses(self, now: float, limit: int) -> int:
        """Delete up to `limit` keys that expired by `now`; return how many went."""
        ...

    # -- the status callback outbox ---------------------------------------------------------

    async def due_webhooks(
        self, now: float, limit: int, in_flight: Iterable[int]
    ) -> list[DueWebhook]:
        """Up to `limit` callbacks due at `now`, oldest first, at most one per message,
        leaving out those in `in_flight`."""
        ...

    async def next_webhook_retry(self, now: float) -> float | None:
        """When the earliest callback waiting on a backoff falls due, if any."""
        ...

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
        ...
