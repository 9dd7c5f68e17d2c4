"""The `vonage` kind: Vonage's Messages API v1 on the SMS channel, and its status webhooks.

Send: `POST {url}/v1/messages`, JSON `{"message_type": "text", "channel": "sms", "to", "from",
"text", "client_ref", "webhook_url", "webhook_version": "v1", "ttl"}` (the Messages API
OpenAPI document, 1.20.0: `OutboundSMSText`, `channelOptionsSms`, `outboundMessageCommon`).
Numbers go without the leading `+` ("Don't use a leading + or 00"). `client_ref` is
dispatchd's message id (up to 100 characters); `webhook_url` is the per-message report URL,
which "over-rides account-level and application-level Status Webhook url settings", and
`webhook_version` pins the report format this module reads. `ttl` is the validity in whole
seconds, within the documented 20..604800.

Authentication: an application JWT (RS256 under the application's private key; claims
`application_id`, `iat`, `jti` and `exp`, 15 minutes as Vonage's default, per
developer.vonage.com "Authentication" / "How to generate JWTs"), or HTTP Basic
`api_key:api_secret`. Vonage documents that Basic authentication "does not support
webhooks": with it, status webhooks may go to the account-level status URL instead, which
dispatchd takes at `POST /providers/{name}/reports` and matches on `message_uuid`.

Answers: `202 {"message_uuid"}`; errors are RFC 7807 `{type, title, detail, instance}`
(401 unauthorized/unprovisioned, 402 low balance, 404, 422 per-parameter errors, 429 with
`Retry-After`, 500). The code is the `type` URL's fragment (`.../api-errors/messages#1430`,
`.../api-errors#low-balance`); `classify` maps it with the tables below.

Reports: Vonage POSTs JSON `{message_uuid, to, from, timestamp, status, channel, error{type,
title, detail, instance}, client_ref, usage, destination, sms}` per message (not per
segment); `status` is submitted, delivered, rejected or undeliverable (`read` on OTT
channels); `error.title` is the numeric code ("1330").

Verify ("Signed webhooks", enabled by default): `Authorization: Bearer <JWT>`, HS256 under the
account's signature secret, claims `iat`, `jti`, `iss` ("Vonage"), `payload_hash` (SHA-256 hex
of the payload), `api_key`, `application_id`. dispatchd requires a valid signature, an `iat`
within `SIGNATURE_TOLERANCE` seconds of now either way (Vonage names no window; the claim is
there to "defend against interception and later replay"), and a `payload_hash` equal to the
SHA-256 of the raw body as received.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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

DEFAULT_URL = "https://api.nexmo.com"
PATH = "/v1/messages"
JSON = "application/json"
WEBHOOK_VERSION = "v1"
# Vonage's default `exp` when a JWT names none ("How to generate JWTs"); the SDKs use it too.
JWT_TTL = 15 * 60
# The documented range of `channelOptionsSms.ttl`, seconds.
TTL_MIN = 20
TTL_MAX = 604_800
CLIENT_REF_MAX = 100  # outboundMessageCommon.client_ref: "up to 100 characters"
# Seconds an `iat` may lie from now either way: Vonage documents none; 5 minutes as the other
# signed-webhook providers document (Telnyx) absorbs clock skew and a delayed delivery.
SIGNATURE_TOLERANCE = 300
# Far above a message_uuid (36 characters); refuses garbage without refusing a new format.
MAX_ID_LENGTH = 64
MAX_TEXT = 200
MAX_TOKEN = 8192

# -- mapping tables (pure data; the README's tables are generated from / checked against them)

REPORT_STATUSES: Mapping[str, Status | None] = MappingProxyType(
    {
        # "Messages API Status Callbacks": the message was handed to a messaging provider.
        "submitted": None,
        "delivered": Status.DELIVERED,
        # OTT channels only (WhatsApp, Viber, Messenger, RCS): read implies delivered.
        "read": Status.DELIVERED,
        # Turned into `invalid` only by an error code in INVALID_NUMBER_CODES.
        "rejected": Status.FAILED,
        "undeliverable": Status.FAILED,
    }
)

# Error codes (developer.vonage.com/api-errors/messages, the OpenAPI `x-errors`) that mean
# the number itself cannot take SMS, in a report or at send time. Each suppresses the number
# everywhere, so a code is here only when every documented cause is the number.
INVALID_NUMBER_CODES: Mapping[str, str] = MappingProxyType(
    {
        "1170": "Invalid recipient: the `to` is missing or an invalid address",
        "1190": "Absent Subscriber Permanent: `to` is no longer active, remove it",
        "1430": "Invalid recipient: the `to` is invalid for the given channel",
    }
)
# The documented title of that error (the OpenAPI `ErrorRecipient` 422 answer, whose example
# `type` fragment, "#110", is no code of the list).
INVALID_NUMBER_TITLES = frozenset({"invalid recipient"})

# Documented on purpose as *not* invalid, with why (checked by the tests, shown in the README).
NOT_INVALID_CODES: Mapping[str, str] = MappingProxyType(
    {
        # "for example, due to an unrecognised prefix": one cause among others.
        "1040": "Invalid message (an unrecognised prefix is one possible cause)",
        # Barred at Vonage, not a bad number; another provider may deliver.
        "1050": "Number barred (on Vonage's block list)",
        # The recipient replied STOP to this sender; the number is fine.
        "1240": "Illegal Number: the recipient opted out (STOP)",
        "1180": "Destination temporarily unavailable",
        "1260": "Destination unreachable",
        "1280": "Number Blocked by Carrier (e.g. the plan has no SMS, or is suspended)",
        # OTT meaning ("not a user in the provider network"); on SMS it names no cause.
        "1300": "Not part of the provider network",
        "1310": "Not suitable device",
        "1330": "Delivery failed: an unknown permanent failure from the provider",
    }
)

# Send-time codes that ask us to slow down: hold Vonage, retry it later.
THROTTLE_CODES: Mapping[str, str] = MappingProxyType(
    {
        "1000": "Throttled: over the account's submission capacity, wait and retry",
        "1241": "Too many send requests to phone numbers",
        "1472": "Fraud Defender SMS Burst Protection: traffic limit reached",
        "rate-limit": "Rate Limit Hit: wait, then retry",
    }
)

# Send-time codes about the account or the endpoint, not the message: every message would
# fail alike, so they count against the breaker and the traffic goes elsewhere.
UNAVAILABLE_CODES: Mapping[str, str] = MappingProxyType(
    {
        # developer.vonage.com/api-errors, generic RFC 7807 types.
        "unauthorized": "You did not provide correct credentials",
        "unathorized": "You did not provide correct credentials",  # as the OpenAPI spells it
        "unprovisioned": "The credentials do not have access to the Messages API",
        "forbidden": "The account has no permission for this action",
        "account-suspended": "The account is suspended",
        "application-suspended": "The application is suspended",
        "invalid-api-key": "The API key does not exist",
        "jwt-expired": "The JWT has expired (check this host's clock)",
        "jwt-revoked": "The JWT has been revoked",
        "invalid-ip": "This IP address is not on the account's allow list",
        "multiple-auth-methods": "More than one authentication method was given",
        "low-balance": "The account balance is too low",
        "not-found": "Not found: check url",
        # developer.vonage.com/api-errors/messages.
        "1030": "Internal error",
        "1060": "Partner account barred (the 422 schema also uses it for a bad client_ref)",
        "1070": "Quota exceeded / not enough credit",
        "1080": "Account not enabled for REST submission",
        "1100": "Communication failed / unsupported channel",
        "1140": "Facility not allowed / message type not supported on this account",
        "1331": "Provider error: try again in a few minutes",
        "1400": "Unsupported channel",
        "1440": "Invalid message type for the channel",
        "1460": "Daily message limit exceeded (10DLC)",
    }
)

# Documented permanent refusals of this message; the next provider may take it. Any other
# 4xx is treated the same way.
REJECTED_CODES: Mapping[str, str] = MappingProxyType(
    {
        "invalid-json": "The request body did not contain valid JSON",
        "1010": "Missing params",
        "1020": "Invalid params",
        "1040": NOT_INVALID_CODES["1040"],
        "1050": NOT_INVALID_CODES["1050"],
        "1090": "Message too long",
        "1110": "Invalid channel parameters",
        "1120": "Illegal Sender Address: the sender ID is refused (local regulations)",
        "1130": "Invalid TTL",
        "1150": "Invalid params",
        "1160": "Non White-listed Destination (the account's pre-approved list)",
        "1240": NOT_INVALID_CODES["1240"],
        "1410": "Invalid channel parameters",
        "1420": "Invalid sender: `from` is invalid for the channel",
        "1450": "Invalid client reference",
        "1470": "Fraud Defender traffic rule",
        "1474": "Fraud Defender country block",
        "1475": "Fraud Defender network block",
        "1476": "Do Not Originate: the sender is on a DNO list",
        "1480": "Entity Filter: entity_id missing or incorrect",
        "1481": "Header Filter: the sender is incorrect",
        "1482": "Content Filter: content_id missing or incorrect",
        "1483": "Consent Filter",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class VonageSettings:
    """One Vonage account (and application) as dispatchd sends through it."""

    from_: str
    signature_secret: str = field(repr=False)
    application_id: str | None = None
    private_key: str | None = field(default=None, repr=False)  # PEM text
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    url: str = DEFAULT_URL
    # The parsed private_key (RSA key validation is slow: parsed once, here).
    rsa_key: rsa.RSAPrivateKey | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.from_:
            raise ValueError("from: required (a number or an alphanumeric sender ID)")
        if not self.signature_secret:
            raise ValueError("signature_secret: required, it verifies the status webhooks")
        app = bool(self.application_id) or bool(self.private_key)
        basic = bool(self.api_key) or bool(self.api_secret)
        if app and basic:
            raise ValueError("api_key: set application_id + private_key or api_key + api_secret")
        if not app and not basic:
            raise ValueError(
                "application_id: set application_id + private_key (JWT) "
                "or api_key + api_secret (Basic)"
            )
        if app and not self.application_id:
            raise ValueError("application_id: required with private_key")
        if app and not self.private_key:
            raise ValueError("private_key: required with application_id")
        if basic and not self.api_key:
            raise ValueError("api_key: required with api_secret")
        if basic and not self.api_secret:
            raise ValueError("api_secret: required with api_key")
        if self.private_key:
            object.__setattr__(self, "rsa_key", load_private_key(self.private_key))


class Vonage:
    """The pure half of the `vonage` kind (see the module docstring).

    `clock` (wall-clock seconds) and `token_id` stamp each request's JWT `iat` and `jti`.
    """

    # Account-level reports (no per-message token) are taken only if this is True:
    # the webhook JWT's payload_hash covers the body.
    signs_body = True

    def __init__(
        self,
        settings: VonageSettings,
        *,
        clock: Callable[[], float] = time.time,
        token_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._token_id = token_id
        self._url = settings.url.rstrip("/") + PATH
        self._application_id = settings.application_id or ""
        self._key = settings.rsa_key
        credentials = f"{settings.api_key}:{settings.api_secret}".encode()
        self._basic = "Basic " + base64.b64encode(credentials).decode("ascii")
        self._secret = settings.signature_secret.encode()

    def request(self, submission: Submission) -> HttpRequest:
        fields: dict[str, Any] = {
            "message_type": "text",
            "channel": "sms",
            "to": wire_number(submission.to_number),
            "from": wire_number(self._settings.from_),
            "text": submission.body,
            "client_ref": submission.message_id[:CLIENT_REF_MAX],
            "webhook_url": submission.report_url,
            "webhook_version": WEBHOOK_VERSION,
        }
        if submission.validity is not None:
            fields["ttl"] = sms_ttl(submission.validity)
        headers = {
            "Authorization": self._authorization(),
            "Content-Type": JSON,
            "Accept": JSON,
        }
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        return HttpRequest("POST", self._url, headers, body)

    def _authorization(self) -> str:
        if self._key is None:
            return self._basic  # VonageSettings lets in exactly one of the two ways
        token = application_jwt(self._application_id, self._key, self._clock(), self._token_id())
        return f"Bearer {token}"

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        if 200 <= status < 300:
            # Taken as accepted even without a readable message_uuid: resending could deliver
            # the message twice, and its reports still arrive at the per-message URL.
            return Accepted(_message_uuid(body), status)
        problem = _problem(body)
        code = problem.code
        reason = problem.reason(status)
        if status == 429 or code in THROTTLE_CODES:
            return Throttled(reason, status, retry_after(_header(headers, "Retry-After")))
        if status >= 500 or status == 408:
            return Unavailable(reason, status)
        if code in INVALID_NUMBER_CODES or problem.title.lower() in INVALID_NUMBER_TITLES:
            return InvalidNumber(reason, status, code)
        if code in UNAVAILABLE_CODES or status in (401, 402, 403, 404):
            return Unavailable(reason, status)
        return Rejected(reason, status, code)

    def verify(self, report: IncomingReport, now: float) -> None:
        claims = verify_webhook_jwt(self._secret, _header(report.headers, "Authorization"), now)
        given = claims.get("payload_hash")
        if not isinstance(given, str) or not given:
            raise ForgedReport("the JWT has no payload_hash claim")
        digest = hashlib.sha256(report.body).hexdigest().encode()
        if not hmac.compare_digest(digest, given.strip().lower().encode("utf-8", "replace")):
            raise ForgedReport("the body does not match the JWT's payload_hash")
        s = self._settings
        issuer = claims.get("iss")
        if issuer is not None and issuer != "Vonage":
            raise ForgedReport(f"the JWT's issuer is {str(issuer)[:40]!r}, not 'Vonage'")
        application = claims.get("application_id")
        if s.application_id and application is not None and application != s.application_id:
            raise ForgedReport("the JWT names another application_id")
        api_key = claims.get("api_key")
        if s.api_key and api_key is not None and api_key != s.api_key:
            raise ForgedReport("the JWT names another api_key")

    def parse(self, report: IncomingReport) -> list[Report]:
        media = report.content_type.split(";", 1)[0].strip().lower()
        if media not in ("", JSON):
            raise BadReport(f"expected a JSON status webhook, got {media}")
        try:
            data = json.loads(report.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadReport("the body is not JSON") from exc
        if not isinstance(data, dict):
            raise BadReport("the body is not a JSON object")
        uuid_ = data.get("message_uuid")
        raw = data.get("status")
        if not isinstance(uuid_, str) or not uuid_ or len(uuid_) > MAX_ID_LENGTH:
            raise BadReport("no usable message_uuid")
        if not isinstance(raw, str) or not raw or len(raw) > MAX_TEXT:
            raise BadReport("no usable status (an inbound message is no status webhook)")
        error = data.get("error")
        code = _problem_of(error).code if isinstance(error, dict) else None
        if code is not None and len(code) > MAX_TEXT:
            raise BadReport("the error code is too long")
        return [Report(uuid_, report_status(raw, code), raw, code)]


# -- pure helpers, public for the simulator and the tests -------------------------------------


def report_status(raw_status: str, error_code: str | None) -> Status | None:
    """dispatchd's status for a Vonage `status` and error code (None: intermediate)."""
    status = REPORT_STATUSES.get(raw_status.strip().lower())
    if status is Status.FAILED and error_code in INVALID_NUMBER_CODES:
        return Status.INVALID
    return status


