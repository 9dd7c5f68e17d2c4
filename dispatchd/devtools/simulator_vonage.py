"""The simulator's Vonage dialect: the Messages API's `POST /v1/messages` for the SMS channel.

Served under the simulator app at `/vonage/v1/messages`, so a vonage provider's `url` is
`{public_url}/simulator/vonage`. Authentication is checked as the real API does: an
application JWT (RS256, verified with the application's public key; `application_id`,
`iat` and `jti` required, `iat` (or `nbf`) at most a minute ahead, `exp` at most 24 h after
`iat`, 15 minutes if absent) or HTTP
Basic `api_key:api_secret`; anything else is `401` in Vonage's RFC 7807 format. The body is
validated like the OpenAPI document's SMS request (`to` 7 to 15 digits without `+`, `text`
up to 3200 characters, `ttl` 20..604800, `client_ref` up to 100 characters) and refused
with Vonage's `422` answers. Accepted messages get `202 {"message_uuid"}`.

Faults are keyed by the name "vonage": `down` answers 503, `hang_rate` leaves the request
open, `throttle_rate` answers Vonage's 429 (`Retry-After: 1`), `failure_rate` a 500 (1030
Internal error), `malformed_rate` a 202 cut short, `latency` delays the answer.

Reports: JSON status webhooks in the v1 format to the message's `webhook_url` (else the
account's `status_url`, if any), signed as Vonage signs them: `Authorization: Bearer <JWT>`,
HS256 under the account's signature secret, with `iat`, `jti`, `iss`, `payload_hash` (the
SHA-256 of the exact body sent), `api_key` and, for JWT logins, `application_id`. First
`submitted`, then the final one: `delivered`; `rejected` with 1330 for a failure;
`undeliverable` with 1190, which the vonage kind maps to `invalid`, for numbers ending in
`invalid_suffix`. `out_of_order_rate`, `duplicate_callback_rate`, `early_callback_rate` (the
final report before the 202, then `submitted`) and `callback_retry_for` work as in the other
dialects.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.callbacks import Opened, Reporter
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.domain.encoding import segment
from dispatchd.providers.vonage import (
    CLIENT_REF_MAX,
    JSON,
    JWT_TTL,
    TTL_MAX,
    TTL_MIN,
    load_private_key,
    split_jwt,
    webhook_jwt,
)

logger = logging.getLogger(__name__)

NAME = "vonage"
ROUTE = "/vonage/v1/messages"
PROBLEM = "application/problem+json"
ERRORS = "https://developer.vonage.com/api-errors"
TEXT_MAX = 3200  # OutboundSMSText.text maxLength
JWT_MAX_LIFETIME = 24 * 3600  # "The max expiration time for a JWT is 24 hours"
# dispatchd's `failed` / `invalid` as Vonage reports them; 1190 is in the kind's
# INVALID_NUMBER_CODES, 1330 is not.
FINAL_REPORTS: Mapping[str, tuple[str, str | None]] = {
    "delivered": ("delivered", None),
    "failed": ("rejected", "1330"),
    "invalid": ("undeliverable", "1190"),
}
# x-errors of the Messages API OpenAPI document.
ERROR_DETAILS: Mapping[str, str] = {
    "1190": "Absent Subscriber Permanent - `to` is no longer active, You should remove this "
    "phone number from your database.",
    "1330": "Delivery failed - The provider returned an unknown permanent failure. Verify the "
    "destination and retry if appropriate.",
}
DEFAULT_API_KEY = "abcd1234"

_TO = re.compile(r"[1-9][0-9]{6,14}")
_NUMBER_SENDER = re.compile(r"[1-9][0-9]{2,14}")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")

_REPORTER = Reporter(logger, NAME)
CALLBACKS = _REPORTER.callbacks


@dataclass(frozen=True, slots=True)
class VonageAccount:
    """One way into the simulated Messages API, keyed by an application_id or an api_key.

    Keyed by an application_id, `public_key` (PEM) checks its RS256 JWTs; keyed by an
    api_key, `api_secret` is its HTTP Basic password. Exactly one of the two is set.
    """

    signature_secret: str = field(repr=False)  # the HS256 key of the status webhooks
    public_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    # The `api_key` claim of the webhooks; the Basic login by default.
    api_key: str | None = None
    # The application's Status URL, for messages sent without a `webhook_url`.
    status_url: str | None = None

    def __post_init__(self) -> None:
        if not self.signature_secret:
            raise ValueError("signature_secret: required")
        if (self.public_key is None) == (self.api_secret is None):
            raise ValueError("public_key: set exactly one of public_key and api_secret")
        if self.public_key is not None:
            _public_key(self.public_key)


def public_key_pem(private_key_pem: str) -> str:
    """The public half (PEM) of an application's private key, for a VonageAccount."""
    key = load_private_key(private_key_pem).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode("ascii")


