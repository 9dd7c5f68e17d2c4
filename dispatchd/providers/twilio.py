"""The `twilio` kind: Twilio's Programmable Messaging REST API and its status callbacks.

Send: `POST {url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`,
`From` and/or `MessagingServiceSid`, `Body`, `StatusCallback` (the per-message report URL)
and `ValidityPeriod`, HTTP Basic `AccountSid:AuthToken`. A 201 carries the Message resource;
its `sid` (`SM...`) is the provider id. Errors are JSON `{"code", "message", "more_info",
"status"}`; `classify` maps them with the tables below.

Reports: Twilio POSTs form-encoded `MessageSid`, `MessageStatus` and, on failure,
`ErrorCode` (plus fields it adds without notice) to `StatusCallback`. There is one report
stream per Message resource, whatever its segment count, so a multi-part message needs no
per-part rule. No callback is sent for the initial status (`queued` / `accepted`).

Verify: `X-Twilio-Signature` is base64(HMAC-SHA1(AuthToken, URL + the sorted POST
parameters as name+value)). The URL is the one Twilio called, tried with and without its
port as Twilio's own validators do, because Twilio has signed both forms over the years.
Twilio signs no timestamp, so a stale (replayed) report cannot be told from a fresh one;
replays are harmless because reports are idempotent and finals sticky.

Ambiguity: a timeout or 5xx after the request was written may mean Twilio queued the
message; dispatchd fails over anyway (at least once). A 429/20429 is documented as "never
processed and always safe to retry", so throttling retries Twilio without a duplicate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit, urlunsplit

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

API_VERSION = "2010-04-01"
DEFAULT_URL = "https://api.twilio.com"
FORM = "application/x-www-form-urlencoded"
SIGNATURE_HEADER = "X-Twilio-Signature"
# Present when a Webhook Rule signs with its own SharedKey instead of the auth token.
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
# twilio.com/docs/api/errors/21624 and /90007; the SDK's `validity_period` docstring.
VALIDITY_MIN = 1
VALIDITY_MAX = 36_000
# Far above any real SID (34 characters); refuses garbage without refusing a new format.
MAX_ID_LENGTH = 64
MAX_TEXT = 200

# -- mapping tables (pure data; the README's tables say the same, so change both together)

REPORT_STATUSES: Mapping[str, Status | None] = MappingProxyType(
    {
        # Intermediate: recorded in the history, the message does not change.
        # twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks
        "accepted": None,
        "scheduled": None,
        "queued": None,
        "sending": None,
        "sent": None,
        # Inbound-only statuses: never expected on an outbound callback, recorded only.
        "receiving": None,
        "received": None,
        # Neither delivered nor failed describes it; recorded, and the message waits for
        # a final report or its own expiry.
        "partially_delivered": None,
        "delivered": Status.DELIVERED,
        # A read receipt (WhatsApp/RCS) comes after delivery; if the `delivered`
        # callback was lost it is the only proof of delivery there is.
        "read": Status.DELIVERED,
        # Turned into `invalid` only by an error code in INVALID_NUMBER_CODES.
        "undelivered": Status.FAILED,
        "failed": Status.FAILED,
        # A scheduled message cancelled at Twilio will never be sent.
        "canceled": Status.FAILED,
    }
)

# Error codes that mean the number itself cannot take SMS, at send time (400) or in a
# failed/undelivered report. Each suppresses the number everywhere, so a code is here only
# when every documented cause is the number, never the sender, route, content or account.
INVALID_NUMBER_CODES: Mapping[str, str] = MappingProxyType(
    {
        "21211": "Invalid 'To' phone number",  # errors/21211
        "21614": "'To' number is not a valid mobile number (landline or invalid)",  # errors/21614
        "21635": "'To' number cannot be a landline",  # errors/21635
        "30005": "Unknown destination handset: unknown and may no longer exist",  # errors/30005
    }
)

# Documented on purpose as *not* invalid, with why (checked by the tests, shown in the README).
NOT_INVALID_CODES: Mapping[str, str] = MappingProxyType(
    {
        # errors/30003: powered off, no signal, roaming: usually temporary.
        "30003": "Unreachable destination handset (often temporary)",
        # errors/30006: a landline, *or* a short code that cannot reach the carrier: the
        # second cause is the sender's, and a good mobile number must not be suppressed.
        "30006": "Landline or unreachable carrier (may be the sender's route)",
        # errors/21610: the recipient replied STOP to this sender; the number is fine.
        "21610": "Attempt to send to unsubscribed recipient (STOP)",
        # errors/21612: this To/From pair cannot be connected; another route may.
        "21612": "'To' cannot be reached from this 'From'",
    }
)

# Send-time codes that ask us to slow down: hold Twilio, retry it later.
THROTTLE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "20429": "Too many concurrent requests: never processed, safe to retry",  # errors/20429
        "21611": "This 'From' number's queue exceeds 10 hours of sending",  # errors/21611
    }
)

# Send-time codes about the account or the endpoint, not the message: every message would
# fail alike, so they count against the breaker and the traffic goes elsewhere.
UNAVAILABLE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "20003": "Authentication failed: check account_sid and auth_token",  # errors/20003
        "20404": "Resource not found: check account_sid and url",
        "20500": "Twilio internal server error",
        "20503": "Twilio service unavailable",
    }
)

# Documented permanent refusals of this message; the next provider may take it. Any other
# 4xx is treated the same way.
REJECTED_CODES: Mapping[str, str] = MappingProxyType(
    {
        "21408": "Permission to send to this region is not enabled",
        "21602": "Message body is required",  # errors/21602
        "21603": "'From' (or MessagingServiceSid) is required",
        "21604": "'To' phone number is required",  # errors/21604
        "21606": "'From' is not a valid message-capable number for this account",
        "21608": "Trial account: 'To' is not a verified number",  # errors/21608
        "21609": "Invalid StatusCallback URL",
        "21610": NOT_INVALID_CODES["21610"],
        "21612": NOT_INVALID_CODES["21612"],
        "21617": "Body exceeds 1600 characters",  # errors/21617
        "21624": "Invalid ValidityPeriod",  # errors/21624
        "21701": "The Messaging Service does not exist",  # errors/21701
        "21705": "The Messaging Service SID is invalid",  # errors/21705
    }
)


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    """One Twilio account as dispatchd sends through it."""

    account_sid: str
    auth_token: str = field(repr=False)
    from_: str | None = None
    messaging_service_sid: str | None = None
    url: str = DEFAULT_URL

    def __post_init__(self) -> None:
        if not self.account_sid or not self.auth_token:
            raise ValueError("twilio: account_sid and auth_token are required")
        if not self.from_ and not self.messaging_service_sid:
            raise ValueError("twilio: one of from / messaging_service_sid is required")


class Twilio:
    """The pure half of the `twilio` kind (see the module docstring)."""

    # Account-level reports (no per-message token) are taken only if this is True:
    # X-Twilio-Signature covers the URL and every parameter.
    signs_body = True

    def __init__(self, settings: TwilioSettings) -> None:
        self._settings = settings
        sid = quote(settings.account_sid, safe="")
        self._url = f"{settings.url.rstrip('/')}/{API_VERSION}/Accounts/{sid}/Messages.json"
        credentials = f"{settings.account_sid}:{settings.auth_token}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode("ascii")

    def request(self, submission: Submission) -> HttpRequest:
        s = self._settings
        fields = [("To", submission.to_number)]
        if s.from_:
            fields.append(("From", s.from_))
        if s.messaging_service_sid:
            fields.append(("MessagingServiceSid", s.messaging_service_sid))
        fields.append(("Body", submission.body))
        fields.append(("StatusCallback", submission.report_url))
        if submission.validity is not None:
            fields.append(("ValidityPeriod", str(validity_period(submission.validity))))
        headers = {
            "Authorization": self._authorization,
            "Content-Type": FORM,
            "Accept": "application/json",
        }
        return HttpRequest("POST", self._url, headers, urlencode(fields).encode("ascii"))

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        if 200 <= status < 300:
            # Taken as accepted even without a readable sid: resending could deliver the
            # message twice, and its reports still arrive at the per-message URL.
            return Accepted(_sid(body), status)
        code, message = _error(body)
        reason = _reason(status, code, message)
        if status == 429 or code in THROTTLE_CODES:
            return Throttled(reason, status, retry_after(_header(headers, "Retry-After")))
        if status >= 500 or status == 408:
            return Unavailable(reason, status)
        if code in INVALID_NUMBER_CODES:
            return InvalidNumber(reason, status, code)
        if code in UNAVAILABLE_CODES or status in (401, 403, 404):
            return Unavailable(reason, status)
        return Rejected(reason, status, code)

    def verify(self, report: IncomingReport, now: float) -> None:
        # `now` is unused: Twilio signs no timestamp (see the module docstring).
        given = _header(report.headers, SIGNATURE_HEADER)
        if not given:
            raise ForgedReport(f"no {SIGNATURE_HEADER} header")
        if _header(report.headers, SIGNATURE_SETTINGS_HEADER):
            raise ForgedReport(
                "signed with a Webhook Rule's SharedKey, which dispatchd does not support; "
                "remove the rule so Twilio signs with the auth token"
            )
        params = _signed_params(report)
        expected = given.strip().encode("utf-8", "replace")
        for url in url_variants(report.url):
            computed = signature(self._settings.auth_token, url, params).encode("ascii")
            if hmac.compare_digest(computed, expected):
                return
        raise ForgedReport(f"{SIGNATURE_HEADER} does not match")

    def parse(self, report: IncomingReport) -> list[Report]:
        media = report.content_type.split(";", 1)[0].strip().lower()
        if media not in ("", FORM):
            raise BadReport(f"expected a form-encoded status callback, got {media}")
        fields = dict(_form(report.body))
        sid = fields.get("MessageSid") or fields.get("SmsSid")
        raw = fields.get("MessageStatus") or fields.get("SmsStatus")
        if not sid or len(sid) > MAX_ID_LENGTH:
            raise BadReport("no usable MessageSid")
        if not raw or len(raw) > MAX_TEXT:
            raise BadReport("no usable MessageStatus")
        code = fields.get("ErrorCode") or None
        if code is not None and len(code) > MAX_TEXT:
            raise BadReport("ErrorCode is too long")
        return [Report(sid, report_status(raw, code), raw, code)]


# -- pure helpers, public for the simulator and the tests -------------------------------------


def validity_period(seconds: float) -> int:
    """Whole seconds for `ValidityPeriod`, within Twilio's accepted 1..36000."""
    # Rounded down so Twilio never holds a message past dispatchd's own validity.
    whole = math.floor(seconds) if math.isfinite(seconds) else VALIDITY_MAX
    return max(VALIDITY_MIN, min(VALIDITY_MAX, whole))


