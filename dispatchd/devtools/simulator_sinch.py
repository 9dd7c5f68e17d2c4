"""The simulator's Sinch dialect: the SMS REST API's batches and its delivery report callbacks.

`POST /sinch/xms/v1/{service_plan_id}/batches` (under `/simulator/` on the daemon) answers
as Sinch does:
- `401` unless `Authorization: Bearer {api_token}` is the token of the path's service plan;
- `415` unless the body is `application/json` (these, and the faults' 429 / 5xx, are bare
  status answers: Sinch documents a JSON body only for 400 and 403);
- `400` `{"code", "text"}` with `syntax_invalid_json` (not a JSON object),
  `syntax_constraint_violation` (missing `to` / `from` / `body`, 1 to 1000 recipients, a body
  over 1600 characters, an unknown `type` or `delivery_report`, a `client_reference` over
  128 characters, an `expire_at` not in the next 3 days) or
  `syntax_invalid_parameter_format` (a recipient or sender that is no MSISDN, short code or
  alphanumeric, a bad `callback_url` or `expire_at`);
- `403` `missing_callback_url` when a report is asked for without a `callback_url` (the
  simulator has no service-plan default), `unknown_group` for a group id in `to`;
- `201` with the batch object: the request's fields, the recipients as MSISDNs without `+`,
  `id` (a ULID), `created_at`, `modified_at`, `canceled`.

Fault injection reads the `[simulator]` settings for the name `sinch` (`PUT /_faults/sinch`):
`down` (and its window / flap) answers `503`, `hang_rate` leaves the request unanswered,
`throttle_rate` answers `429`, `failure_rate` answers `500`, `latency` delays the answer,
`malformed_rate` cuts the 201 body short. After a 201, `callback_delay` seconds later, it
POSTs JSON delivery reports (unsigned, as Sinch's are by default) to `callback_url`:
with `per_recipient` a `Dispatched` (code 401) then the final one, with
`per_recipient_final` the final one only (`Delivered` code 0; `Aborted` code 404, a
temporary failure, for a failure; `Deleted` for numbers ending in `invalid_suffix`, which
the sinch kind maps to `invalid`), with `summary` / `full` one `delivery_report_sms`.
`out_of_order_rate`, `duplicate_callback_rate`, `early_callback_rate` (the final report
before the 201) and `callback_retry_for` work as in the other dialects; a report is retried
after a 5xx or a 429, as Sinch does, and not after another 4xx.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from dispatchd.config import SimulatorConfig
from dispatchd.devtools.callbacks import Reporter
from dispatchd.devtools.simulator import SimulatorState
from dispatchd.providers.sinch import VALIDITY_MAX

logger = logging.getLogger(__name__)

NAME = "sinch"
ROUTE = "/sinch/xms/v1/{service_plan_id}/batches"
BODY_MAX = 1600  # "Max 1600 chars for mt_text" (the batches endpoint's field table)
RECIPIENTS_MAX = 1000
CLIENT_REFERENCE_MAX = 128
CALLBACK_URL_MAX = 2048
DELIVERY_REPORTS = ("none", "summary", "full", "per_recipient", "per_recipient_final")
# dispatchd's `failed` / `invalid` as Sinch reports them; `Deleted` is the sinch kind's
# invalid status, `Aborted` 404 ("temporary delivery failure") is a plain failure. The code
# of a `Deleted` comes from the remote SMSC; 0 is what Sinch passes when it gave none.
FINAL_REPORTS: Mapping[str, tuple[str, int]] = {
    "delivered": ("Delivered", 0),
    "failed": ("Aborted", 404),
    "invalid": ("Deleted", 0),
}
DISPATCHED = ("Dispatched", 401)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_MSISDN = re.compile(r"\+?[1-9][0-9]{6,14}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_GROUP_ID = re.compile(r"[0-9A-Z]{26}")

_REPORTER = Reporter(logger, NAME)
CALLBACKS = _REPORTER.callbacks


@dataclass(frozen=True, slots=True)
class _Batch:
    """A valid batches request."""

    to: tuple[str, ...]  # MSISDNs without '+'
    from_: str
    body: str
    delivery_report: str
    callback_url: str | None
    client_reference: str | None
    expire_at: str | None


class _Refused(Exception):
    """A request Sinch answers with an error; `response` is that answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def add_sinch_routes(
    app: web.Application, state: SimulatorState, accounts: Mapping[str, str]
) -> None:
    """Serve Sinch's batches API on `app` for `accounts` (service_plan_id -> api_token)."""
    dialect = _Dialect(state, dict(accounts))
    _REPORTER.install(app)
    app.router.add_post(ROUTE, dialect.send)