def add_vonage_routes(
    app: web.Application, state: SimulatorState, accounts: Mapping[str, VonageAccount]
) -> None:
    """Serve Vonage's Messages API on `app` for `accounts` (application_id or api_key ->
    VonageAccount)."""
    dialect = _Dialect(state, dict(accounts))
    _REPORTER.install(app)
    app.router.add_post(ROUTE, dialect.send)


def vonage_error(
    status: int,
    type_: str,
    title: str,
    detail: str | None = None,
    *,
    invalid: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An answer in Vonage's RFC 7807 error format."""
    body: dict[str, Any] = {"type": type_, "title": title}
    if detail is not None:
        body["detail"] = detail
    body["instance"] = uuid.uuid4().hex
    if invalid:
        body["invalid_parameters"] = invalid
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM, headers=headers)


def _unauthorized() -> web.Response:
    # The shape of the official Python SDK's recorded 401 (http_client/tests/data/401.json).
    return vonage_error(
        401, f"{ERRORS}#unauthorized", "Unauthorized", "You did not provide correct credentials."
    )


def _invalid_params(name: str, reason: str) -> web.Response:
    # ErrorMessageParams, as the official Python SDK's recorded 422 (invalid_error.json).
    return vonage_error(
        422,
        f"{ERRORS}/messages#1150",
        "Invalid params",
        "The value of one or more parameters is invalid.",
        invalid=[{"name": name, "reason": reason}],
    )


@dataclass(frozen=True, slots=True)
class _Login:
    """Who sent a request: the account entry, and the application if a JWT was used."""

    account: VonageAccount
    api_key: str
    application_id: str | None


@dataclass(frozen=True, slots=True)
class _Send:
    """A valid SMS request."""

    login: _Login
    to: str
    from_: str
    text: str
    client_ref: str | None
    callback: str | None


@dataclass(frozen=True, slots=True)
class _Callback:
    status: str
    error_code: str | None = None


