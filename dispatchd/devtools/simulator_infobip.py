"""The simulator's Infobip dialect: SMS API v3 and its batched delivery reports.

`POST /infobip/sms/3/messages` (so `{public_url}/simulator/infobip` is the provider's
`url`, standing in for the account's Base URL) checks `Authorization: App <api key>`
against the configured keys and answers as Infobip's API reference shows: 401 E401 for a
missing or unknown key, 400 E400 with `violations` for a request that breaks the schema,
and a 200 `{"bulkId", "messages": [...]}` with one PENDING_ACCEPTED entry per destination
(every destination of every message is its own message, with its own `messageId`). A
destination that is not a plausible international number is answered REJECTED_DESTINATION
and a text over 25 parts REJECTED_MESSAGE_TOO_LONG, in the 200 as Infobip does; neither is
reported later (what Infobip does then is not documented).

Faults, keyed by the name `infobip`: `down` answers 503, `hang_rate` leaves the request
open, `throttle_rate` answers Infobip's documented 429 E429, `failure_rate` 500 E500,
`latency` delays the answer and `malformed_rate` cuts the 200 short (reports still follow).

Reports: JSON `{"results": [...]}` POSTed to each message's `webhooks.delivery.url`
(nothing when it has none or `notify` is false), the final status per destination:
DELIVERED_TO_HANDSET; UNDELIVERABLE_NOT_DELIVERED with EC_ABSENT_SUBSCRIBER for a
failure; UNDELIVERABLE_NOT_DELIVERED with EC_UNKNOWN_SUBSCRIBER (which the infobip kind
maps to `invalid`) for numbers ending in `invalid_suffix`. With `intermediateReport` a
delivered message is first reported DELIVERED_TO_OPERATOR. Results for the same URL go
out batched, as Infobip batches them: the destinations of one request together, and a
`duplicate_callback_rate` duplicate in the same POST as the report it repeats. A contrary
report (`out_of_order_rate`) comes in the POST before; `early_callback_rate` posts the
first batch before answering; `callback_retry_for` retries a POST the receiver did not
take (no connection or 5xx). Infobip signs no delivery report, so none is signed here.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.callbacks import Reporter
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.domain.encoding import segment
from dispatchd.providers.infobip import AUTH_SCHEME, CALLBACK_DATA_MAX, JSON, SEND_PATH

logger = logging.getLogger(__name__)

NAME = "infobip"
ROUTE = f"/{NAME}{SEND_PATH}"
DEFAULT_SENDER = "InfoSMS"  # the shared test sender Infobip's quickstart names
MAX_PARTS = 25  # REJECTED_MESSAGE_TOO_LONG: "more than 25 parts"
TIME_UNITS = frozenset({"SECONDS", "MINUTES", "HOURS"})
CONTENT_TYPES = frozenset({JSON, "application/xml"})
PRICE = {"pricePerMessage": 0.01, "currency": "EUR"}
_NUMBER = re.compile(r"\+?[1-9][0-9]{6,14}")

# Status and error objects as Infobip's API reference and status/error code pages give them.
PENDING_ACCEPTED = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 26,
    "name": "PENDING_ACCEPTED",
    "description": "Message sent to next instance",
}
REJECTED_DESTINATION = {
    "groupId": 5,
    "groupName": "REJECTED",
    "id": 52,
    "name": "REJECTED_DESTINATION",
    "description": "Invalid destination address",
}
REJECTED_MESSAGE_TOO_LONG = {
    "groupId": 5,
    "groupName": "REJECTED",
    "id": 25,
    "name": "REJECTED_MESSAGE_TOO_LONG",
    "description": "Message too long",
}
NO_ERROR = {
    "groupId": 0,
    "groupName": "OK",
    "id": 0,
    "name": "NO_ERROR",
    "description": "No Error",
    "permanent": False,
}
_DELIVERED_TO_HANDSET = {
    "groupId": 3,
    "groupName": "DELIVERED",
    "id": 5,
    "name": "DELIVERED_TO_HANDSET",
    "description": "Message delivered to handset",
}
_DELIVERED_TO_OPERATOR = {
    "groupId": 3,
    "groupName": "DELIVERED",
    "id": 2,
    "name": "DELIVERED_TO_OPERATOR",
    "description": "Message delivered to operator",
}
_NOT_DELIVERED = {
    "groupId": 2,
    "groupName": "UNDELIVERABLE",
    "id": 9,
    "name": "UNDELIVERABLE_NOT_DELIVERED",
    "description": "Message sent not delivered",
}
# dispatchd's plan statuses as Infobip reports them (status, error). EC_UNKNOWN_SUBSCRIBER
# is in the kind's INVALID_NUMBER_ERRORS, EC_ABSENT_SUBSCRIBER is not.
REPORTS: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {
    "delivered": (_DELIVERED_TO_HANDSET, NO_ERROR),
    "operator": (_DELIVERED_TO_OPERATOR, NO_ERROR),
    "failed": (
        _NOT_DELIVERED,
        {
            "groupId": 1,
            "groupName": "HANDSET_ERRORS",
            "id": 27,
            "name": "EC_ABSENT_SUBSCRIBER",
            "description": "Absent Subscriber",
            "permanent": False,
        },
    ),
    "invalid": (
        _NOT_DELIVERED,
        {
            "groupId": 1,
            "groupName": "HANDSET_ERRORS",
            "id": 1,
            "name": "EC_UNKNOWN_SUBSCRIBER",
            "description": "Unknown Subscriber",
            "permanent": True,
        },
    ),
}

# Records one violation: the property's path under its message, and what is wrong.
_Bad = Callable[[str, str], None]

_REPORTER = Reporter(logger, NAME)
CALLBACKS = _REPORTER.callbacks


@dataclass(frozen=True, slots=True)
class _Message:
    """One message of a valid request: its destinations share everything else."""

    sender: str | None
    destinations: tuple[str, ...]
    text: str
    url: str | None  # webhooks.delivery.url, None when no report is wanted
    intermediate: bool
    callback_data: str | None


@dataclass(frozen=True, slots=True)
class _Accepted:
    """One destination Infobip took, with what its reports need."""

    message_id: str
    to: str
    message: _Message
    parts: int


@dataclass
class _Plan:
    """The report batches of one request for one URL, in the order they are sent."""

    url: str
    rounds: list[list[dict[str, Any]]] = field(default_factory=list)


def add_infobip_routes(
    app: web.Application, state: SimulatorState, accounts: Collection[str]
) -> None:
    """Serve Infobip's SMS API v3 on `app` for these API keys (a set, or a mapping's keys)."""
    dialect = _Dialect(state, frozenset(accounts))
    _REPORTER.install(app)
    app.router.add_post(ROUTE, dialect.send)


def infobip_error(
    status: int,
    code: str,
    description: str,
    action: str,
    violations: list[dict[str, str]] | None = None,
    resources: list[dict[str, str]] | None = None,
) -> web.Response:
    """An answer in Infobip's ApiError format."""
    body = {
        "errorCode": code,
        "description": description,
        "action": action,
        "violations": violations or [],
        "resources": resources or [],
    }
    return web.json_response(body, status=status)


