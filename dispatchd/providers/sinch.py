"""The `sinch` kind: Sinch's SMS REST API (XMS batches) and its delivery report callbacks.

Send: `POST {base}/xms/v1/{service_plan_id}/batches`, `Authorization: Bearer {api_token}`,
JSON `{"to": [E.164], "from", "body", "type": "mt_text", "delivery_report":
"per_recipient", "callback_url", "client_reference"}` plus `expire_at` when the message has a
validity. The base is `https://{region}.sms.api.sinch.com` (us, eu, au, br, ca) unless `url`
is set. One message is a batch of one recipient, so the batch `id` of the 201 answer (a
ULID) is the provider id, and `client_reference` carries dispatchd's own message id.
Errors are `400` / `403` JSON `{"code", "text"}` (some gateways answer `{"error": {"code",
"message", "status"}}`); `classify` maps them with the tables below.

Reports: with `per_recipient`, Sinch POSTs JSON `{"type": "recipient_delivery_report_sms",
"batch_id", "recipient", "code", "status", "at", "client_reference", ...}` to `callback_url`
for each status change of the recipient. A batch report (`delivery_report_sms`, with a
`statuses` array) is read too, in case a service plan's default sends one to the
application-level URL; inbound messages (`mo_*`) posted there are not reports and are
ignored. A report is matched on `batch_id`; `recipient` comes back as an MSISDN without `+`.

Verify: nothing to check. Sinch signs no SMS callback in the default setup: the documented
options (Basic auth or OAuth 2.0 in the callback URL, mTLS, and since 2025 an HMAC secret per
service plan) are all arranged through the account manager. The per-message report URL's
token, checked by the service before `verify`, is what authenticates a report.

Ambiguity: a timeout or 5xx after the request was written may mean Sinch queued the batch;
dispatchd fails over anyway (at least once). A 429 ("too many outstanding requests") holds
Sinch and retries it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    HttpRequest,
    IncomingReport,
    InvalidNumber,
    Outcome,
    Rejected,
    Report,
    Submission,
    Throttled,
    Unavailable,
    retry_after,
)

REGIONS = ("us", "eu", "au", "br", "ca")
JSON = "application/json"
DELIVERY_REPORT = "per_recipient"
RECIPIENT_REPORT_TYPES = frozenset(
    {"recipient_delivery_report_sms", "recipient_delivery_report_mms"}
)
BATCH_REPORT_TYPES = frozenset({"delivery_report_sms", "delivery_report_mms"})
INBOUND_TYPES = frozenset({"mo_text", "mo_binary", "mo_media"})
# `expire_at`: "Default and max is 3 days after send_at" (the batch's send parameters).
VALIDITY_MIN = 1
VALIDITY_MAX = 3 * 24 * 3600
# A batch id is a 26-character ULID; the bound refuses garbage without refusing a new format.
MAX_ID_LENGTH = 64
MAX_TEXT = 200

# -- mapping tables (pure data; the README's tables are generated from / checked against them)

# The "Delivery report statuses" table of the SMS API reference (tag Delivery-reports).
REPORT_STATUSES: Mapping[str, Status | None] = MappingProxyType(
    {
        # Intermediate: recorded in the history, the message does not change.
        "Queued": None,
        "Dispatched": None,
        # Documented as final ("delivered to the SMSC but no Delivery Receipt has been
        # received or ... couldn't be interpreted"), yet neither delivered nor failed: it is
        # recorded, and the message waits for its own expiry.
        "Unknown": None,
        "Delivered": Status.DELIVERED,
        "Failed": Status.FAILED,
        "Rejected": Status.FAILED,  # "rejected by the SMSC"
        "Aborted": Status.FAILED,  # "aborted before reaching the SMSC"
        "Cancelled": Status.FAILED,  # "cancelled by user before reaching SMSC"
        "Expired": Status.FAILED,
        # "deleted by a remote SMSC. This may happen if the destination is an invalid MSISDN
        # or opted out subscriber": both mean this number must not be sent to again.
        "Deleted": Status.INVALID,
    }
)
_STATUS_BY_LOWER = {name.lower(): status for name, status in REPORT_STATUSES.items()}

# Send-time codes that mean the number itself is bad: none. Sinch's only candidate,
# `syntax_invalid_parameter_format`, is about any field ("for example if a MSISDN is not
# correctly formatted"), so it cannot suppress a number.
INVALID_NUMBER_CODES: Mapping[str, str] = MappingProxyType({})

# Documented on purpose as *not* invalid, with why (checked by the tests, shown in the README).
NOT_INVALID_CODES: Mapping[str, str] = MappingProxyType(
    {
        "syntax_invalid_parameter_format": (
            "The format of a field value is invalid (the number or any other field)"
        ),
    }
)

# 400 codes from the "HTTP Status Codes" page: this request is wrong; the next provider may
# take the message. Any other 400 is treated the same way.
REJECTED_CODES: Mapping[str, str] = MappingProxyType(
    {
        "syntax_invalid_json": "The JSON in the request is invalid or does not conform to the API",
        "syntax_invalid_parameter_format": NOT_INVALID_CODES["syntax_invalid_parameter_format"],
        "syntax_constraint_violation": "The request body doesn't fulfill the API's constraints",
    }
)

# 403 codes: about the service plan's set-up, not this message, so every message would fail
# alike; they count against the breaker and the traffic goes elsewhere (as do 401 "token is
# invalid for this service plan", 403 without a code, and 404 "the path is invalid").
UNAVAILABLE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "unknown_group": "A referenced group ID is unknown",
        "unknown_campaign": "The campaign ID does not match the specified originator",
        "missing_callback_url": "Callback has been requested but no URL is provided",
    }
)


@dataclass(frozen=True, slots=True)
class SinchSettings:
    """One Sinch service plan as dispatchd sends through it."""

    service_plan_id: str
    api_token: str = field(repr=False)
    from_: str
    region: str = "us"
    url: str | None = None  # overrides the regional base, e.g. the simulator's

    def __post_init__(self) -> None:
        for key in ("service_plan_id", "api_token", "from_"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key.rstrip('_')}: required")
        if self.region not in REGIONS:
            raise ValueError(f"region: {self.region!r} is not one of {', '.join(REGIONS)}")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url: {self.url!r} is not an http(s) URL")

    @property
    def base_url(self) -> str:
        """The API base: `url`, or the region's public endpoint."""
        if self.url is not None:
            return self.url.rstrip("/")
        return f"https://{self.region}.sms.api.sinch.com"


