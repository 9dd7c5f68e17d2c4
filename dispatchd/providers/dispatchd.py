"""The `dispatchd` kind: the take-home assignment's wire format, spoken by the simulator.

Send `POST {url}` with JSON `{to_number, message, callback_url}`; a 2xx answers
`{"message_id": ...}`. Reports are `{"status": delivered|failed|invalid, "message_id"}`
posted to the callback URL, which carries dispatchd's per-message token: the format signs
nothing, so the token is its only authentication.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatchd.domain.models import REPORT_STATUSES, Status
from dispatchd.domain.retry import retryable_status
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    HttpRequest,
    IncomingReport,
    Outcome,
    Rejected,
    Report,
    Submission,
    Throttled,
    Unavailable,
    retry_after,
)


@dataclass(frozen=True, slots=True)
class DispatchdSettings:
    url: str


class DispatchdKind:
    """Builds the wire format's requests and reads its answers and reports."""

    # Account-level reports (no per-message token) are taken only if this is True:
    # the format signs nothing.
    signs_body = False

    def __init__(self, settings: DispatchdSettings) -> None:
        self._url = settings.url

    def request(self, submission: Submission) -> HttpRequest:
        payload = {
            "to_number": submission.to_number,
            "message": submission.body,
            "callback_url": submission.report_url,
        }
        return HttpRequest(
            "POST", self._url, {"Content-Type": "application/json"}, json.dumps(payload).encode()
        )

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        if 200 <= status < 300:
            # A 2xx is acceptance even without an id: resending could deliver it twice, and
            # reports still reach us through the per-message callback URL.
            return Accepted(_message_id(body), status)
        detail = f"HTTP {status}: {_error_text(body) or f'HTTP {status}'}"
        if status == 429:
            return Throttled(detail, status, retry_after(headers.get("Retry-After")))
        if retryable_status(status):
            return Unavailable(detail, status)
        return Rejected(detail, status)

    def verify(self, report: IncomingReport, now: float) -> None:
        """The format signs nothing; the per-message token is checked by the route."""

    def parse(self, report: IncomingReport) -> list[Report]:
        fields = _fields(report)
        status, pmid = fields.get("status"), fields.get("message_id")
        allowed = sorted(s.value for s in REPORT_STATUSES)
        if not isinstance(status, str) or status not in allowed:
            raise BadReport(f"status must be one of {', '.join(allowed)}.")
        if not isinstance(pmid, str) or not pmid:
            raise BadReport("message_id must be a non-empty string.")
        return [Report(pmid, Status(status), status)]


def _fields(report: IncomingReport) -> Mapping[str, Any]:
    try:
        data = json.loads(report.body)
    except ValueError as exc:
        raise BadReport("The report is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise BadReport("The report must be a JSON object.")
    return data


def _message_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("message_id") if isinstance(data, dict) else None
    return str(value)[:200] if isinstance(value, str | int) and value != "" else None


def _error_text(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        text = body[:200].decode("utf-8", "replace").strip()
        return text or None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:200]
    return None