def unauthorized() -> web.Response:
    return infobip_error(
        401,
        "E401",
        "The request lacks valid authentication credentials for the requested resource.",
        "Check the resources and adjust authentication credentials.",
        resources=[
            {
                "name": "API Authentication",
                "url": "https://www.infobip.com/docs/essentials/api-authentication",
            }
        ],
    )


def bad_request(violations: list[dict[str, str]]) -> web.Response:
    return infobip_error(
        400,
        "E400",
        "Request cannot be processed.",
        "Check the syntax, violations and adjust the request.",
        violations,
    )


def too_many_requests() -> web.Response:
    return infobip_error(
        429,
        "E429",
        "Too many requests sent.",
        "Check request rate limit specified in the API endpoint documentation resource.",
        resources=[
            {
                "name": "Throttling handling errors",
                "url": "/docs/developer-resources/api-fundamentals/rate-limits-and-throttling",
            }
        ],
    )


def server_error(status: int = 500) -> web.Response:
    # The API reference documents E500; a 503 (the simulator's `down`) is shaped alike.
    code = "E500" if status == 500 else f"E{status}"
    return infobip_error(status, code, "Something went wrong.", "Contact the support.")


class _Dialect:
    def __init__(self, state: SimulatorState, keys: frozenset[str]) -> None:
        self._state = state
        self._keys = tuple(k.encode() for k in keys)

    async def send(self, request: web.Request) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        if not self._authenticated(request.headers.get("Authorization", "")):
            counts.bad_requests += 1
            return unauthorized()
        messages = _read_send(await request.read())
        if isinstance(messages, web.Response):
            counts.bad_requests += 1
            return messages
        counts.requests += 1
        settings = state.settings_for(NAME)
        if state.is_down(NAME, settings):
            counts.down += 1
            return server_error(503)
        if state.chance(settings.hang_rate):
            counts.hung += 1
            await _REPORTER.hang(request)
            return server_error(503)
        if state.chance(settings.throttle_rate):
            counts.throttled += 1
            return too_many_requests()
        if settings.latency:
            await asyncio.sleep(settings.latency)
        if state.chance(settings.failure_rate):
            counts.errors += 1
            return server_error()
        return await self._accept(request.app, messages, settings)

    def _authenticated(self, header: str) -> bool:
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != AUTH_SCHEME.lower() or not key.strip():
            return False
        given = key.strip().encode("utf-8", "replace")
        # Every key is compared, in constant time, so a probe learns nothing from timing.
        return sum(hmac.compare_digest(given, k) for k in self._keys) > 0

    async def _accept(
        self, app: web.Application, messages: list[_Message], settings: SimulatorConfig
    ) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        bulk_id = str(state.rng.getrandbits(63))
        answers: list[dict[str, Any]] = []
        taken: list[_Accepted] = []
        for message in messages:
            parts = segment(message.text).segments
            for to in message.destinations:
                message_id = str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
                status = _refusal(to, parts)
                answers.append(
                    {
                        "messageId": message_id,
                        "status": status or PENDING_ACCEPTED,
                        "destination": to,
                        "details": {"messageCount": parts},
                    }
                )
                if status is not None:
                    continue
                counts.accepted += 1
                state.stats.count_pair("+" + to, message.text)
                if state.keep_received:
                    state.received.append(
                        {
                            "provider": NAME,
                            "to_number": "+" + to,
                            "message": message.text,
                            "message_id": message_id,
                        }
                    )
                taken.append(_Accepted(message_id, to, message, parts))
        malformed = state.chance(settings.malformed_rate)
        plans = _plans(state, bulk_id, taken, settings)
        if plans and state.chance(settings.early_callback_rate):
            for plan in plans:
                await _post(app, state, settings, plan.url, plan.rounds.pop(0))
        name = f"simulator-infobip-reports-{bulk_id}"
        for plan in plans:
            post = functools.partial(_post, app, state, settings, plan.url)
            _REPORTER.schedule(app, name, settings, plan.rounds, post)
        if malformed:
            counts.malformed += 1
            # Cut short mid-string, as a proxy that dropped the connection would leave it.
            return web.Response(status=200, text='{"bulkId": "' + bulk_id[:6], content_type=JSON)
        return web.json_response({"bulkId": bulk_id, "messages": answers})


