"""The simulator's Twilio dialect: the Messages API and its signed status callbacks.

`POST /twilio/2010-04-01/Accounts/{AccountSid}/Messages.json` (under `/simulator/` on the
daemon) answers as Twilio does:
- `401` code 20003 unless HTTP Basic `AccountSid:AuthToken` names a configured account and
  the path's AccountSid is that account;
- `400` with Twilio's code for a missing or bad `To` (21604 / 21211), `From` or
  `MessagingServiceSid` (21603 / 21212 / 21705), `Body` (21602 / 21617), `ValidityPeriod`
  (21624) or `StatusCallback` (21609);
- `201` with a Message resource (`sid` = `SM` + 32 hex, `status` `queued`, or `accepted`
  with a Messaging Service).

Fault injection reads the `[simulator]` settings for the name `twilio` (`PUT
/_faults/twilio`): `down` (and its window / flap) answers `503` code 20503, `hang_rate`
leaves the request unanswered, `throttle_rate` answers `429` code 20429, `failure_rate`
answers `500` code 20500, `latency` delays the answer, `malformed_rate` cuts the 201 body
short. After a 201, `callback_delay` seconds later, it POSTs form-encoded status callbacks
signed with `X-Twilio-Signature` to `StatusCallback`: `sent`, then the final one
(`delivered`; `undelivered` with ErrorCode 30003 for a failure; `undelivered` with 30005,
which the twilio kind maps to `invalid`, for numbers ending in `invalid_suffix`).
`out_of_order_rate`, `duplicate_callback_rate`, `early_callback_rate` (the final report
before the 201, then `sent`) and `callback_retry_for` work as in the dispatchd dialect.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.callbacks import Reporter
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.domain.encoding import segment
from dispatchd.providers.twilio import (
    API_VERSION,
    FORM,
    SIGNATURE_HEADER,
    VALIDITY_MAX,
    VALIDITY_MIN,
    signature,
)

logger = logging.getLogger(__name__)

NAME = "twilio"
ROUTE = f"/twilio/{API_VERSION}/Accounts/{{account_sid}}/Messages.json"
BODY_MAX = 1600  # errors/21617
# What a Messaging Service picks from its sender pool when no From is given.
POOL_SENDER = "+15005550006"
# dispatchd's `failed` / `invalid` as Twilio reports them; 30005 is in the kind's
# INVALID_NUMBER_CODES, 30003 is not.
FINAL_REPORTS: Mapping[str, tuple[str, str | None]] = {
    "delivered": ("delivered", None),
    "failed": ("undelivered", "30003"),
    "invalid": ("undelivered", "30005"),
}

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")

_REPORTER = Reporter(logger, NAME)
CALLBACKS = _REPORTER.callbacks


@dataclass(frozen=True, slots=True)
class _Send:
    """A valid Messages.json request."""

    account_sid: str
    to: str
    from_: str | None
    service_sid: str | None
    body: str
    callback: str | None


@dataclass(frozen=True, slots=True)
class _Callback:
    status: str
    error_code: str | None = None


def add_twilio_routes(
    app: web.Application, state: SimulatorState, accounts: Mapping[str, str]
) -> None:
    """Serve Twilio's Messages API on `app` for `accounts` (AccountSid -> AuthToken)."""
    dialect = _Dialect(state, dict(accounts))
    _REPORTER.install(app)
    app.router.add_post(ROUTE, dialect.send)


def twilio_error(status: int, code: int, message: str) -> web.Response:
    """An answer in Twilio's error format."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


class _Dialect:
    def __init__(self, state: SimulatorState, accounts: dict[str, str]) -> None:
        self._state = state
        self._accounts = accounts

    async def send(self, request: web.Request) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        account_sid = request.match_info["account_sid"]
        if not self._authenticated(request, account_sid):
            counts.bad_requests += 1
            response = twilio_error(401, 20003, "Authentication Error - invalid username")
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        data = _read_send(account_sid, await request.post())
        if isinstance(data, web.Response):
            counts.bad_requests += 1
            return data
        counts.requests += 1
        settings = state.settings_for(NAME)
        if state.is_down(NAME, settings):
            counts.down += 1
            return twilio_error(503, 20503, "Service Unavailable")
        if state.chance(settings.hang_rate):
            counts.hung += 1
            await _REPORTER.hang(request)
            return twilio_error(503, 20503, "Service Unavailable")
        if state.chance(settings.throttle_rate):
            counts.throttled += 1
            return twilio_error(429, 20429, "Too Many Requests")
        if settings.latency:
            await asyncio.sleep(settings.latency)
        if state.chance(settings.failure_rate):
            counts.errors += 1
            return twilio_error(500, 20500, "An internal server error has occurred")
        return await self._accept(request, data, settings)

    def _authenticated(self, request: web.Request, account_sid: str) -> bool:
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None:
            return False
        login, password = credentials
        token = self._accounts.get(login)
        # Compared in constant time so a probe learns nothing from timing.
        good_token = token is not None and hmac.compare_digest(password, token.encode())
        return good_token and hmac.compare_digest(login.encode(), account_sid.encode())

    async def _accept(
        self, request: web.Request, data: _Send, settings: SimulatorConfig
    ) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        sid = f"SM{state.rng.getrandbits(128):032x}"
        malformed = state.chance(settings.malformed_rate)
        counts.accepted += 1
        state.stats.count_pair(data.to, data.body)
        if state.keep_received:
            state.received.append(
                {"provider": NAME, "to_number": data.to, "message": data.body, "message_id": sid}
            )
        resource = _message_resource(sid, data)
        if data.callback:
            params = _callback_params(sid, data)
            token = self._accounts[data.account_sid]
            plan = [_Callback(*FINAL_REPORTS[s]) for s in state.plan_reports(data.to, settings)]
            post = functools.partial(
                _post, request.app, state, settings, data.callback, token, params
            )
            if state.chance(settings.early_callback_rate):
                await post(plan.pop(0))
            # Twilio sends `sent` before the final status; after an early final it still
            # comes, late, as it can from Twilio.
            plan.insert(0, _Callback("sent"))
            _REPORTER.schedule(
                request.app, f"simulator-twilio-callback-{sid}", settings, plan, post
            )
        if malformed:
            counts.malformed += 1
            # Cut short mid-string, as a proxy that dropped the connection would leave it.
            return web.Response(
                status=201, text='{"sid": "' + sid[:10], content_type="application/json"
            )
        return web.json_response(resource, status=201)


def _basic_credentials(header: str) -> tuple[str, bytes] | None:
    """The login and password of an HTTP Basic `Authorization` header, or None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return None
    login, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return login.decode("latin-1"), password


