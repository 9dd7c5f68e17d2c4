"""Domain values: statuses, messages, attempts and delivery reports."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime


class Status(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    INVALID = "invalid"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.DELIVERED, Status.FAILED, Status.INVALID, Status.EXPIRED})
REPORT_STATUSES = frozenset({Status.DELIVERED, Status.FAILED, Status.INVALID})


class Outcome(enum.StrEnum):
    """How one provider call ended."""

    ACCEPTED = "accepted"
    UNAVAILABLE = "unavailable"
    REJECTED = "rejected"


class ErrorCode(enum.StrEnum):
    PROVIDERS_UNAVAILABLE = "providers_unavailable"
    PROVIDER_REJECTED = "provider_rejected"
    NUMBER_SUPPRESSED = "number_suppressed"
    EXPIRED = "expired"
    REPORTED_FAILED = "reported_failed"
    REPORTED_INVALID = "reported_invalid"


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    started_at: float
    outcome: Outcome
    http_status: int | None
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    status: Status
    at: float
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    to_number: str
    body: str
    status: Status
    segments: int
    encoding: str
    created_at: float
    updated_at: float
    expires_at: float
    attempt_count: int = 0
    provider: str | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error_detail: str | None = None
    next_attempt_at: float | None = None
    attempts: tuple[Attempt, ...] = field(default=())
    history: tuple[HistoryEntry, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    status: Status
    provider_message_id: str


def isoformat(ts: float | None) -> str | None:
    """Render an epoch timestamp as RFC 3339 UTC with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
