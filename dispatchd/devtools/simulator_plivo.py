"""The simulator's Plivo dialect: the Message API and its signed status callbacks.

`POST /plivo/v1/Account/{auth_id}/Message/` (under `/simulator/` on the daemon) answers as
Plivo does:
- `401` unless HTTP Basic `auth_id:auth_token` names a configured account and the path's
  auth_id is that account (`{"error": "authentication credentials were not provided"}`
  without credentials, the body Plivo's PHP SDK records; `{"api_id", "error"}` otherwise);
- `400 {"api_id", "error"}` for a body that is not JSON, a missing `src` / `dst` / `text`,
  a text over 1600 characters, a bad `url`, `method` or `message_expiry`, and
  `"<dst> is not a valid phone number"` (Plivo's documented wording) for a destination
  that is not 2 to 15 digits once Plivo's sanitising (`/ - . + ( )` and spaces) is done;
  the other `error` sentences are the simulator's own;
- `202 {"api_id", "message": "message(s) queued", "message_uuid": ["<uuid>"]}`.

Fault injection reads the `[simulator]` settings for the name `plivo` (`PUT
/_faults/plivo`): `down` (and its window / flap) answers `503`, `hang_rate` leaves the
request unanswered, `throttle_rate` answers `429` ("too many requests"), `failure_rate`
answers `500`, `latency` delays the answer, `malformed_rate` cuts the 202 body short. After
a 202 with a `url`, `callback_delay` seconds later, it calls `url` (form-encoded POST, or a
GET with the fields in the query for `method` GET) with Plivo's callback fields, signed with
`X-Plivo-Signature-V2` / `-Ma-V2` and a fresh `X-Plivo-Signature-V2-Nonce`: `sent`, then
the final one (`delivered`; `undelivered` with ErrorCode 80 for a failure; `undelivered`
with 50, which the plivo kind maps to `invalid`, for numbers ending in `invalid_suffix`).
`out_of_order_rate`, `duplicate_callback_rate`, `early_callback_rate` (the final report
before the 202, then `sent`) and `callback_retry_for` work as in the dispatchd dialect.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import itertools
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.callbacks import Opened, Reporter
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.domain.encoding import segment
from dispatchd.providers.plivo import (
    EXPIRY_MAX,
    EXPIRY_MIN,
    FORM,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    signature,
)

logger = logging.getLogger(__name__)

NAME = "plivo"
ROUTE = "/plivo/v1/Account/{auth_id}/Message/"
MAIN_ACCOUNT_SIGNATURE_HEADER = "X-Plivo-Signature-Ma-V2"
TEXT_MAX = 1600  # plivo.com send-a-message: "a maximum limit of 1600 characters"
# dispatchd's `failed` / `invalid` as Plivo reports them; 50 is in the kind's
# INVALID_NUMBER_CODES, 80 (destination temporarily unavailable) is not.
FINAL_REPORTS: Mapping[str, tuple[str, str | None]] = {
    "delivered": ("delivered", None),
    "failed": ("undelivered", "80"),
    "invalid": ("undelivered", "50"),
}
RATE = "0.00500"
# What a Powerpack picks from its number pool when no `src` is given.
POOL_SENDER = "14155550100"

# Plivo strips these from `dst` before it checks the number (send-a-message reference).
_DST_STRIPPED = re.compile(r"[/\-.+()\s]")
_DIGITS = re.compile(r"[0-9]{2,15}")
_SRC_STRIPPED = re.compile(r"[^A-Za-z0-9]")

_REPORTER = Reporter(logger, NAME)
CALLBACKS = _REPORTER.callbacks


@dataclass(frozen=True, slots=True)
class _Send:
    """A valid Message request."""

    auth_id: str
    src: str
    dst: str  # sanitised: digits only
    text: str
    url: str | None
    method: str


@dataclass(frozen=True, slots=True)
class _Callback:
    status: str
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one message's callbacks go, and what they all carry."""

    url: str
    method: str
    token: str
    params: dict[str, str]
    # Plivo's `Sequence`: callbacks numbered in the order they were made.
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def add_plivo_routes(
    app: web.Application, state: SimulatorState, accounts: Mapping[str, str]
) -> None:
    """Serve Plivo's Message API on `app` for `accounts` (auth_id -> auth_token)."""
    dialect = _Dialect(state, dict(accounts))
    _REPORTER.install(app)
    app.router.add_post(ROUTE, dialect.send)