def _read_send(account_sid: str, form: Mapping[str, Any]) -> _Send | web.Response:
    """The request's fields, or Twilio's answer to what is wrong with them."""

    def text(name: str) -> str:
        value = form.get(name)
        return value if isinstance(value, str) else ""

    to, from_, service = text("To").strip(), text("From").strip(), text("MessagingServiceSid")
    callback, validity = text("StatusCallback").strip(), text("ValidityPeriod").strip()
    # The body is sent as given: its spaces are part of the message.
    body = text("Body")
    if not to:
        return twilio_error(400, 21604, "A 'To' phone number is required.")
    if not _E164.fullmatch(to):
        return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if not from_ and not service:
        return twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' is required.")
    if from_ and not any(p.fullmatch(from_) for p in (_E164, _SHORT_CODE, _ALPHANUMERIC)):
        return twilio_error(
            400,
            21212,
            f"The 'From' number {from_} is not a valid phone number, shortcode, "
            "or alphanumeric sender ID.",
        )
    if service and not _SERVICE_SID.fullmatch(service):
        return twilio_error(400, 21705, "The Messaging Service Sid is invalid.")
    if not body.strip():
        return twilio_error(400, 21602, "Message body is required.")
    if len(body) > BODY_MAX:
        return twilio_error(
            400, 21617, "The concatenated message body exceeds the 1600 character limit."
        )
    whole = validity.isascii() and validity.isdigit()
    if validity and not (whole and VALIDITY_MIN <= int(validity) <= VALIDITY_MAX):
        return twilio_error(400, 21624, "Invalid validity period value.")
    if callback and not _is_http_url(callback):
        # Not echoed: a report URL carries dispatchd's per-message token.
        return twilio_error(400, 21609, "The StatusCallback URL is not a valid URL.")
    return _Send(account_sid, to, from_ or None, service or None, body, callback or None)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _message_resource(sid: str, data: _Send) -> dict[str, Any]:
    now = formatdate(time.time(), usegmt=False).replace("-0000", "+0000")
    base = f"/{API_VERSION}/Accounts/{data.account_sid}/Messages/{sid}"
    # With a Messaging Service the sender (and so the segment count) is picked later.
    return {
        "account_sid": data.account_sid,
        "api_version": API_VERSION,
        "body": data.body,
        "date_created": now,
        "date_sent": None,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": data.from_,
        "messaging_service_sid": data.service_sid,
        "num_media": "0",
        "num_segments": "0" if data.service_sid else str(segment(data.body).segments),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "accepted" if data.service_sid else "queued",
        "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
        "to": data.to,
        "uri": f"{base}.json",
    }


def _callback_params(sid: str, data: _Send) -> dict[str, str]:
    params = {
        "AccountSid": data.account_sid,
        "ApiVersion": API_VERSION,
        "From": data.from_ or POOL_SENDER,
        "MessageSid": sid,
        "SmsSid": sid,
        "To": data.to,
    }
    if data.service_sid:
        params["MessagingServiceSid"] = data.service_sid
    return params


async def _post(
    app: web.Application,
    state: SimulatorState,
    settings: SimulatorConfig,
    url: str,
    token: str,
    params: dict[str, str],
    callback: _Callback,
) -> None:
    """POST one signed status callback."""
    fields = {**params, "MessageStatus": callback.status, "SmsStatus": callback.status}
    if callback.error_code:
        fields["ErrorCode"] = callback.error_code
    if callback.status in ("delivered", "undelivered"):
        fields["RawDlrDoneDate"] = time.strftime("%y%m%d%H%M", time.gmtime())
    headers = {
        "Content-Type": FORM,
        SIGNATURE_HEADER: signature(token, url, fields.items()),
        "User-Agent": "TwilioProxy/1.1",
    }
    body = urlencode(fields).encode("ascii")
    await _REPORTER.post(
        app,
        state.stats,
        settings,
        lambda session: session.post(url, data=body, headers=headers),
        f"message_id={params['MessageSid']}",
    )
