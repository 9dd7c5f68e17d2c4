"""What every provider kind shares: the submission, the outcomes, reports and their errors.

An HTTP kind is a pure `HttpKind`: it builds the request for a submission, classifies the
provider's answer, verifies a report's signature and parses the report. The one
`HttpConnector` does the I/O for all of them. A session-based kind (SMPP) is a `Connector`
of its own with the same outcome types. Nothing here does I/O.

Outcomes, and what the worker does with them:
- `Accepted`: the provider took the message (its id, if it gave one).
- `Unavailable`: 5xx, timeouts, connection errors, documented transient codes. Try the
  next provider; counts against the breaker. A timeout or 5xx after the request was sent
  is ambiguous (the provider may have queued it): dispatchd fails over all the same, so a
  message is sent at least once and never lost, and may now and then arrive twice.
- `Throttled`: the provider asks us to slow down (HTTP 429, Twilio 20429, SMPP
  ESME_RTHROTTLED...). Hold that provider and retry the message later; not a failover,
  not a breaker failure, no attempt used up.
- `Rejected`: a documented permanent refusal of this message; the next provider may take it.
- `InvalidNumber`: an error code that says the number itself is bad. The message ends
  `invalid` and the number is suppressed, so only codes that mean exactly that map here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dispatchd.domain.errors import DispatchdError
from dispatchd.domain.models import Status


@dataclass(frozen=True, slots=True)
class Submission:
    """One message as a provider kind needs it."""

    message_id: str
    to_number: str  # E.164
    body: str
    segments: int
    report_url: str  # where this message's reports go, with dispatchd's per-message token
    validity: float | None = None  # seconds the message may still wait at the provider


@dataclass(frozen=True, slots=True)
class Accepted:
    provider_message_id: str | None
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    reason: str
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class Throttled:
    reason: str
    http_status: int | None = None
    retry_after: float | None = None  # seconds, when the provider said


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    http_status: int | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class InvalidNumber:
    reason: str
    http_status: int | None = None
    code: str | None = None


Outcome = Accepted | Unavailable | Throttled | Rejected | InvalidNumber


@dataclass(frozen=True, slots=True)
class Call:
    """One provider call: its outcome and how long it took."""

    outcome: Outcome
    started_at: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class IncomingReport:
    """A report as it reached dispatchd: the URL the provider called, headers, raw body."""

    url: str  # the full URL as the provider called it: public_url + path + query
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Report:
    """One provider report, read: whose, what it means, and what the provider said."""

    provider_message_id: str
    status: Status | None  # delivered | failed | invalid; None: intermediate, only recorded
    raw_status: str
    error_code: str | None = None
    # Other spellings of the same id to look up (SMPP receipts may give it in decimal where
    # the submit answer gave hex, or the other way round).
    aliases: tuple[str, ...] = field(default=())


class BadReport(DispatchdError):
    """The report cannot be read."""


class ForgedReport(DispatchdError):
    """The report's signature is missing, wrong or stale; nothing was changed."""


class HttpKind(Protocol):
    """The pure half of an HTTP provider kind."""

    # True when `verify` proves the body came from the provider unchanged; only then may a
    # report come without dispatchd's per-message token (an account-level webhook URL).
    signs_body: bool

    def request(self, submission: Submission) -> HttpRequest: ...

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome: ...

    def verify(self, report: IncomingReport, now: float) -> None:
        """Raise ForgedReport unless the provider signed this report (no-op if it signs none)."""
        ...

    def parse(self, report: IncomingReport) -> list[Report]:
        """Every report in the request (some providers batch them); BadReport if unreadable."""
        ...


class Connector(Protocol):
    """How the worker reaches one provider, whatever its kind."""

    async def start(self) -> None: ...

    async def send(self, submission: Submission) -> Call: ...

    async def close(self) -> None: ...


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds (HTTP dates are rare from APIs and read as absent)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 6:
        return float(value)
    return None