def plivo_error(status: int, error: str, api_id: str | None) -> web.Response:
    """An answer in Plivo's error format (`api_id` is left out when None, as on some 401s)."""
    body: dict[str, Any] = {"api_id": api_id} if api_id else {}
    body["error"] = error
    return web.json_response(body, status=status)


class _Dialect:
    def __init__(self, state: SimulatorState, accounts: dict[str, str]) -> None:
        self._state = state
        self._accounts = accounts

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._state.rng.getrandbits(128), version=4))

    async def send(self, request: web.Request) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        auth_id = request.match_info["auth_id"]
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None:
            counts.bad_requests += 1
            return plivo_error(401, "authentication credentials were not provided", None)
        if not self._authenticated(credentials, auth_id):
            counts.bad_requests += 1
            return plivo_error(401, "authentication failed", self._uuid())
        data = _read_send(auth_id, await request.read())
        if isinstance(data, str):
            counts.bad_requests += 1
            return plivo_error(400, data, self._uuid())
        counts.requests += 1
        settings = state.settings_for(NAME)
        if state.is_down(NAME, settings):
            counts.down += 1
            return plivo_error(503, "service unavailable", self._uuid())
        if state.chance(settings.hang_rate):
            counts.hung += 1
            await _REPORTER.hang(request)
            return plivo_error(503, "service unavailable", self._uuid())
        if state.chance(settings.throttle_rate):
            counts.throttled += 1
            return plivo_error(429, "too many requests", self._uuid())
        if settings.latency:
            await asyncio.sleep(settings.latency)
        if state.chance(settings.failure_rate):
            counts.errors += 1
            return plivo_error(500, "internal server error", self._uuid())
        return await self._accept(request, data, settings)

    def _authenticated(self, credentials: tuple[str, bytes], auth_id: str) -> bool:
        login, password = credentials
        token = self._accounts.get(login)
        # Compared in constant time so a probe learns nothing from timing.
        good_token = token is not None and hmac.compare_digest(password, token.encode())
        return good_token and hmac.compare_digest(login.encode(), auth_id.encode())

    async def _accept(
        self, request: web.Request, data: _Send, settings: SimulatorConfig
    ) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        api_id = self._uuid()
        message_uuid = self._uuid()
        malformed = state.chance(settings.malformed_rate)
        counts.accepted += 1
        to_number = "+" + data.dst
        state.stats.count_pair(to_number, data.text)
        if state.keep_received:
            state.received.append(
                {
                    "provider": NAME,
                    "to_number": to_number,
                    "message": data.text,
                    "message_id": message_uuid,
                }
            )
        if data.url:
            target = _Target(
                data.url, data.method, self._accounts[data.auth_id], _params(message_uuid, data)
            )
            plan = [_Callback(*FINAL_REPORTS[s]) for s in state.plan_reports(to_number, settings)]
            post = functools.partial(_post, request.app, state, settings, target)
            if state.chance(settings.early_callback_rate):
                await post(plan.pop(0))
            # Plivo reports `sent` before the final status; after an early final it still
            # comes, late.
            plan.insert(0, _Callback("sent"))
            name = f"simulator-plivo-callback-{message_uuid}"
            _REPORTER.schedule(request.app, name, settings, plan, post)
        if malformed:
            counts.malformed += 1
            # Cut short mid-string, as a proxy that dropped the connection would leave it.
            text = '{"api_id": "' + api_id + '", "message_uuid": ["' + message_uuid[:8]
            return web.Response(status=202, text=text, content_type="application/json")
        body = {"api_id": api_id, "message": "message(s) queued", "message_uuid": [message_uuid]}
        return web.json_response(body, status=202)


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


