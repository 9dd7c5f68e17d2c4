"""The `plivo` kind: Plivo's Message API and its message status callbacks.

Send: `POST {url}/v1/Account/{auth_id}/Message/`, JSON `{"src", "dst", "text", "type": "sms",
"url", "method": "POST"}` plus `message_expiry` when the message has a validity, HTTP Basic
`auth_id:auth_token`. `dst` is the E.164 number without its `+`, as Plivo's reference writes
it ("prefixed with the country code but without the '+' sign"; today's reference strips the
`+` itself). A 202 `{"api_id", "message": "message(s) queued", "message_uuid": ["..."]}`
carries one id per destination; dispatchd sends one, so the id is `message_uuid[0]`.
Errors are `{"api_id", "error"}` (a 401 may lack `api_id`); `classify` maps them below.

Reports: with `method` POST, Plivo POSTs form-encoded `MessageUUID`, `Status`, `ErrorCode`
(on failed / undelivered; `000` means none), `To`, `From`, `Units`, `TotalRate`, ... to
`url` whenever the status changes (plivo.com/docs/messaging/api/message/message-status-
callbacks). Plivo keeps one record per message whatever its unit count, so one report stream
covers a multi-part message. `ParentMessageUUID` is documented as "reserved for future use,
same as the MessageUUID": a report is matched on it when present, with `MessageUUID` as an
alias, so should Plivo ever report parts under their own ids they land on the message whose
id the 202 gave, and the first final part decides it (finals are sticky).

Verify: `X-Plivo-Signature-V2` is base64(HMAC-SHA256(auth token, the URL Plivo called
without its query string, followed by `X-Plivo-Signature-V2-Nonce`))
(plivo.com/docs/messaging/concepts/signature-validation; the SDK's `validate_signature`).
Neither the query nor the body is signed, and there is no timestamp: a signature proves
only that Plivo once called this path with this nonce. So on the per-message URL it is the
token in the query that binds a report to its message, and a stale (replayed) report cannot
be told from a fresh one; replays are harmless because reports are idempotent and finals
sticky. On the account-level route (no query) a captured nonce and signature would sign any
body, which is why dispatchd gives Plivo the per-message URL with every message.

Ambiguity: a timeout or 5xx after the request was written may mean Plivo queued the
message; dispatchd fails over anyway (at least once). A 429 ("Too many requests, rate
limited"; 300 requests per 5 s per account) holds Plivo and retries it later: a rate-limited
request is taken as not queued, which Plivo's docs imply but do not state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote, urlparse, urlunparse

from dispatchd.domain.models import Status
from dispatchd.providers.base import (
    Accepted,
    BadReport,
    ForgedReport,
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

DEFAULT_URL = "https://api.plivo.com"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
SIGNATURE_HEADER = "X-Plivo-Signature-V2"
NONCE_HEADER = "X-Plivo-Signature-V2-Nonce"
# support.plivo.com "Message Expiry": message_expiry takes 5..10799 seconds; without it a
# message expires after 10800 s (three hours) in Plivo's queue, failed with error 420.
EXPIRY_MIN = 5
EXPIRY_MAX = 10_799
# Plivo's ids are 36-character UUIDs; the cap refuses garbage without refusing a new format.
MAX_ID_LENGTH = 64
MAX_NONCE_LENGTH = 128
MAX_TEXT = 200

# -- mapping tables (pure data; the README's tables are generated from / checked against them)

REPORT_STATUSES: Mapping[str, Status | None] = MappingProxyType(
    {
        # Intermediate: recorded in the history, the message does not change. "queued" is
        # Plivo's own queue; "sent" means handed to the carrier (Plivo's SMS error codes
        # blog, and the callbacks page's Status values).
        "queued": None,
        "sent": None,
        # Inbound-only: never expected on an outbound callback, recorded only.
        "received": None,
        "delivered": Status.DELIVERED,
        # WhatsApp only; a read receipt comes after delivery, so it proves delivery if the
        # `delivered` callback was lost.
        "read": Status.DELIVERED,
        # "failed": Plivo could not hand it to a carrier; "undelivered": the carrier could
        # not deliver it; "rejected": the older docs' name. Turned into `invalid` only by an
        # ErrorCode in INVALID_NUMBER_CODES.
        "failed": Status.FAILED,
        "undelivered": Status.FAILED,
        "rejected": Status.FAILED,
    }
)

# ErrorCodes that mean the number itself cannot take SMS. Each suppresses the number
# everywhere, so a code is here only when every documented cause is the number.
# Source: plivo.com/docs/messaging/troubleshooting/error-codes (and the same table in
# Plivo's "Introducing SMS error codes" post).
INVALID_NUMBER_CODES: Mapping[str, str] = MappingProxyType(
    {
        # "The destination number you entered is either not entered correctly, not
        # SMS-enabled, or is a PSTN landline."
        "50": "Invalid destination number (wrong, not SMS-enabled, or a landline)",
    }
)

# Documented on purpose as *not* invalid, with why (checked by the tests, shown in the README).
NOT_INVALID_CODES: Mapping[str, str] = MappingProxyType(
    {
        # "a broad error code where the carrier has not indicated the reason".
        "70": "Destination permanently unavailable (broad; the carrier gave no reason)",
        # "a handset being turned off or out of coverage ... retry later".
        "80": "Destination temporarily unavailable",
        # The destination network did not support the message being sent: a route matter.
        "100": "Prohibited by carrier",
        # The recipient opted out of this sender (STOP); the number is fine.
        "200": "Source number blocked by STOP from destination number",
        # A US toll-free sender cannot reach Canada: the sender's limit, not the number's.
        "201": "US toll-free to Canadian destinations blocked",
        # docs.plivo.com/docs/faq/messaging/sms: the account's Geo Permissions.
        "450": "Destination country barred (Geo Permissions)",
    }
)

# Other documented ErrorCodes, for the history and the README (all map to `failed`).
OTHER_ERROR_CODES: Mapping[str, str] = MappingProxyType(
    {
        "10": "Invalid message",
        "20": "Network error (temporary)",
        "30": "Spam detected",
        "40": "Invalid source number",
        "60": "Loop detected",
        "90": "No route available",
        "110": "Message too long",
        # support.plivo.com "Message Expiry": left in Plivo's queue past message_expiry.
        "420": "Message expired in Plivo's queue",
        # support.plivo.com: "failed with Plivo error code 900" when the balance runs out.
        "900": "Insufficient credit",
        "1000": "Unknown error",
    }
)

# Send-time `error` texts about the account, not the message: every message would fail
# alike, so they count against the breaker and the traffic goes elsewhere.
# support.plivo.com: after a failure for want of credit, "all send message API requests
# will fail with the error 'Insufficient Credit'" for two minutes.
UNAVAILABLE_ERRORS = ("insufficient credit",)

# plivo.com/docs/messaging/concepts/destination-number-validation: a 400 with
# `"error": "19332631167 is not a valid phone number"` for an invalid or non-SMS-enabled
# destination; the Node SDK has seen it quoted with a full stop (plivo/plivo-node#222).
_NOT_A_VALID_NUMBER = re.compile(
    r"'?\+?(?P<number>[0-9]{1,20})'? is not a valid phone number\.?", re.IGNORECASE
)
_SRC_STRIPPED = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True, slots=True)
class PlivoSettings:
    """One Plivo account (or subaccount) as dispatchd sends through it."""

    auth_id: str
    auth_token: str = field(repr=False)
    from_: str
    url: str = DEFAULT_URL

    def __post_init__(self) -> None:
        if not self.auth_id or not self.auth_id.strip():
            raise ValueError("auth_id: required (the account's Auth ID, MA... or SA...)")
        if any(c.isspace() or c in "/?#" for c in self.auth_id):
            raise ValueError("auth_id: must not contain spaces, '/', '?' or '#'")
        if not self.auth_token:
            raise ValueError("auth_token: required")
        if not self.from_ or not _SRC_STRIPPED.sub("", self.from_):
            raise ValueError("from: required (a Plivo number, short code or sender ID)")
        parts = urlparse(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: must be an http(s) URL, got {self.url!r}")


class Plivo:
    """The pure half of the `plivo` kind (see the module docstring)."""

    # Account-level reports (no per-message token) are taken only if this is True:
    # X-Plivo-Signature-V2 covers the URL and a nonce, not the body.
    signs_body = False

    def __init__(self, settings: PlivoSettings) -> None:
        self._settings = settings
        auth_id = quote(settings.auth_id, safe="")
        self._url = f"{settings.url.rstrip('/')}/v1/Account/{auth_id}/Message/"
        credentials = f"{settings.auth_id}:{settings.auth_token}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
        # Plivo strips everything but letters and digits from `src`.
        self._src_digits = _SRC_STRIPPED.sub("", settings.from_)

    def request(self, submission: Submission) -> HttpRequest:
        payload: dict[str, Any] = {
            "src": self._settings.from_,
            "dst": destination(submission.to_number),
            "text": submission.body,
            "type": "sms",
            "url": submission.report_url,
            "method": "POST",
        }
        if submission.validity is not None:
            expiry = message_expiry(submission.validity)
            if expiry is not None:
                payload["message_expiry"] = expiry
        headers = {
            "Authorization": self._authorization,
            "Content-Type": JSON,
            "Accept": JSON,
        }
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        return HttpRequest("POST", self._url, headers, body)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        data = _json_object(body)
        if 200 <= status < 300:
            uuid = _message_uuid(data)
            invalid = data.get("invalid_number") if data else None
            if uuid is None and isinstance(invalid, list) and invalid:
                # One destination was sent; Plivo listed it as invalid and queued nothing.
                return InvalidNumber(f"HTTP {status}: Plivo listed the number as invalid", status)
            # Taken as accepted even without a readable id: resending could deliver the
            # message twice, and its reports still arrive at the per-message URL.
            return Accepted(uuid, status)
        error = _error_text(data, body)
        reason = f"HTTP {status}: {error}" if error else f"HTTP {status}: no detail"
        if status == 429:
            return Throttled(reason, status, retry_after(_header(headers, "Retry-After")))
        if status >= 500 or status == 408:
            return Unavailable(reason, status)
        lowered = (error or "").lower()
        if any(text in lowered for text in UNAVAILABLE_ERRORS):
            return Unavailable(reason, status)
        if status in (401, 404):
            # Wrong auth_id / auth_token or url: every message would fail alike, so the
            # breaker takes the account out.
            return Unavailable(reason, status)
        if status == 400 and self._names_destination_invalid(error):
            return InvalidNumber(reason, status)
        # 403 on POST Message is the SDK's GeoPermissionError (destination country not
        # enabled for this account): this message's refusal, another provider may take it.
        return Rejected(reason, status)

    def verify(self, report: IncomingReport, now: float) -> None:
        # `now` is unused: Plivo's V2 signature carries no timestamp (module docstring).
        given = _header(report.headers, SIGNATURE_HEADER)
        nonce = _header(report.headers, NONCE_HEADER)
        if not given:
            raise ForgedReport(f"no {SIGNATURE_HEADER} header")
        if not nonce:
            raise ForgedReport(f"no {NONCE_HEADER} header")
        if len(nonce) > MAX_NONCE_LENGTH:
            raise ForgedReport(f"{NONCE_HEADER} is too long")
        computed = signature(self._settings.auth_token, report.url, nonce).encode("ascii")
        if not hmac.compare_digest(computed, given.strip().encode("utf-8", "replace")):
            raise ForgedReport(f"{SIGNATURE_HEADER} does not match")

    def parse(self, report: IncomingReport) -> list[Report]:
        media = report.content_type.split(";", 1)[0].strip().lower()
        if media not in ("", FORM):
            raise BadReport(f"expected a form-encoded status callback, got {media}")
        try:
            text = report.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadReport("the body is not UTF-8") from exc
        fields = dict(parse_qsl(text, keep_blank_values=True))
        uuid = fields.get("MessageUUID", "").strip()
        parent = fields.get("ParentMessageUUID", "").strip()
        raw = fields.get("Status", "").strip()
        if not uuid or len(uuid) > MAX_ID_LENGTH or len(parent) > MAX_ID_LENGTH:
            raise BadReport("no usable MessageUUID")
        if not raw or len(raw) > MAX_TEXT:
            raise BadReport("no usable Status")
        code = fields.get("ErrorCode", "").strip() or None
        if code is not None and len(code) > MAX_TEXT:
            raise BadReport("ErrorCode is too long")
        primary = parent or uuid
        aliases = (uuid,) if uuid != primary else ()
        return [Report(primary, report_status(raw, code), raw, code, aliases)]

    def _names_destination_invalid(self, error: str | None) -> bool:
        match = _NOT_A_VALID_NUMBER.fullmatch((error or "").strip())
        # The same words about `src` would be the sender's fault, not the number's.
        return match is not None and match["number"] != self._src_digits


# -- pure helpers, public for the simulator and the tests -------------------------------------


def destination(to_number: str) -> str:
    """`dst` for an E.164 number: its digits, without the `+`."""
    return to_number.strip().removeprefix("+")


def message_expiry(seconds: float) -> int | None:
    """Whole seconds for `message_expiry` (5..10799), or None for Plivo's default (10800)."""
    if not math.isfinite(seconds) or seconds >= EXPIRY_MAX + 1:
        return None
    # Rounded down so Plivo never holds a message past dispatchd's own validity.
    return max(EXPIRY_MIN, min(EXPIRY_MAX, math.floor(seconds)))