def _refusal(to: str, parts: int) -> dict[str, Any] | None:
    """The REJECTED status Infobip answers in the 200 for this destination, if any."""
    if not _NUMBER.fullmatch(to):
        return REJECTED_DESTINATION
    if parts > MAX_PARTS:
        return REJECTED_MESSAGE_TOO_LONG
    return None


def _plans(
    state: SimulatorState, bulk_id: str, taken: list[_Accepted], settings: SimulatorConfig
) -> list[_Plan]:
    """Every URL's report batches: round r holds each destination's r-th batch."""
    plans: dict[str, _Plan] = {}
    for item in taken:
        url = item.message.url
        if url is None:
            continue
        statuses = state.plan_reports("+" + item.to, settings)
        if item.message.intermediate and statuses[-1] == "delivered":
            statuses.insert(0, "operator")
        # A duplicate repeats the report before it: both go in one POST, as a batch.
        batches = [
            [_result(bulk_id, item, status) for status in group] for _, group in groupby(statuses)
        ]
        plan = plans.setdefault(url, _Plan(url))
        for i, batch in enumerate(batches):
            if i < len(plan.rounds):
                plan.rounds[i].extend(batch)
            else:
                plan.rounds.append(batch)
    return list(plans.values())


def _result(bulk_id: str, item: _Accepted, status: str) -> dict[str, Any]:
    """One `results` entry, as the API reference's delivery report example has it."""
    state, error = REPORTS[status]
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())
    result: dict[str, Any] = {
        "bulkId": bulk_id,
        "price": dict(PRICE),
        "status": dict(state),
        "error": dict(error),
        "messageId": item.message_id,
        "to": item.to,
        "sender": item.message.sender or DEFAULT_SENDER,
        "sentAt": now,
        "doneAt": now,
        "messageCount": item.parts,
    }
    if item.message.callback_data is not None:
        result["callbackData"] = item.message.callback_data
    return result