def _read_send(auth_id: str, raw: bytes) -> _Send | str:
    """The request's fields, or the `error` Plivo would answer with."""
    data = _json_object(raw)
    if isinstance(data, str):
        return data

    def text(name: str) -> str:
        value = data.get(name)
        return value if isinstance(value, str) else ""

    src, dst, body = text("src").strip(), text("dst").strip(), text("text")
    url, method = text("url").strip(), (text("method").strip() or "POST").upper()
    if not src and not text("powerpack_uuid"):
        return "src parameter not present"
    if not dst:
        return "dst parameter not present"
    sanitised = _DST_STRIPPED.sub("", dst)
    if "<" in sanitised:
        return "the simulator sends to one destination per request"
    if not _DIGITS.fullmatch(sanitised):
        return f"{sanitised or dst} is not a valid phone number"
    if not body.strip():
        return "text parameter not present"
    if len(body) > TEXT_MAX:
        return f"text exceeds {TEXT_MAX} characters"
    if url and not _is_http_url(url):
        # Not echoed: a report URL carries dispatchd's per-message token.
        return "url is not a valid URL"
    if method not in ("GET", "POST"):
        return "method must be GET or POST"
    if not _good_expiry(data.get("message_expiry")):
        return f"message_expiry must be an integer between {EXPIRY_MIN} and {EXPIRY_MAX}"
    return _Send(auth_id, src or POOL_SENDER, sanitised, body, url or None, method)


def _json_object(raw: bytes) -> dict[str, Any] | str:
    """The request's JSON object, or what is wrong with it."""
    try:
        data = json.loads(raw)
    except ValueError:
        return "invalid JSON in the request body"
    if not isinstance(data, dict):
        return "the request body must be a JSON object"
    return data


def _good_expiry(value: object) -> bool:
    """Whether `message_expiry` is absent or whole seconds in Plivo's accepted range."""
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return EXPIRY_MIN <= value <= EXPIRY_MAX


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _now() -> str:
    """Plivo's callback timestamp format: `YYYY-mm-dd HH:MM:SS.SSSSSS`."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _params(message_uuid: str, data: _Send) -> dict[str, str]:
    units = segment(data.text).segments
    now = _now()
    return {
        "From": _SRC_STRIPPED.sub("", data.src) or data.src,
        "MessageTime": now,
        "MessageUUID": message_uuid,
        "ParentMessageUUID": message_uuid,
        "PartInfo": "",
        "PowerpackUUID": "",
        "QueuedTime": now,
        "To": data.dst,
        "TotalAmount": f"{units * float(RATE):.5f}",
        "TotalRate": RATE,
        "Type": "sms",
        "Units": str(units),
        "MCC": "310",
        "MNC": "260",
    }


async def _post(
    app: web.Application,
    state: SimulatorState,
    settings: SimulatorConfig,
    target: _Target,
    callback: _Callback,
) -> None:
    """Send one signed status callback."""
    sequence = next(target.sequence)
    fields = {**target.params, "Status": callback.status, "Sequence": str(sequence)}
    if callback.status == "sent":
        fields["SentTime"] = _now()
    if callback.status in ("delivered", "undelivered", "failed"):
        fields["DeliveryReportTime"] = _now()
    if callback.error_code is not None:
        fields["ErrorCode"] = callback.error_code
    elif callback.status == "delivered":
        fields["ErrorCode"] = "000"
    nonce = "".join(str(state.rng.randrange(10)) for _ in range(20))
    signed = signature(target.token, target.url, nonce)
    headers = {
        SIGNATURE_HEADER: signed,
        # The simulator's accounts are main accounts, so both are under the same token.
        MAIN_ACCOUNT_SIGNATURE_HEADER: signed,
        NONCE_HEADER: nonce,
        "User-Agent": "PlivoHTTPClient",
    }
    body = urlencode(fields).encode("ascii")
    await _REPORTER.post(
        app,
        state.stats,
        settings,
        lambda session: _request(session, target, fields, body, headers),
        f"message_id={fields['MessageUUID']}",
    )


def _request(
    session: aiohttp.ClientSession,
    target: _Target,
    fields: dict[str, str],
    body: bytes,
    headers: dict[str, str],
) -> Opened:
    """One try at a callback, as `method` asks: the fields in the query, or a form body."""
    if target.method == "GET":
        # The signature covers the URL without its query, so added fields change nothing.
        return session.get(target.url, params=fields, headers=headers)
    return session.post(target.url, data=body, headers={**headers, "Content-Type": FORM})
