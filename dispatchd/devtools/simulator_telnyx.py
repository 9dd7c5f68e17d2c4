"""The simulator's Telnyx dialect: the Messaging API v2 and its Ed25519-signed webhooks.

`POST /telnyx/v2/messages` (under `/simulator/` on the daemon, so the provider's `url` is
`{public_url}/simulator/telnyx`) answers as Telnyx does:
- `401` code 10009 unless `Authorization: Bearer {api_key}` names a configured account;
- `400` code 10015 for a body that is not a JSON object or a malformed `Idempotency-Key`;
  `422` code 10004 for a missing `to`, or neither `from` nor `messaging_profile_id`;
  `400` code 40310 for a `to` that is neither E.164 nor a short code, 40305 for a bad
  `from`, 40306 for an alphanumeric `from` without a messaging profile, 40316 for no
  `text`, 40302 (with Telnyx's documented detail) for more than 10 parts; `422` code
  10006 for a `messaging_profile_id` that is not a UUID, 10003 for a `webhook_url` that is
  not http(s);
- `200 {"data": {...}}`: the message record, `id` a UUID, `to[0].status` `queued`.
A repeated `Idempotency-Key` with the same bytes replays the first 200 (no second message,
no second set of webhooks); with other bytes it gets `422` code 10015, as Telnyx answers
422 then (developers.telnyx.com/docs/development/api-fundamentals/idempotency).

Fault injection reads the `[simulator]` settings for the name `telnyx` (`PUT
/_faults/telnyx`): `down` (and its window / flap) answers `503`, `hang_rate` leaves the
request unanswered, `throttle_rate` answers `429` code 10011 with Telnyx's
`x-ratelimit-*` headers, `failure_rate` answers `500` code 10007, `latency` delays the
answer, `malformed_rate` cuts the 200 body short. After a 200, `callback_delay` seconds
later, it POSTs `message.sent`, then `message.finalized` events to the `webhook_url`,
signed `telnyx-signature-ed25519` over `"{telnyx-timestamp}|{body}"` with the account's
private key: `delivered`; `delivery_failed` with error 40006 for a failure;
`delivery_failed` with 40012, which the telnyx kind maps to `invalid`, for numbers ending
in `invalid_suffix`. `out_of_order_rate`, `duplicate_callback_rate`, `early_callback_rate`
(`message.finalized` before the 200, then `message.sent`, as Telnyx warns can happen) and
`callback_retry_for` work as in the other dialects; each try carries `meta.attempt` and
is signed afresh.

Keys: `accounts` maps each api_key to the base64 Ed25519 private key (the 32-byte seed)
that signs its webhooks; the dispatchd provider's `public_key` must be the matching public
key. For development and tests, `DEV_PRIVATE_KEY` / `DEV_PUBLIC_KEY` are a fixed pair
derived from a public string: anyone can sign with it, so it is for the simulator only and
never for a real account.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import itertools
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.callbacks import Opened, Reporter
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.domain.encoding import segment
from dispatchd.providers.telnyx import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY,
    JSON,
    MESSAGES_PATH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signed_bytes,
)

logger = logging.getLogger(__name__)

NAME = "telnyx"
ROUTE = f"/telnyx{MESSAGES_PATH}"
# A fixed, public, development-only key pair: DEV_PRIVATE_KEY is
# base64(sha256(DEV_KEY_SEED)), DEV_PUBLIC_KEY its Ed25519 public key (checked by the tests).
DEV_KEY_SEED = b"dispatchd simulator: telnyx dev-only signing key"
DEV_PRIVATE_KEY = "2eZLDpjKvvJ6r4N1hmjUQu9p7q3wDiWZeZ/4rDLQ/K8="
DEV_PUBLIC_KEY = "H7xvILQoezjYqCo+j7dpxVNxMd2UqMNuQKM7S3+mpcY="
# developers.telnyx.com/docs/messaging/messages/sms-chunking: 10 parts unless chunking is on.
MAX_PARTS = 10
# The docs' example message record holds a message for an hour (valid_until).
VALID_FOR = 3600.0
# What a messaging profile's number pool picks when no `from` is given.
POOL_SENDER = "+13125550001"
CARRIER = "SIMULATED CARRIER"
# Idempotency records kept per simulator (Telnyx keeps them 24 h); the oldest go first.
MAX_IDEMPOTENCY_RECORDS = 10_000
# dispatchd's `failed` / `invalid` as Telnyx reports them; 40012 is in the kind's
# INVALID_NUMBER_CODES, 40006 is not.
FINAL_REPORTS: Mapping[str, tuple[str, dict[str, str] | None]] = {
    "delivered": ("delivered", None),
    "failed": (
        "delivery_failed",
        {
            "code": "40006",
            "title": "Recipient unavailable",
            "detail": "The recipient's carrier server is down.",
        },
    ),
    "invalid": (
        "delivery_failed",
        {
            "code": "40012",
            "title": "Invalid destination number",
            "detail": "The carrier rejected the destination number.",
        },
    ),
}

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Names the simulator's accounts' profiles and organizations, for stable ids per api_key.
_NAMESPACE = uuid.UUID("6f1c0d52-4c1e-4a55-9d39-0c2f2f3b8a11")

_REPORTER = Reporter(logger, NAME)
CALLBACKS = _REPORTER.callbacks


@dataclass(frozen=True, slots=True)
class _Send:
    """A valid `POST /v2/messages`."""

    api_key: str
    to: str
    from_: str | None
    profile_id: str | None
    text: str
    webhook_url: str | None
    idempotency_key: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class _Event:
    event_type: str
    status: str
    error: dict[str, str] | None = None


def add_telnyx_routes(
    app: web.Application, state: SimulatorState, accounts: Mapping[str, str]
) -> None:
    """Serve Telnyx's Messaging API on `app` for `accounts` (api_key -> base64 Ed25519
    private key signing that account's webhooks)."""
    keys = {api_key: private_key(encoded) for api_key, encoded in accounts.items()}
    dialect = _Dialect(state, keys)
    _REPORTER.install(app)
    app.router.add_post(ROUTE, dialect.send)