def report_status(raw_status: str, error_code: str | None) -> Status | None:
    """dispatchd's status for a Twilio `MessageStatus` and `ErrorCode` (None: intermediate)."""
    status = REPORT_STATUSES.get(raw_status.strip().lower())
    if status is Status.FAILED and error_code in INVALID_NUMBER_CODES:
        return Status.INVALID
    return status


def signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's `X-Twilio-Signature` for a request to `url` with these POST parameters."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    # Names in code-point order, each name's distinct values in order, as Twilio's
    # validators concatenate them (repeated keys never occur in a status callback).
    signed = url + "".join(
        name + value for name in sorted(grouped) for value in sorted(grouped[name])
    )
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def url_variants(url: str) -> tuple[str, ...]:
    """`url` without its port and with it (the scheme's default if none), as Twilio signs."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return (url,)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = hostport[: hostport.rfind(":")] if port is not None else hostport
    default = 443 if parts.scheme == "https" else 80
    without = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}"))
    with_port = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{port or default}"))
    return (without, with_port)


def _signed_params(report: IncomingReport) -> list[tuple[str, str]]:
    """The parameters the signature covers; ForgedReport if the body cannot be what was signed."""
    media = report.content_type.split(";", 1)[0].strip().lower()
    query = parse_qs(urlsplit(report.url).query)
    if media != FORM and "bodySHA256" in query:
        # JSON webhooks: the URL's bodySHA256 covers the raw body, the signature the URL.
        digest = hashlib.sha256(report.body).hexdigest().encode()
        if not hmac.compare_digest(digest, query["bodySHA256"][0].strip().encode()):
            raise ForgedReport("the body does not match bodySHA256")
        return []
    try:
        return _form(report.body)
    except BadReport as exc:
        raise ForgedReport(f"the body cannot have been signed: {exc}") from exc


def _form(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadReport("the body is not UTF-8") from exc
    # Blank values are signed too (`name` + ""), so they must be kept.
    return parse_qsl(text, keep_blank_values=True)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # aiohttp's headers are case-insensitive; a plain dict (tests, other callers) is not.
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _sid(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    sid = data.get("sid") if isinstance(data, dict) else None
    return sid if isinstance(sid, str) and 0 < len(sid) <= MAX_ID_LENGTH else None


def _error(body: bytes) -> tuple[str | None, str | None]:
    """Twilio's error `code` and `message`, or whatever text the body holds."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body[:MAX_TEXT].decode("utf-8", "replace").strip()
        return None, text or None
    if not isinstance(data, dict):
        return None, None
    raw_code = data.get("code")
    code = str(raw_code) if isinstance(raw_code, int | str) and raw_code != "" else None
    message = data.get("message")
    return code, str(message)[:MAX_TEXT] if isinstance(message, str) else None


def _reason(status: int, code: str | None, message: str | None) -> str:
    known = code and (
        INVALID_NUMBER_CODES.get(code)
        or THROTTLE_CODES.get(code)
        or UNAVAILABLE_CODES.get(code)
        or REJECTED_CODES.get(code)
    )
    text = message or known or "no detail"
    return f"HTTP {status}, Twilio {code}: {text}" if code else f"HTTP {status}: {text}"