class _Dialect:
    def __init__(self, state: SimulatorState, accounts: dict[str, VonageAccount]) -> None:
        self._state = state
        self._accounts = accounts
        self._keys = {
            name: _public_key(a.public_key)
            for name, a in accounts.items()
            if a.public_key is not None
        }

    async def send(self, request: web.Request) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        login = self._login(request.headers.get("Authorization", ""))
        if login is None:
            counts.bad_requests += 1
            return _unauthorized()
        data = _read_send(login, await request.read())
        if isinstance(data, web.Response):
            counts.bad_requests += 1
            return data
        counts.requests += 1
        settings = state.settings_for(NAME)
        if state.is_down(NAME, settings):
            counts.down += 1
            return vonage_error(503, ERRORS, "Service Unavailable", "Please try again later.")
        if state.chance(settings.hang_rate):
            counts.hung += 1
            await _REPORTER.hang(request)
            return vonage_error(503, ERRORS, "Service Unavailable", "Please try again later.")
        if state.chance(settings.throttle_rate):
            counts.throttled += 1
            # The official Python SDK's recorded 429 (http_client/tests/data/429.json).
            return vonage_error(
                429,
                f"{ERRORS}#rate-limit",
                "Rate Limit Hit",
                "Please wait, then retry your request",
                headers={"Retry-After": "1"},
            )
        if settings.latency:
            await asyncio.sleep(settings.latency)
        if state.chance(settings.failure_rate):
            counts.errors += 1
            return vonage_error(
                500,
                f"{ERRORS}/messages#1030",
                "Internal error",
                "There was an error processing your request in the Platform.",
            )
        return await self._accept(request, data, settings)

    def _login(self, header: str) -> _Login | None:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            return self._jwt_login(credentials.strip())
        if scheme.lower() == "basic":
            return self._basic_login(credentials.strip())
        return None

    def _jwt_login(self, token: str) -> _Login | None:
        try:
            header, claims, signing_input, signature = split_jwt(token)
        except ValueError:
            return None
        application_id = claims.get("application_id")
        if header.get("alg") != "RS256" or not isinstance(application_id, str):
            return None
        key = self._keys.get(application_id)
        if key is None:
            return None
        try:
            key.verify(signature, signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return None
        if not _fresh(claims, time.time()):
            return None
        account = self._accounts[application_id]
        return _Login(account, account.api_key or DEFAULT_API_KEY, application_id)

    def _basic_login(self, encoded: str) -> _Login | None:
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except ValueError:
            return None
        login, colon, password = decoded.partition(b":")
        name = login.decode("latin-1")
        account = self._accounts.get(name)
        if not colon or account is None or account.api_secret is None:
            return None
        # Compared in constant time so a probe learns nothing from timing.
        if not hmac.compare_digest(password, account.api_secret.encode()):
            return None
        return _Login(account, account.api_key or name, None)

    async def _accept(
        self, request: web.Request, data: _Send, settings: SimulatorConfig
    ) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        message_uuid = str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
        malformed = state.chance(settings.malformed_rate)
        counts.accepted += 1
        state.stats.count_pair(data.to, data.text)
        if state.keep_received:
            state.received.append(
                {
                    "provider": NAME,
                    "to_number": data.to,
                    "message": data.text,
                    "message_id": message_uuid,
                }
            )
        if data.callback:
            plan = [_Callback(*FINAL_REPORTS[s]) for s in state.plan_reports(data.to, settings)]
            post = functools.partial(_post, request.app, state, settings, data, message_uuid)
            if state.chance(settings.early_callback_rate):
                await post(plan.pop(0))
            # Vonage reports `submitted` before the final status; after an early final it
            # still comes, late, as it can from Vonage.
            plan.insert(0, _Callback("submitted"))
            name = f"simulator-vonage-callback-{message_uuid}"
            _REPORTER.schedule(request.app, name, settings, plan, post)
        if malformed:
            counts.malformed += 1
            # Cut short mid-string, as a proxy that dropped the connection would leave it.
            return web.Response(
                status=202, text='{"message_uuid": "' + message_uuid[:8], content_type=JSON
            )
        return web.json_response({"message_uuid": message_uuid}, status=202)


def _public_key(pem: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem.strip().encode() + b"\n")
    except ValueError as exc:
        raise ValueError(f"public_key: not a PEM public key ({exc})") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("public_key: Vonage application keys are RSA; this one is not")
    return key


def _fresh(claims: Mapping[str, Any], now: float) -> bool:
    """Whether an application JWT's claims are complete and it is in force at `now`."""
    iat, exp, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
    if not _integer(iat) or not isinstance(jti, str) or not jti:
        return False
    if exp is None:
        exp = iat + JWT_TTL
    if not _integer(exp) or exp - iat > JWT_MAX_LIFETIME:
        return False
    nbf = claims.get("nbf", iat)
    return _integer(nbf) and nbf <= now + 60 and now < exp


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_send(login: _Login, body: bytes) -> _Send | web.Response:
    """The request's fields, or Vonage's answer to what is wrong with them."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return vonage_error(
            422, f"{ERRORS}#invalid-json", "The request body did not contain valid JSON", str(exc)
        )
    if not isinstance(data, dict):
        return vonage_error(
            422,
            f"{ERRORS}#invalid-json",
            "The request body did not contain valid JSON",
            "The body must be a JSON object.",
        )
    problem = _channel_problem(data) or _address_problem(data) or _option_problem(data)
    if problem is not None:
        return problem
    callback = data.get("webhook_url") or login.account.status_url
    return _Send(
        login, data["to"], data["from"], data["text"], data.get("client_ref"), callback or None
    )


def _channel_problem(data: Mapping[str, Any]) -> web.Response | None:
    if data.get("channel") != "sms":
        return vonage_error(
            422,
            f"{ERRORS}/messages#1400",
            "Unsupported channel",
            "The channel specified in the request is not supported.",
        )
    if data.get("message_type") != "text":
        return vonage_error(
            422,
            f"{ERRORS}/messages#1440",
            "Invalid message type",
            "The message type specified in the request is not supported for the given channel.",
        )
    return None


def _address_problem(data: Mapping[str, Any]) -> web.Response | None:
    to, from_ = data.get("to"), data.get("from")
    if not isinstance(to, str) or not _TO.fullmatch(to):
        return vonage_error(
            422,
            f"{ERRORS}/messages#1430",
            "Invalid recipient",
            "The `to` parameter is invalid for the given channel.",
        )
    senders = (_NUMBER_SENDER, _ALPHANUMERIC)
    if not isinstance(from_, str) or not any(p.fullmatch(from_) for p in senders):
        return vonage_error(
            422,
            f"{ERRORS}/messages#1420",
            "Invalid sender",
            "The `from` parameter is invalid for the given channel.",
        )
    return None


def _option_problem(data: Mapping[str, Any]) -> web.Response | None:
    text, ttl, client_ref = data.get("text"), data.get("ttl"), data.get("client_ref")
    if not isinstance(text, str) or not text:
        return _invalid_params("text", "is required.")
    if len(text) > TEXT_MAX:
        return _invalid_params("text", f"must be at most {TEXT_MAX} characters.")
    if ttl is not None and not (_integer(ttl) and TTL_MIN <= ttl <= TTL_MAX):
        return _invalid_params("ttl", f"must be an integer from {TTL_MIN} to {TTL_MAX}.")
    if client_ref is not None and not (
        isinstance(client_ref, str) and len(client_ref) <= CLIENT_REF_MAX
    ):
        return vonage_error(
            422,
            f"{ERRORS}/messages#1450",
            "Invalid client reference",
            f"The client reference can be a string of up to {CLIENT_REF_MAX} characters.",
        )
    webhook_url = data.get("webhook_url")
    if webhook_url is not None and not (isinstance(webhook_url, str) and _is_http_url(webhook_url)):
        # Not echoed: a report URL carries dispatchd's per-message token.
        return _invalid_params("webhook_url", "must be a valid URL.")
    if data.get("webhook_version", "v1") not in ("v0.1", "v1"):
        return _invalid_params("webhook_version", "must be one of `v0.1`, `v1`.")
    return None


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _status_body(message_uuid: str, data: _Send, callback: _Callback) -> bytes:
    """A v1 status webhook's body for one SMS, compact as Vonage sends it."""
    timestamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fields: dict[str, Any] = {
        "message_uuid": message_uuid,
        "to": data.to,
        "from": data.from_,
        "timestamp": timestamp,
        "status": callback.status,
        "channel": "sms",
    }
    if data.client_ref is not None:
        fields["client_ref"] = data.client_ref
    if callback.error_code:
        fields["error"] = {
            "type": f"{ERRORS}/messages#{callback.error_code}",
            "title": callback.error_code,
            "detail": ERROR_DETAILS.get(callback.error_code, ""),
            "instance": uuid.uuid4().hex,
        }
    if callback.status != "submitted":
        fields["destination"] = {"network_code": "23410"}
        fields["sms"] = {"count_total": str(segment(data.text).segments)}
        fields["usage"] = {"currency": "EUR", "price": "0.0333"}
    return json.dumps(fields, separators=(",", ":")).encode()


async def _post(
    app: web.Application,
    state: SimulatorState,
    settings: SimulatorConfig,
    data: _Send,
    message_uuid: str,
    callback: _Callback,
) -> None:
    """POST one signed status webhook."""
    url = data.callback or ""  # only messages with a report URL get here
    body = _status_body(message_uuid, data, callback)

    def request(session: aiohttp.ClientSession) -> Opened:
        # Signed afresh on every try, so a retried webhook's `iat` is never stale.
        headers = {"Content-Type": JSON, "Authorization": f"Bearer {_sign(data.login, body)}"}
        return session.post(url, data=body, headers=headers)

    await _REPORTER.post(app, state.stats, settings, request, f"message_id={message_uuid}")


def _sign(login: _Login, body: bytes) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "api_key": login.api_key,
    }
    if login.application_id is not None:
        claims["application_id"] = login.application_id
    return webhook_jwt(login.account.signature_secret, body, claims)