def private_key(encoded: str) -> Ed25519PrivateKey:
    """The Ed25519 private key whose 32-byte seed `encoded` holds in base64."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("accounts: a telnyx signing key is not base64") from exc
    if len(raw) != 32:
        raise ValueError("accounts: a telnyx signing key must be a 32-byte Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_for(encoded_private_key: str) -> str:
    """The base64 public key (the provider's `public_key`) matching a private key."""
    public = private_key(encoded_private_key).public_key()
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def sign(key: Ed25519PrivateKey, timestamp: str, body: bytes) -> str:
    """The `telnyx-signature-ed25519` header for `body` sent at `timestamp`."""
    return base64.b64encode(key.sign(signed_bytes(timestamp, body))).decode("ascii")


def telnyx_error(
    status: int, code: str, title: str, detail: str, pointer: str | None = None
) -> web.Response:
    """An answer in Telnyx's error format."""
    error: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer:
        error["source"] = {"pointer": pointer}
    return web.json_response({"errors": [error]}, status=status)


def _unauthorized() -> web.Response:
    return telnyx_error(
        401,
        "10009",
        "Authentication failed",
        "The required authentication headers were either invalid or not included in the request.",
    )


class _Dialect:
    def __init__(self, state: SimulatorState, keys: dict[str, Ed25519PrivateKey]) -> None:
        self._state = state
        self._keys = keys
        # (api_key, Idempotency-Key) -> (request bytes, the 200's bytes). Telnyx scopes a
        # record by organization; here each account is one.
        self._records: OrderedDict[tuple[str, str], tuple[bytes, bytes]] = OrderedDict()

    async def send(self, request: web.Request) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        api_key = self._account(request.headers.get("Authorization", ""))
        if api_key is None:
            counts.bad_requests += 1
            return _unauthorized()
        data = _read_send(api_key, request.headers.get(IDEMPOTENCY_HEADER), await request.read())
        if isinstance(data, web.Response):
            counts.bad_requests += 1
            return data
        counts.requests += 1
        settings = state.settings_for(NAME)
        fault = await self._fault(request, settings)
        if fault is not None:
            return fault
        if data.idempotency_key is not None:
            record = self._records.get((api_key, data.idempotency_key))
            if record is not None:
                return _replay(data, record)
        return await self._accept(request, data, settings)

    def _account(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        # Compared in constant time so a probe learns nothing from timing.
        found = None
        for api_key in self._keys:
            if hmac.compare_digest(api_key.encode(), token.encode()):
                found = api_key
        return found

    async def _fault(self, request: web.Request, settings: SimulatorConfig) -> web.Response | None:
        state = self._state
        counts = state.stats.provider(NAME)
        if state.is_down(NAME, settings):
            counts.down += 1
            return _unavailable()
        if state.chance(settings.hang_rate):
            counts.hung += 1
            await _REPORTER.hang(request)
            return _unavailable()
        if state.chance(settings.throttle_rate):
            counts.throttled += 1
            response = telnyx_error(
                429,
                "10011",
                "Too many requests",
                "You have exceeded the maximum number of allowed requests.",
            )
            # development/api-fundamentals/reliability/rate-limiting: these headers, no
            # Retry-After.
            response.headers.update(
                {"x-ratelimit-limit": "1", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}
            )
            return response
        if settings.latency:
            await asyncio.sleep(settings.latency)
        if state.chance(settings.failure_rate):
            counts.errors += 1
            return telnyx_error(500, "10007", "Unexpected error", "An unexpected error occured.")
        return None

    async def _accept(
        self, request: web.Request, data: _Send, settings: SimulatorConfig
    ) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        message_id = str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
        malformed = state.chance(settings.malformed_rate)
        counts.accepted += 1
        state.stats.count_pair(data.to, data.text)
        if state.keep_received:
            state.received.append(
                {
                    "provider": NAME,
                    "to_number": data.to,
                    "message": data.text,
                    "message_id": message_id,
                }
            )
        record = _message_record(message_id, data)
        answer = json.dumps({"data": record}).encode()
        if data.idempotency_key is not None:
            self._remember((data.api_key, data.idempotency_key), (data.body, answer))
        if data.webhook_url:
            key = self._keys[data.api_key]
            plan = [
                _Event("message.finalized", *FINAL_REPORTS[s])
                for s in state.plan_reports(data.to, settings)
            ]
            post = functools.partial(
                _post, request.app, state, settings, data.webhook_url, key, record
            )
            if state.chance(settings.early_callback_rate):
                await post(plan.pop(0))
            # `message.sent` comes before the final event; after an early final it still
            # comes, late, as Telnyx warns it can.
            plan.insert(0, _Event("message.sent", "sent"))
            name = f"simulator-telnyx-callback-{message_id}"
            _REPORTER.schedule(request.app, name, settings, plan, post)
        if malformed:
            counts.malformed += 1
            # Cut short mid-string, as a proxy that dropped the connection would leave it.
            return web.Response(
                status=200, text='{"data": {"id": "' + message_id[:8], content_type=JSON
            )
        return web.Response(status=200, body=answer, content_type=JSON)

    def _remember(self, key: tuple[str, str], value: tuple[bytes, bytes]) -> None:
        self._records[key] = value
        while len(self._records) > MAX_IDEMPOTENCY_RECORDS:
            self._records.popitem(last=False)


def _replay(data: _Send, record: tuple[bytes, bytes]) -> web.Response:
    sent, answer = record
    if sent != data.body:
        return telnyx_error(
            422,
            "10015",
            "Bad Request",
            "This Idempotency-Key was used with a different request.",
        )
    return web.Response(status=200, body=answer, content_type=JSON)


def _unavailable() -> web.Response:
    return telnyx_error(503, "10007", "Unexpected error", "The service is temporarily unavailable.")


def _read_send(api_key: str, idempotency_key: str | None, raw: bytes) -> _Send | web.Response:
    """The request's fields, or Telnyx's answer to what is wrong with them."""
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        return _bad_request("The Idempotency-Key header must match ^[A-Za-z0-9_:-]{1,255}$.")
    try:
        fields = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _bad_request("The request body is not valid JSON.")
    if not isinstance(fields, dict):
        return _bad_request("The request body must be a JSON object.")
    problem = _check(fields)
    if problem is not None:
        return problem
    return _Send(
        api_key,
        fields["to"].strip(),
        fields.get("from") or None,
        fields.get("messaging_profile_id") or None,
        fields["text"],
        fields.get("webhook_url") or None,
        idempotency_key,
        raw,
    )


def _bad_request(detail: str) -> web.Response:
    return telnyx_error(400, "10015", "Bad Request", detail)


def _check(fields: dict[str, Any]) -> web.Response | None:
    """Telnyx's answer to the first problem with the fields, or None."""
    to, from_, profile = fields.get("to"), fields.get("from"), fields.get("messaging_profile_id")
    text, url = fields.get("text"), fields.get("webhook_url")
    if not isinstance(to, str) or not to.strip():
        return telnyx_error(
            422, "10004", "Missing required parameter", "The 'to' parameter is required.", "/to"
        )
    if not any(p.fullmatch(to.strip()) for p in (_E164, _SHORT_CODE)):
        return telnyx_error(
            400,
            "40310",
            "Invalid 'to' address",
            "The 'to' address should be a +E.164 phone number or a short code.",
            "/to",
        )
    if not from_ and not profile:
        return telnyx_error(
            422,
            "10004",
            "Missing required parameter",
            "One of 'from' or 'messaging_profile_id' is required.",
            "/from",
        )
    sender = _check_sender(from_, profile)
    if sender is not None:
        return sender
    if not isinstance(text, str) or not text.strip():
        return telnyx_error(400, "40316", "No content", "The message has no text.", "/text")
    parts = segment(text).segments
    if parts > MAX_PARTS:
        # Telnyx's own wording (developers.telnyx.com/docs/messaging/messages/sms-chunking).
        return telnyx_error(
            400,
            "40302",
            "Message too large",
            f"The SMS message would be divided into {parts} parts. The maximum is {MAX_PARTS}.",
            "/text",
        )
    if url is not None and not _is_http_url(url):
        # Not echoed: a report URL carries dispatchd's per-message token.
        return telnyx_error(
            422,
            "10003",
            "Invalid URL",
            "The URL provided was invalid, malformed, or too long.",
            "/webhook_url",
        )
    return None


def _check_sender(from_: object, profile: object) -> web.Response | None:
    if profile and not (isinstance(profile, str) and _UUID.fullmatch(profile)):
        return telnyx_error(
            422,
            "10006",
            "Invalid ID",
            "The resource ID provided was invalid.",
            "/messaging_profile_id",
        )
    if not from_:
        return None
    if not isinstance(from_, str) or not any(
        p.fullmatch(from_) for p in (_E164, _SHORT_CODE, _ALPHANUMERIC)
    ):
        return telnyx_error(
            400, "40305", "Invalid 'from' address", "The 'from' address is not valid.", "/from"
        )
    if _ALPHANUMERIC.fullmatch(from_) and not profile:
        return telnyx_error(
            400,
            "40306",
            "Alpha sender not configured",
            "An alphanumeric sender ID needs a messaging_profile_id.",
            "/messaging_profile_id",
        )
    return None


def _is_http_url(url: object) -> bool:
    if not isinstance(url, str) or len(url) > 2000:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def _message_record(message_id: str, data: _Send) -> dict[str, Any]:
    now = time.time()
    split = segment(data.text)
    profile = data.profile_id or str(uuid.uuid5(_NAMESPACE, "profile:" + data.api_key))
    return {
        "record_type": "message",
        "direction": "outbound",
        "id": message_id,
        "type": "SMS",
        "messaging_profile_id": profile,
        "organization_id": str(uuid.uuid5(_NAMESPACE, "organization:" + data.api_key)),
        "from": {
            "phone_number": data.from_ or POOL_SENDER,
            "carrier": "Telnyx",
            "line_type": "Wireless",
        },
        "to": [
            {
                "phone_number": data.to,
                "status": "queued",
                "carrier": CARRIER,
                "line_type": "Wireless",
            }
        ],
        "cc": [],
        "text": data.text,
        "media": [],
        "webhook_url": data.webhook_url,
        "webhook_failover_url": None,
        "encoding": split.encoding.value,
        "parts": split.segments,
        "tags": [],
        "cost": None,
        "cost_breakdown": None,
        "received_at": _iso(now),
        "sent_at": None,
        "completed_at": None,
        "valid_until": _iso(now + VALID_FOR),
        "errors": [],
    }


def _event_payload(record: dict[str, Any], event: _Event, now: float) -> dict[str, Any]:
    recipient = {**record["to"][0], "status": event.status}
    payload = {**record, "to": [recipient], "sent_at": _iso(now), "errors": []}
    if event.event_type == "message.finalized":
        payload["completed_at"] = _iso(now)
        amount = f"{0.004 * record['parts']:.4f}"
        payload["cost"] = {"amount": amount, "currency": "USD"}
        if event.error:
            payload["errors"] = [{**event.error, "source": {"pointer": "/to/0/phone_number"}}]
    return payload


async def _post(
    app: web.Application,
    state: SimulatorState,
    settings: SimulatorConfig,
    url: str,
    key: Ed25519PrivateKey,
    record: dict[str, Any],
    event: _Event,
) -> None:
    """POST one signed webhook event."""
    event_id = str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
    occurred = time.time()
    data = {
        "event_type": event.event_type,
        "id": event_id,
        "occurred_at": _iso(occurred),
        "payload": _event_payload(record, event, occurred),
        "record_type": "event",
    }
    attempts = itertools.count(1)

    def request(session: aiohttp.ClientSession) -> Opened:
        # Each try is a new request: its own attempt number, timestamp and signature.
        meta = {"attempt": next(attempts), "delivered_to": url}
        body = json.dumps({"data": data, "meta": meta}).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": JSON,
            SIGNATURE_HEADER: sign(key, stamp, body),
            TIMESTAMP_HEADER: stamp,
        }
        return session.post(url, data=body, headers=headers)

    await _REPORTER.post(app, state.stats, settings, request, f"message_id={record['id']}")


def dev_key_pair() -> tuple[str, str]:
    """DEV_PRIVATE_KEY and DEV_PUBLIC_KEY recomputed from DEV_KEY_SEED (for the tests)."""
    seed = base64.b64encode(hashlib.sha256(DEV_KEY_SEED).digest()).decode("ascii")
    return seed, public_key_for(seed)