def wire_number(number: str) -> str:
    """A number as Vonage takes it (E.164 without `+`); an alphanumeric sender unchanged."""
    rest = number.strip()
    if rest.startswith("+") and rest[1:].isdigit():
        return rest[1:]
    return rest


def sms_ttl(seconds: float) -> int:
    """Whole seconds for `ttl`, within Vonage's documented 20..604800."""
    # Rounded down so Vonage never holds a message past dispatchd's own validity (except
    # below the 20 s floor, where holding it 20 s beats the 72 h default).
    whole = math.floor(seconds) if math.isfinite(seconds) else TTL_MAX
    return max(TTL_MIN, min(TTL_MAX, whole))


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """The application's RSA private key; ValueError naming `private_key` otherwise."""
    try:
        key = serialization.load_pem_private_key(pem.strip().encode() + b"\n", password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"private_key: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("private_key: Vonage application keys are RSA; this one is not")
    return key


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWTs carry it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url; ValueError on anything else."""
    if not text.isascii() or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def _segment(data: Mapping[str, Any]) -> str:
    return b64url(json.dumps(data, separators=(",", ":")).encode())


def application_jwt(
    application_id: str, key: rsa.RSAPrivateKey, now: float, jti: str, ttl: int = JWT_TTL
) -> str:
    """An application JWT (RS256) as Vonage's APIs take it in `Authorization: Bearer`."""
    iat = int(now)
    claims = {"application_id": application_id, "iat": iat, "jti": jti, "exp": iat + ttl}
    signing_input = _segment({"alg": "RS256", "typ": "JWT"}) + "." + _segment(claims)
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


def webhook_jwt(secret: str | bytes, body: bytes, claims: Mapping[str, Any]) -> str:
    """A signed-webhook JWT (HS256) for `body`: `claims` plus its `payload_hash`."""
    key = secret.encode() if isinstance(secret, str) else secret
    payload = {**claims, "payload_hash": hashlib.sha256(body).hexdigest()}
    signing_input = _segment({"alg": "HS256", "typ": "JWT"}) + "." + _segment(payload)
    digest = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(digest)


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], str, bytes]:
    """A compact JWT's header, claims, signing input and signature; ValueError if malformed."""
    if len(token) > MAX_TOKEN:
        raise ValueError("the token is too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWT (three dot-separated parts)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("the JWT's header and claims must be JSON objects")
    return header, claims, parts[0] + "." + parts[1], b64url_decode(parts[2])


def verify_webhook_jwt(secret: bytes, authorization: str | None, now: float) -> dict[str, Any]:
    """The claims of an `Authorization: Bearer` HS256 JWT signed with `secret` within
    SIGNATURE_TOLERANCE of `now`; ForgedReport otherwise."""
    if not authorization:
        raise ForgedReport("no Authorization header (Vonage signs its webhooks)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ForgedReport("the Authorization header is not a Bearer JWT")
    try:
        header, claims, signing_input, signature = split_jwt(token.strip())
    except ValueError as exc:
        raise ForgedReport(f"the Bearer token is malformed: {exc}") from exc
    if header.get("alg") != "HS256":
        raise ForgedReport(f"the JWT's alg is {str(header.get('alg'))[:20]!r}, not HS256")
    expected = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise ForgedReport("the JWT's signature does not match the signature secret")
    iat = claims.get("iat")
    if not _number(iat):
        raise ForgedReport("the JWT has no numeric iat claim")
    skew = now - iat
    if abs(skew) > SIGNATURE_TOLERANCE:
        raise ForgedReport(f"stale: issued {skew:+.0f} s from now, beyond {SIGNATURE_TOLERANCE} s")
    exp = claims.get("exp")
    if exp is not None and (not _number(exp) or now > exp + SIGNATURE_TOLERANCE):
        raise ForgedReport("the JWT has expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _number(nbf) or now < nbf - SIGNATURE_TOLERANCE):
        raise ForgedReport("the JWT is not valid yet")
    return claims


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class _Problem:
    """An RFC 7807 answer as Vonage sends it."""

    code: str | None
    title: str
    detail: str | None

    def reason(self, status: int) -> str:
        code = self.code
        known = code and (
            INVALID_NUMBER_CODES.get(code)
            or THROTTLE_CODES.get(code)
            or UNAVAILABLE_CODES.get(code)
            or REJECTED_CODES.get(code)
        )
        parts = [p for p in (self.title, self.detail) if p]
        text = ": ".join(parts) if parts else known or "no detail"
        return f"HTTP {status}, Vonage {code}: {text}" if code else f"HTTP {status}: {text}"


def _problem_of(data: Mapping[str, Any]) -> _Problem:
    """The code of a problem object: its `type` fragment, or a numeric `title` (reports)."""
    type_ = data.get("type")
    title = data.get("title")
    detail = data.get("detail")
    title_text = str(title)[:MAX_TEXT] if isinstance(title, str | int) else ""
    fragment = type_.rpartition("#")[2].strip() if isinstance(type_, str) and "#" in type_ else ""
    if fragment.isdigit() or (fragment and not title_text.isdigit()):
        code: str | None = fragment[:MAX_TEXT].lower()
    elif title_text.isdigit():
        code = title_text
    else:
        code = None
    return _Problem(code, title_text, str(detail)[:MAX_TEXT] if isinstance(detail, str) else None)


def _problem(body: bytes) -> _Problem:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:MAX_TEXT].decode("utf-8", "replace").strip()
        return _Problem(None, "", text or None)
    if not isinstance(data, dict):
        return _Problem(None, "", None)
    return _problem_of(data)


def _message_uuid(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("message_uuid") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # aiohttp's headers are case-insensitive; a plain dict (tests, other callers) is not.
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)