def normal_code(error_code: str | None) -> str | None:
    """An ErrorCode as the tables spell it: Plivo pads `000`, so leading zeros are dropped."""
    if error_code is None:
        return None
    code = error_code.strip()
    return (code.lstrip("0") or "0") if code.isdigit() else code


def report_status(raw_status: str, error_code: str | None) -> Status | None:
    """dispatchd's status for a Plivo `Status` and `ErrorCode` (None: intermediate)."""
    status = REPORT_STATUSES.get(raw_status.strip().lower())
    if status is Status.FAILED and normal_code(error_code) in INVALID_NUMBER_CODES:
        return Status.INVALID
    return status


def signed_url(url: str) -> str:
    """The part of `url` that Plivo's V2 signature covers: no params, query or fragment."""
    parts = urlparse(url)
    return urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))


def signature(auth_token: str, url: str, nonce: str) -> str:
    """Plivo's `X-Plivo-Signature-V2` for a callback to `url` with this nonce."""
    signed = (signed_url(url) + nonce).encode("utf-8")
    digest = hmac.new(auth_token.encode("utf-8"), signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # aiohttp's headers are case-insensitive; a plain dict (tests, other callers) is not.
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _message_uuid(data: dict[str, Any] | None) -> str | None:
    uuids = data.get("message_uuid") if data else None
    if isinstance(uuids, str):
        uuids = [uuids]
    if not isinstance(uuids, list) or not uuids:
        return None
    first = uuids[0]
    return first if isinstance(first, str) and 0 < len(first) <= MAX_ID_LENGTH else None


def _error_text(data: dict[str, Any] | None, body: bytes) -> str | None:
    """Plivo's `error` (a sentence, or field errors), or whatever text the body holds."""
    if data is None:
        text = body[:MAX_TEXT].decode("utf-8", "replace").strip()
        return text or None
    error = data.get("error", data.get("message"))
    if error is None or error == "":
        return None
    if isinstance(error, str):
        return error.strip()[:MAX_TEXT]
    return json.dumps(error, ensure_ascii=False)[:MAX_TEXT]