def sinch_error(status: int, code: str, text: str) -> web.Response:
    """An answer in Sinch's `{"code", "text"}` error format."""
    return web.json_response({"code": code, "text": text}, status=status)


def batch_id(bits: int) -> str:
    """A 26-character ULID (Crockford base32) from 128 bits, the form of Sinch's batch ids."""
    return "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in reversed(range(26)))


def iso_now() -> str:
    """Now as Sinch writes timestamps: ISO-8601, milliseconds, UTC."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class _Dialect:
    def __init__(self, state: SimulatorState, accounts: dict[str, str]) -> None:
        self._state = state
        self._accounts = accounts

    async def send(self, request: web.Request) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        if not self._authenticated(request, request.match_info["service_plan_id"]):
            counts.bad_requests += 1
            # Sinch documents a body only for 400 and 403 (for a 401, "Authentication token
            # is invalid for this service plan"): the others are bare status answers.
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            batch = _read_batch(request.content_type, await request.read())
        except _Refused as refused:
            counts.bad_requests += 1
            return refused.response
        counts.requests += 1
        settings = state.settings_for(NAME)
        if state.is_down(NAME, settings):
            counts.down += 1
            return web.Response(status=503)
        if state.chance(settings.hang_rate):
            counts.hung += 1
            await _REPORTER.hang(request)
            return web.Response(status=503)
        if state.chance(settings.throttle_rate):
            counts.throttled += 1
            return web.Response(status=429)
        if settings.latency:
            await asyncio.sleep(settings.latency)
        if state.chance(settings.failure_rate):
            counts.errors += 1
            return web.Response(status=500)
        return await self._accept(request, batch, settings)

    def _authenticated(self, request: web.Request, service_plan_id: str) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = self._accounts.get(service_plan_id)
        if scheme.lower() != "bearer" or expected is None:
            return False
        # Compared in constant time so a probe learns nothing from timing.
        return hmac.compare_digest(token.strip().encode(), expected.encode())

    async def _accept(
        self, request: web.Request, batch: _Batch, settings: SimulatorConfig
    ) -> web.Response:
        state = self._state
        counts = state.stats.provider(NAME)
        ident = batch_id(state.rng.getrandbits(128))
        malformed = state.chance(settings.malformed_rate)
        counts.accepted += 1
        for msisdn in batch.to:
            state.stats.count_pair(f"+{msisdn}", batch.body)
            if state.keep_received:
                state.received.append(
                    {
                        "provider": NAME,
                        "to_number": f"+{msisdn}",
                        "message": batch.body,
                        "message_id": ident,
                    }
                )
        if batch.callback_url and batch.delivery_report != "none":
            name = f"simulator-sinch-callback-{ident}"
            for msisdn in batch.to:
                plan = [FINAL_REPORTS[s] for s in state.plan_reports(f"+{msisdn}", settings)]
                post = functools.partial(_post, request.app, state, settings, batch, ident, msisdn)
                if state.chance(settings.early_callback_rate):
                    await post(plan.pop(0))
                if batch.delivery_report == "per_recipient":
                    # Dispatched comes before the final status; after an early final it still
                    # comes, late, as intermediate reports can.
                    plan.insert(0, DISPATCHED)
                _REPORTER.schedule(request.app, name, settings, plan, post)
        if malformed:
            counts.malformed += 1
            # Cut short mid-string, as a proxy that dropped the connection would leave it.
            return web.Response(
                status=201, text='{"id": "' + ident[:10], content_type="application/json"
            )
        return web.json_response(_batch_object(ident, batch), status=201)


def _read_batch(content_type: str, raw: bytes) -> _Batch:
    """The request's fields; _Refused with Sinch's answer to what is wrong with them."""
    if content_type != "application/json":
        raise _Refused(web.Response(status=415))
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _Refused(
            sinch_error(400, "syntax_invalid_json", "The JSON in the request is invalid")
        )
    to = _recipients(data.get("to"))
    from_ = _sender(data.get("from"))
    body = data.get("body")
    if not isinstance(body, str):
        raise _violation("body is required")
    if len(body) > BODY_MAX:
        raise _violation(f"body is longer than {BODY_MAX} characters")
    if data.get("type", "mt_text") != "mt_text":
        raise _violation("only type mt_text is supported")
    delivery_report = data.get("delivery_report", "none")
    if delivery_report not in DELIVERY_REPORTS:
        raise _violation(f"delivery_report must be one of {', '.join(DELIVERY_REPORTS)}")
    callback_url = _callback_url(data.get("callback_url"))
    if delivery_report != "none" and callback_url is None:
        raise _Refused(
            sinch_error(403, "missing_callback_url", "Callback requested but no URL provided")
        )
    reference = data.get("client_reference")
    if reference is not None and (
        not isinstance(reference, str) or len(reference) > CLIENT_REFERENCE_MAX
    ):
        raise _violation(f"client_reference is longer than {CLIENT_REFERENCE_MAX} characters")
    expire_at = _expire_at(data.get("expire_at"))
    return _Batch(to, from_, body, delivery_report, callback_url, reference, expire_at)


def _violation(text: str) -> _Refused:
    return _Refused(sinch_error(400, "syntax_constraint_violation", text))


def _bad_format(text: str) -> _Refused:
    return _Refused(sinch_error(400, "syntax_invalid_parameter_format", text))


def _recipients(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= RECIPIENTS_MAX:
        raise _violation(f"to must hold 1 to {RECIPIENTS_MAX} recipients")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise _violation("to must hold strings")
        if _GROUP_ID.fullmatch(item):
            raise _Refused(sinch_error(403, "unknown_group", f"Unknown group: {item}"))
        if not _MSISDN.fullmatch(item):
            raise _bad_format(f"Invalid MSISDN in to: {item[:32]}")
        out.append(item.removeprefix("+"))
    return tuple(out)


def _sender(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _violation("from is required (no default originator is configured)")
    if not any(p.fullmatch(value) for p in (_MSISDN, _SHORT_CODE, _ALPHANUMERIC)):
        raise _bad_format(f"Invalid from: {value[:32]}")
    return value


def _callback_url(value: Any) -> str | None:
    if value is None:
        return None
    valid = isinstance(value, str) and len(value) <= CALLBACK_URL_MAX
    if valid:
        try:
            parts = urlsplit(value)
        except ValueError:
            valid = False
        else:
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    if not valid:
        # Not echoed: a report URL carries dispatchd's per-message token.
        raise _bad_format("callback_url is not a valid URL")
    return str(value)


def _expire_at(value: Any) -> str | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise _bad_format("expire_at is not an ISO-8601 timestamp") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = datetime.now(UTC)
    # A second of slack either way for the clocks of the sender and the simulator.
    if not now - timedelta(seconds=1) < moment <= now + timedelta(seconds=VALIDITY_MAX + 1):
        raise _violation("expire_at must be after send_at and at most 3 days after it")
    return str(value)


def _batch_object(ident: str, batch: _Batch) -> dict[str, Any]:
    now = iso_now()
    resource: dict[str, Any] = {
        "id": ident,
        "to": list(batch.to),
        "from": batch.from_,
        "canceled": False,
        "body": batch.body,
        "type": "mt_text",
        "created_at": now,
        "modified_at": now,
        "delivery_report": batch.delivery_report,
        "flash_message": False,
    }
    optional = {
        "callback_url": batch.callback_url,
        "client_reference": batch.client_reference,
        "expire_at": batch.expire_at,
    }
    resource.update({k: v for k, v in optional.items() if v is not None})
    return resource


def _payload(batch: _Batch, ident: str, msisdn: str, status: str, code: int) -> dict[str, Any]:
    """A report as Sinch posts it for this batch's `delivery_report` setting."""
    if batch.delivery_report in ("summary", "full"):
        entry: dict[str, Any] = {"code": code, "count": 1, "status": status}
        if batch.delivery_report == "full":
            entry["recipients"] = [msisdn]
        payload: dict[str, Any] = {
            "type": "delivery_report_sms",
            "batch_id": ident,
            "statuses": [entry],
            "total_message_count": 1,
        }
    else:
        at = iso_now()
        payload = {
            "type": "recipient_delivery_report_sms",
            "batch_id": ident,
            "recipient": msisdn,
            "code": code,
            "status": status,
            "at": at,
        }
        if (status, code) != DISPATCHED:
            payload["operator_status_at"] = at[:17] + "00Z"  # the SMSC's, to the minute
    if batch.client_reference is not None:
        payload["client_reference"] = batch.client_reference
    return payload


async def _post(
    app: web.Application,
    state: SimulatorState,
    settings: SimulatorConfig,
    batch: _Batch,
    ident: str,
    msisdn: str,
    report: tuple[str, int],
) -> None:
    """POST one delivery report; a 429 is retried like a 5xx, as Sinch does."""
    url = batch.callback_url
    assert url is not None  # only batches with a callback URL are reported
    status, code = report
    body = json.dumps(_payload(batch, ident, msisdn, status, code)).encode()
    headers = {"Content-Type": "application/json"}
    await _REPORTER.post(
        app,
        state.stats,
        settings,
        lambda session: session.post(url, data=body, headers=headers),
        f"batch_id={ident}",
        retried=(429,),
    )
