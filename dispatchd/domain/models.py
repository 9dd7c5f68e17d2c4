"""Domain values: statuses, messages, attempts and delivery reports."""

from __future__ import annotations

import enum
import functools
import math
import time
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    INVALID = "invalid"
    EXPIRED = "expired"
    # SMPP's name: a provider took the message and no report came within `report_timeout`.
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {Status.DELIVERED, Status.FAILED, Status.INVALID, Status.EXPIRED, Status.UNKNOWN}
)
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
    REPORT_TIMEOUT = "report_timeout"


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
class StatusCallback:
    """One status change queued for the client's status callback URL, and how sending it went."""

    status: Status
    url: str
    state: str  # pending | delivered | failed (given up)
    attempts: int
    last_http_status: int | None
    last_error: str | None
    created_at: float
    finished_at: float | None


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
    send_at: float | None = None  # when the client scheduled it for; None: at once
    validity_period: float | None = None  # seconds, overriding [delivery] max_age
    status_callback_url: str | None = None
    attempts: tuple[Attempt, ...] = field(default=())
    history: tuple[HistoryEntry, ...] = field(default=())
    callbacks: tuple[StatusCallback, ...] = field(default=())  # loaded by Store.get only


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    status: Status
    provider_message_id: str
    # What the provider said, as it said it ("undelivered, error 30003"), for the history.
    detail: str | None = None

    def source(self, provider: str | None) -> str:
        """How the message's history names this report."""
        text = f" from {provider}" if provider else ""
        return f"{text}: {self.detail}" if self.detail else text


def isoformat(ts: float | None) -> str | None:
    """Render an epoch timestamp as RFC 3339 UTC with milliseconds."""
    if ts is None:
        return None
    secs = math.floor(ts)
    # Round to microseconds first, as datetime does, so 0.7679996 shows as .768.
    micros = round((ts - secs) * 1_000_000)
    if micros >= 1_000_000:
        secs, micros = secs + 1, 0
    return f"{_utc_second(secs)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _utc_second(secs: int) -> str:
    # Every response renders several timestamps, mostly within the same few seconds.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