class Sinch:
    """The pure half of the `sinch` kind (see the module docstring).

    `clock` (Unix seconds) only turns a submission's validity into Sinch's absolute
    `expire_at`; the daemon passes its own.
    """

    # Account-level reports (no per-message token) are taken only if this is True:
    # delivery reports are not signed.
    signs_body = False

    def __init__(self, settings: SinchSettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        plan = quote(settings.service_plan_id, safe="")
        self._url = f"{settings.base_url}/xms/v1/{plan}/batches"
        self._headers = {
            "Authorization": f"Bearer {settings.api_token}",
            "Content-Type": JSON,
            "Accept": JSON,
        }

    def request(self, submission: Submission) -> HttpRequest:
        batch: dict[str, Any] = {
            "to": [submission.to_number],
            "from": self._settings.from_,
            "body": submission.body,
            "type": "mt_text",
            "delivery_report": DELIVERY_REPORT,
            "callback_url": submission.report_url,
            "client_reference": submission.message_id,
        }
        if submission.validity is not None:
            batch["expire_at"] = expire_at(self._clock(), submission.validity)
        body = json.dumps(batch, ensure_ascii=False).encode("utf-8")
        return HttpRequest("POST", self._url, self._headers, body)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        if 200 <= status < 300:
            # Taken as accepted even without a readable id: resending could deliver the
            # message twice, and its reports still arrive at the per-message URL.
            return Accepted(_batch_id(body), status)
        code, text = _error(body)
        reason = _reason(status, code, text)
        if status == 429:
            return Throttled(reason, status, retry_after(_header(headers, "Retry-After")))
        if status >= 500 or status == 408:
            return Unavailable(reason, status)
        if code in INVALID_NUMBER_CODES:
            return InvalidNumber(reason, status, code)
        if code in UNAVAILABLE_CODES or status in (401, 403, 404):
            return Unavailable(reason, status)
        return Rejected(reason, status, code)

    def verify(self, report: IncomingReport, now: float) -> None:
        # Nothing is signed in Sinch's default set-up (see the module docstring): the
        # per-message URL's token, already checked by the service, authenticates the report.
        return None

    def parse(self, report: IncomingReport) -> list[Report]:
        media = report.content_type.split(";", 1)[0].strip().lower()
        if media not in ("", JSON):
            raise BadReport(f"expected a JSON delivery report, got {media}")
        try:
            data = json.loads(report.body)
        except ValueError as exc:
            raise BadReport("the body is not JSON") from exc
        if not isinstance(data, dict):
            raise BadReport("the body is not a JSON object")
        kind = data.get("type")
        if kind in INBOUND_TYPES:
            return []  # an inbound message sent to the same URL: nothing to apply
        batch_id = _text(data, "batch_id", MAX_ID_LENGTH)
        if kind in RECIPIENT_REPORT_TYPES:
            return [_report(batch_id, data)]
        if kind in BATCH_REPORT_TYPES:
            statuses = data.get("statuses")
            if not isinstance(statuses, list) or not all(isinstance(s, dict) for s in statuses):
                raise BadReport("statuses is not a list of objects")
            return [_report(batch_id, entry) for entry in statuses]
        raise BadReport(f"not a delivery report (type {str(kind)[:MAX_TEXT]!r})")


# -- pure helpers, public for the simulator and the tests -------------------------------------


def expire_at(now: float, validity: float) -> str:
    """Sinch's `expire_at` (ISO-8601, milliseconds, UTC) for `validity` seconds from `now`."""
    # Rounded down so Sinch never holds a message past dispatchd's own validity.
    seconds = validity if math.isfinite(validity) else VALIDITY_MAX
    seconds = max(VALIDITY_MIN, min(VALIDITY_MAX, seconds))
    millis = math.floor((now + seconds) * 1000)
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def report_status(raw_status: str) -> Status | None:
    """dispatchd's status for a Sinch delivery report status (None: intermediate or unknown)."""
    return _STATUS_BY_LOWER.get(raw_status.strip().lower())


def _report(batch_id: str, data: Mapping[str, Any]) -> Report:
    raw = _text(data, "status", MAX_TEXT)
    return Report(batch_id, report_status(raw), raw, _code(data.get("code")))


def _text(data: Mapping[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadReport(f"no usable {key}")
    return value


def _code(value: Any) -> str | None:
    """The numeric status `code`, kept as text (0 and the 4xx codes alike)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        return value
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # aiohttp's headers are case-insensitive; a plain dict (tests, other callers) is not.
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _batch_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    batch_id = data.get("id") if isinstance(data, dict) else None
    return batch_id if isinstance(batch_id, str) and 0 < len(batch_id) <= MAX_ID_LENGTH else None


def _error(body: bytes) -> tuple[str | None, str | None]:
    """Sinch's error `code` and `text`, or whatever the body holds."""
    try:
        data = json.loads(body)
    except ValueError:
        plain = body[:MAX_TEXT].decode("utf-8", "replace").strip()
        return None, plain or None
    if not isinstance(data, dict):
        return None, None
    raw_code: Any = data.get("code")
    raw_text: Any = data.get("text")
    nested = data.get("error")
    if isinstance(nested, dict):
        # The gateway's form: {"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}.
        raw_code, raw_text = nested.get("status"), nested.get("message")
    code = raw_code if isinstance(raw_code, str) and 0 < len(raw_code) <= MAX_TEXT else None
    text = raw_text[:MAX_TEXT] if isinstance(raw_text, str) and raw_text else None
    return code, text


def _reason(status: int, code: str | None, text: str | None) -> str:
    known = code and (
        INVALID_NUMBER_CODES.get(code) or UNAVAILABLE_CODES.get(code) or REJECTED_CODES.get(code)
    )
    detail = text or known or "no detail"
    return f"HTTP {status}, Sinch {code}: {detail}" if code else f"HTTP {status}: {detail}"
