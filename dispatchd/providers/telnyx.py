"""The `telnyx` kind: Telnyx's Messaging API v2 and its signed message webhooks.

Send: `POST {url}/v2/messages`, JSON `{"to", "from" and/or "messaging_profile_id", "text",
"webhook_url", "use_profile_webhooks": false}`, `Authorization: Bearer {api_key}`. The
per-message `webhook_url` (the report URL) comes first in Telnyx's webhook hierarchy;
`use_profile_webhooks: false` keeps the messaging profile's own URLs (which may belong to
another application) out of this message's reports. dispatchd's message id goes as the
`Idempotency-Key` header: Telnyx replays a successful answer for the same key and the same
bytes for 24 hours, so sending a message to Telnyx again after an ambiguous timeout does
not send it twice (developers.telnyx.com/docs/development/api-fundamentals/idempotency).
A 200 `{"data": {"id", ..., "to": [{"status": "queued"}]}}` is accepted; `data.id` is the
provider id. Errors are `{"errors": [{"code", "title", "detail", "source"}]}`; `classify`
maps their codes with the tables below. Telnyx's send API takes no validity period (its
`valid_until` is its own), so `Submission.validity` is not sent.

Reports: Telnyx POSTs JSON events `{"data": {"event_type", "id", "occurred_at", "payload":
{"id", "to": [{"phone_number", "status"}], "errors": [...]}}, "meta": {...}}`:
`message.sent`, then `message.finalized` with the final `to[].status`. They may come out
of order and more than once (Telnyx says so), which the service already tolerates: finals
are sticky and reports idempotent. Inbound events (`message.received`) are not reports and
are acknowledged without effect.

Verify: `telnyx-signature-ed25519` is base64(Ed25519 signature) over
`"{telnyx-timestamp}|{raw body}"` under the account's key pair; dispatchd holds the public
half (`public_key`, base64, Mission Control > Keys & Credentials > Public Key). The URL is
not signed. A timestamp more than 300 s from `now` either way is refused, as the official
SDKs do, so a captured report cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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

DEFAULT_URL = "https://api.telnyx.com"
MESSAGES_PATH = "/v2/messages"
JSON = "application/json"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# The SDKs' tolerance (telnyx.lib.webhook_verification.TIMESTAMP_TOLERANCE_SECONDS).
TIMESTAMP_TOLERANCE = 300
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# developers.telnyx.com/docs/development/api-fundamentals/idempotency: the key format.
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_:-]{1,255}")
# Telnyx ids are UUIDs (36 characters); this refuses garbage, not a new format.
MAX_ID_LENGTH = 64
MAX_TEXT = 200
# Inbound events reach the profile's URL, never a message's report URL; they are no report.
INBOUND_EVENTS = frozenset({"message.received"})

# -- mapping tables (pure data; the README's tables are generated from / checked against them)
# Codes: developers.telnyx.com/docs/messaging/messages/error-codes (messaging) and
# developers.telnyx.com/development/api-fundamentals/api-errors (general API).

REPORT_STATUSES: Mapping[str, Status | None] = MappingProxyType(
    {
        # Intermediate: recorded in the history, the message does not change.
        # developers.telnyx.com/docs/messaging/messages/receiving-webhooks, "Delivery statuses"
        "scheduled": None,
        "queued": None,
        "sending": None,
        "sent": None,
        # Final at Telnyx, but it says nothing either way ("no delivery confirmation was
        # received from the carrier"): recorded, and the message waits for its own expiry.
        "delivery_unconfirmed": None,
        "delivered": Status.DELIVERED,
        # A read receipt (RCS) comes after delivery: proof of it if `delivered` was lost.
        "read": Status.DELIVERED,
        # Turned into `invalid` only by error codes in INVALID_NUMBER_CODES.
        "sending_failed": Status.FAILED,
        "delivery_failed": Status.FAILED,
        # Out of Telnyx's queue too late (error 40005 / 40014): never delivered.
        "expired": Status.FAILED,
        # A scheduled message cancelled at Telnyx will never be sent.
        "cancelled": Status.FAILED,
    }
)

# Codes that mean the number itself cannot take SMS, at send time or in a failed report.
# Each suppresses the number everywhere, so a code is here only when every documented
# cause is the destination number, never the sender, route, content or account.
INVALID_NUMBER_CODES: Mapping[str, str] = MappingProxyType(
    {
        # error-codes: "Destination is a landline or non-routable number"; the webhooks
        # guide calls it "Destination number invalid". Both readings are the number.
        "40001": "Not routable: the destination is a landline or a non-routable number",
        # error-codes: "Carrier rejected the destination number".
        "40012": "Invalid destination number: the carrier rejected it",
        # error-codes, API request errors: "Destination number is invalid".
        "40310": "Invalid 'to' address: the destination number is invalid",
    }
)

# Documented on purpose as *not* invalid, with why (checked by the tests, shown in the README).
NOT_INVALID_CODES: Mapping[str, str] = MappingProxyType(
    {
        # error-codes: a temporary carrier spam block; the webhooks guide's table calls it
        # "Destination number not in service". The pages disagree, so nothing is suppressed.
        "40002": "Blocked as spam (temporary), or not in service (the docs disagree)",
        # error-codes: "Recipient carrier rejecting for unknown reason".
        "40004": "Rejected by the destination carrier for an unknown reason",
        # error-codes: "Recipient's carrier server is down"; retry later.
        "40006": "Recipient unavailable: the carrier is down",
        # error-codes: "Check number validity; try alternate route": the route may be the cause.
        "40008": "Undeliverable: the carrier did not accept the message",
        # error-codes: the recipient sent STOP; the number is fine. (The webhooks guide's
        # table calls it "Destination unreachable"; neither reading is a bad number.)
        "40300": "Blocked: the recipient opted out (STOP)",
        # api-errors: "The phone number is invalid" does not say which one (to or from).
        "10002": "Invalid phone number (to or from: the code does not say)",
        # api-errors: any phone number parameter, not only `to`.
        "10016": "A phone number parameter is not in +E.164 format",
    }
)

# Send-time codes that ask us to slow down: hold Telnyx, retry it later.
THROTTLE_CODES: Mapping[str, str] = MappingProxyType(
    {
        # development/api-fundamentals/reliability/rate-limiting: HTTP 429 with this code.
        "10011": "Too many requests",
        # error-codes: "Internal message queue at capacity": "Back off and retry after a delay".
        "40318": "Queue full: back off and retry",
    }
)

# Send-time codes about the account, the profile, the sender or the endpoint, not the
# message: every message would fail alike, so they count against the breaker and the
# traffic goes elsewhere.
UNAVAILABLE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "10005": "Resource not found: check url and messaging_profile_id",
        "10007": "Unexpected error at Telnyx",
        "10008": "Request timeout at Telnyx",
        "10009": "Authentication failed: check api_key",
        "10010": "Authorization failed: the api_key may not send messages",
        "40100": "The sending number is not enabled for messaging",
        "40305": "Invalid 'from' address: the sender is not on the messaging profile",
        "40306": "Alphanumeric sender not configured on the messaging profile",
        "40307": "The 'from' does not match the profile's alphanumeric sender",
        "40311": "Invalid messaging profile secret",
        "40312": "The messaging profile is disabled",
        "40313": "The messaging profile secret is missing",
        "40314": "Messaging is disabled on the account",
        "40315": "Unhealthy sender: the sending number's health metrics are poor",
        "40320": "The sending number is temporarily unusable (provisioning)",
        "40321": "No usable numbers in the messaging profile's pool",
        "40331": "No whitelisted destinations on the messaging profile",
        "40333": "The messaging profile's spend limit is reached",
    }
)

# Documented permanent refusals of this message; the next provider may take it. Any other
# 4xx is treated the same way.
REJECTED_CODES: Mapping[str, str] = MappingProxyType(
    {
        "10002": NOT_INVALID_CODES["10002"],
        "10003": "Invalid URL (webhook_url)",
        "10004": "Missing required parameter",
        "10015": "Bad request: not well-formed",
        "10016": NOT_INVALID_CODES["10016"],
        "40300": NOT_INVALID_CODES["40300"],
        "40301": "Unsupported message type between these number types",
        "40302": "Message too large: more parts than the destination allows",
        "40304": "Invalid combination of message content",
        "40309": "Destination region not whitelisted on the messaging profile",
        "40316": "No content: the message has no text",
        "40319": "Incompatible source and destination number types",
        "40322": "Blocked content",
    }
)


@dataclass(frozen=True, slots=True)
class TelnyxSettings:
    """One Telnyx account (and messaging profile) as dispatchd sends through it."""

    api_key: str = field(repr=False)
    public_key: str  # base64 Ed25519 public key, for the webhooks; not a secret
    from_: str | None = None
    messaging_profile_id: str | None = None
    url: str = DEFAULT_URL

    def __post_init__(self) -> None:
        key = self.api_key
        if not key or not key.isascii() or not key.isprintable() or " " in key:
            raise ValueError("api_key: required, one token of printable ASCII")
        if not self.from_ and not self.messaging_profile_id:
            raise ValueError("from / messaging_profile_id: one of them is required")
        load_public_key(self.public_key)


class Telnyx:
    """The pure half of the `telnyx` kind (see the module docstring)."""

    # Account-level reports (no per-message token) are taken only if this is True:
    # the Ed25519 signature covers the timestamp and the body.
    signs_body = True

    def __init__(self, settings: TelnyxSettings) -> None:
        self._settings = settings
        self._url = settings.url.rstrip("/") + MESSAGES_PATH
        self._authorization = f"Bearer {settings.api_key}"
        self._public_key = load_public_key(settings.public_key)

    def request(self, submission: Submission) -> HttpRequest:
        s = self._settings
        fields: dict[str, Any] = {"to": submission.to_number}
        if s.from_:
            fields["from"] = s.from_
        if s.messaging_profile_id:
            fields["messaging_profile_id"] = s.messaging_profile_id
        fields["text"] = submission.body
        fields["webhook_url"] = submission.report_url
        fields["use_profile_webhooks"] = False
        headers = {
            "Authorization": self._authorization,
            "Content-Type": JSON,
            "Accept": JSON,
        }
        # dispatchd's ids (UUIDv7) fit Telnyx's key format; anything else goes without one.
        if IDEMPOTENCY_KEY.fullmatch(submission.message_id):
            headers[IDEMPOTENCY_HEADER] = submission.message_id
        # Deterministic bytes: an idempotent replay needs a byte-identical body.
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        return HttpRequest("POST", self._url, headers, body)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        if 200 <= status < 300:
            # Taken as accepted even without a readable id: resending could deliver the
            # message twice, and its reports still arrive at the per-message URL.
            return Accepted(_message_id(body), status)
        errors = _errors(body)
        codes = [code for code, _ in errors if code]
        reason = _reason(status, errors)
        if status == 429 or any(c in THROTTLE_CODES for c in codes):
            return Throttled(reason, status, _throttle_pause(headers))
        if status >= 500 or status == 408:
            return Unavailable(reason, status)
        first = codes[0] if codes else None
        if codes and all(c in INVALID_NUMBER_CODES for c in codes):
            return InvalidNumber(reason, status, first)
        if status in (401, 403, 404) or any(c in UNAVAILABLE_CODES for c in codes):
            return Unavailable(reason, status)
        return Rejected(reason, status, first)

    def verify(self, report: IncomingReport, now: float) -> None:
        """ForgedReport unless the body is signed by the account's key within 300 s of `now`
        (Unix time)."""
        given = _header(report.headers, SIGNATURE_HEADER)
        stamp = _header(report.headers, TIMESTAMP_HEADER)
        if not given:
            raise ForgedReport(f"no {SIGNATURE_HEADER} header")
        if not stamp:
            raise ForgedReport(f"no {TIMESTAMP_HEADER} header")
        stamp = stamp.strip()
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise ForgedReport(f"{TIMESTAMP_HEADER} is not a Unix time")
        skew = now - int(stamp)
        if abs(skew) > TIMESTAMP_TOLERANCE:
            raise ForgedReport(
                f"stale: signed {skew:+.0f} s from now, beyond {TIMESTAMP_TOLERANCE} s"
            )
        try:
            raw = base64.b64decode(given.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ForgedReport(f"{SIGNATURE_HEADER} is not base64") from exc
        if len(raw) != SIGNATURE_BYTES:
            raise ForgedReport(f"{SIGNATURE_HEADER} is not a {SIGNATURE_BYTES}-byte signature")
        try:
            self._public_key.verify(raw, signed_bytes(stamp, report.body))
        except InvalidSignature as exc:
            raise ForgedReport(f"{SIGNATURE_HEADER} does not match") from exc

    def parse(self, report: IncomingReport) -> list[Report]:
        media = report.content_type.split(";", 1)[0].strip().lower()
        if media not in ("", JSON):
            raise BadReport(f"expected a JSON webhook event, got {media}")
        try:
            document = json.loads(report.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadReport("the body is not JSON") from exc
        event = document.get("data") if isinstance(document, dict) else None
        payload = event.get("payload") if isinstance(event, dict) else None
        if not isinstance(event, dict) or not isinstance(payload, dict):
            raise BadReport("no data.payload object")
        if event.get("event_type") in INBOUND_EVENTS or payload.get("direction") == "inbound":
            return []
        message_id = payload.get("id")
        if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_ID_LENGTH:
            raise BadReport("no usable data.payload.id")
        raw = _recipient_status(payload.get("to"))
        codes = _report_codes(payload.get("errors"))
        code = ",".join(codes)[:MAX_TEXT] or None
        return [Report(message_id, report_status(raw, codes), raw, code)]


# -- pure helpers, public for the simulator and the tests -------------------------------------


def load_public_key(encoded: str) -> Ed25519PublicKey:
    """The Ed25519 public key in `encoded` (base64 of its 32 raw bytes)."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError) as exc:
        raise ValueError("public_key: not base64 (the account's Ed25519 public key)") from exc
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(
            f"public_key: {len(raw)} bytes once decoded, an Ed25519 public key has "
            f"{PUBLIC_KEY_BYTES}"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def signed_bytes(timestamp: str, body: bytes) -> bytes:
    """What Telnyx signs: `"{telnyx-timestamp}|{raw body}"`."""
    return timestamp.encode("ascii") + b"|" + body


def report_status(raw_status: str, error_codes: Sequence[str]) -> Status | None:
    """dispatchd's status for a `to[].status` and the event's error codes (None: intermediate).

    A failure becomes `invalid` only when it carries error codes and every one of them is
    in INVALID_NUMBER_CODES.
    """
    status = REPORT_STATUSES.get(raw_status.strip().lower())
    invalid = bool(error_codes) and all(c in INVALID_NUMBER_CODES for c in error_codes)
    if status is Status.FAILED and invalid:
        return Status.INVALID
    return status


def _recipient_status(recipients: object) -> str:
    """The first recipient's `status` (dispatchd sends to one number per message)."""
    first = recipients[0] if isinstance(recipients, list) and recipients else None
    status = first.get("status") if isinstance(first, dict) else None
    if not isinstance(status, str) or not 0 < len(status) <= MAX_TEXT:
        raise BadReport("no usable data.payload.to[0].status")
    return status


def _code(value: object) -> str | None:
    # Telnyx documents codes as strings ("10011"); integers are read the same way.
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    code = str(value).strip()
    return code[:MAX_TEXT] if code else None


def _report_codes(errors: object) -> list[str]:
    if not isinstance(errors, list):
        return []
    codes = (_code(e.get("code")) for e in errors if isinstance(e, dict))
    return [c for c in codes if c]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # aiohttp's headers are case-insensitive; a plain dict (tests, other callers) is not.
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _throttle_pause(headers: Mapping[str, str]) -> float | None:
    # Telnyx documents `x-ratelimit-reset` ("time in seconds until the rate limit resets")
    # rather than Retry-After; either is honoured, Retry-After first.
    found = retry_after(_header(headers, "Retry-After"))
    return found if found is not None else retry_after(_header(headers, "x-ratelimit-reset"))


def _message_id(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    data = document.get("data") if isinstance(document, dict) else None
    found = data.get("id") if isinstance(data, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= MAX_ID_LENGTH else None


def _errors(body: bytes) -> list[tuple[str | None, str | None]]:
    """Each error's `code` and `title: detail`, or whatever text the body holds."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:MAX_TEXT].decode("utf-8", "replace").strip()
        return [(None, text)] if text else []
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return []
    read: list[tuple[str | None, str | None]] = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        words = [w for w in (error.get("title"), error.get("detail")) if isinstance(w, str) and w]
        read.append((_code(error.get("code")), ": ".join(words)[:MAX_TEXT] or None))
    return read


def _known(code: str) -> str | None:
    return (
        INVALID_NUMBER_CODES.get(code)
        or THROTTLE_CODES.get(code)
        or UNAVAILABLE_CODES.get(code)
        or REJECTED_CODES.get(code)
    )


def _reason(status: int, errors: list[tuple[str | None, str | None]]) -> str:
    if not errors:
        return f"HTTP {status}: no detail"
    code, text = errors[0]
    text = text or (_known(code) if code else None) or "no detail"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"HTTP {status}, Telnyx {code}: {text}{more}" if code else f"HTTP {status}: {text}"