def _read_send(body: bytes) -> list[_Message] | web.Response:
    """The request's messages, or Infobip's 400 listing what is wrong with them."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return bad_request([{"property": "", "violation": "Malformed JSON request body."}])
    raw = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        return bad_request([{"property": "messages", "violation": "must not be empty"}])
    violations: list[dict[str, str]] = []
    messages: list[_Message] = []
    for i, item in enumerate(raw):
        found = _read_message(f"messages[{i}]", item, violations)
        if found is not None:
            messages.append(found)
    if violations:
        return bad_request(violations)
    return messages


def _read_message(path: str, item: Any, violations: list[dict[str, str]]) -> _Message | None:
    def bad(prop: str, violation: str) -> None:
        violations.append({"property": f"{path}.{prop}" if prop else path, "violation": violation})

    if not isinstance(item, dict):
        bad("", "must be an object")
        return None
    before = len(violations)
    sender = item.get("sender")
    if sender is not None and (not isinstance(sender, str) or not sender.strip()):
        bad("sender", "must be a non-blank string")
    destinations = _destinations(item.get("destinations"), bad)
    content = item.get("content")
    text = content.get("text") if isinstance(content, dict) else None
    if not isinstance(text, str) or not text:
        bad("content.text", "must not be blank")
        text = ""
    _check_options(item.get("options"), bad)
    url, intermediate, callback_data = _webhooks(item.get("webhooks"), bad)
    if len(violations) > before:
        return None
    return _Message(sender, destinations, text, url, intermediate, callback_data)


def _destinations(value: Any, bad: _Bad) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        bad("destinations", "must not be empty")
        return ()
    found: list[str] = []
    for j, dest in enumerate(value):
        to = dest.get("to") if isinstance(dest, dict) else None
        if not isinstance(to, str) or not to.strip() or len(to) > 64:
            bad(f"destinations[{j}].to", "must not be blank and at most 64 characters")
        else:
            found.append(to.strip().removeprefix("+"))
    return tuple(found)


def _check_options(options: Any, bad: _Bad) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        bad("options", "must be an object")
        return
    validity = options.get("validityPeriod")
    if validity is None:
        return
    amount = validity.get("amount") if isinstance(validity, dict) else None
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
        bad("options.validityPeriod.amount", "must be a positive integer")
    unit = validity.get("timeUnit", "MINUTES") if isinstance(validity, dict) else None
    if unit not in TIME_UNITS:
        bad("options.validityPeriod.timeUnit", "must be one of SECONDS, MINUTES, HOURS")


def _webhooks(webhooks: Any, bad: _Bad) -> tuple[str | None, bool, str | None]:
    """webhooks.delivery.url (None: no report wanted), intermediateReport, callbackData."""
    if webhooks is None:
        return None, False, None
    if not isinstance(webhooks, dict):
        bad("webhooks", "must be an object")
        return None, False, None
    delivery = webhooks.get("delivery") or {}
    if not isinstance(delivery, dict):
        bad("webhooks.delivery", "must be an object")
        return None, False, None
    url = delivery.get("url")
    if url is not None and not (isinstance(url, str) and _is_http_url(url)):
        # Not echoed: a report URL carries dispatchd's per-message token.
        bad("webhooks.delivery.url", "must be a valid http(s) URL")
    content_type = webhooks.get("contentType")
    if content_type is not None and content_type not in CONTENT_TYPES:
        bad("webhooks.contentType", "must be application/json or application/xml")
    data = webhooks.get("callbackData")
    if data is not None and (not isinstance(data, str) or len(data) > CALLBACK_DATA_MAX):
        bad("webhooks.callbackData", f"must be a string of at most {CALLBACK_DATA_MAX} characters")
    wanted = delivery.get("notify", True) is not False and isinstance(url, str)
    intermediate = delivery.get("intermediateReport") is True
    return (url if wanted else None), intermediate, (data if isinstance(data, str) else None)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


async def _post(
    app: web.Application,
    state: SimulatorState,
    settings: SimulatorConfig,
    url: str,
    results: list[dict[str, Any]],
) -> None:
    """POST one batch of results."""
    body = json.dumps({"results": results}).encode()
    headers = {"Content-Type": JSON}
    await _REPORTER.post(
        app,
        state.stats,
        settings,
        lambda session: session.post(url, data=body, headers=headers),
        "message_ids=" + ",".join(r["messageId"] for r in results),
    )
