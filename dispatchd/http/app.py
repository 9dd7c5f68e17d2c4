"""HTTP API: the app factory and route table, problem+json errors, and the small handlers.

The rest of the HTTP layer lives beside it, one job a module: `deps` (WebDeps and the
app keys), `bodies` (reading, parsing and validating request bodies), `resources` (the
JSON renderings), `batches` (POST /messages/batch) and `live` (long polling and SSE).
GUARD, ConnectionGuard, make_runner, Problem, PROBLEM_TYPE, WebDeps, MAX_BODY and
message_resource are re-exported so callers of the HTTP layer need only this module;
tests that monkeypatch a constant patch it in the module that reads it.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from dispatchd.domain.errors import (
    BadToken,
    FieldError,
    UnknownMessage,
)
from dispatchd.domain.models import Message, Status
from dispatchd.domain.numbers import NumberError, to_e164
from dispatchd.http.auth import METRICS_PATH, OPEN_PATHS, auth_middleware
from dispatchd.http.batches import post_batch
from dispatchd.http.bodies import (
    MAX_BATCH_BODY,
    MAX_BODY,
    read_body,
    read_report,
    read_send_fields,
    status_param,
    whole_number,
)
from dispatchd.http.connections import GUARD, ConnectionGuard, make_runner
from dispatchd.http.deps import DEPS, WebDeps
from dispatchd.http.idempotency import Rendered
from dispatchd.http.live import get_message, message_events
from dispatchd.http.middleware import RETRY_AFTER_SECONDS, problem_middleware
from dispatchd.http.openapi import openapi_document
from dispatchd.http.problems import PROBLEM_TYPE, Problem, validation
from dispatchd.http.resources import message_resource, no_such_message
from dispatchd.metrics import metrics_response
from dispatchd.providers.base import BadReport, ForgedReport, IncomingReport

logger = logging.getLogger(__name__)

__all__ = [
    "GUARD",
    "MAX_BODY",
    "PROBLEM_TYPE",
    "ConnectionGuard",
    "Problem",
    "WebDeps",
    "make_app",
    "make_runner",
    "message_resource",
    "problem_middleware",
]

LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500


# -- handlers -----------------------------------------------------------------------------


async def post_message(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    fields = await read_send_fields(request)
    async with deps.idempotency.request(request, fields) as idem:
        if idem.replay is not None:
            return idem.replay
        msg = deps.service.prepare(deps.service.validate(fields))
        rendered = _accepted(msg)
        await deps.service.accept([msg], idem.save(rendered))
        return rendered.response()


def _accepted(msg: Message) -> Rendered:
    """The 202 of a new message (the same bytes web.json_response would send)."""
    return Rendered(202, json.dumps(message_resource(msg)), f"/messages/{msg.id}")


def _list_params(request: web.Request) -> tuple[str | None, Status | None, int, str | None]:
    deps = request.app[DEPS]
    q = request.query
    errors: list[FieldError] = []
    # A parameter that is present is checked, even when empty: `status=` is not a status.
    number = q.get("to_number")
    if number is not None:
        try:
            number = to_e164(number, deps.default_region)
        except NumberError as exc:
            errors.append(FieldError("to_number", exc.code, exc.message))
    status = status_param(q, errors)
    limit = LIST_LIMIT_DEFAULT
    if "limit" in q:
        value = whole_number(q["limit"])
        if value is None or not 1 <= value <= LIST_LIMIT_MAX:
            errors.append(
                FieldError(
                    "limit",
                    "out_of_range",
                    f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}.",
                )
            )
        else:
            limit = value
    if errors:
        raise validation(errors)
    return number, status, limit, q.get("cursor") or None


async def list_messages(request: web.Request) -> web.Response:
    number, status, limit, cursor = _list_params(request)
    items = await request.app[DEPS].service.search(
        to_number=number, status=status, limit=limit + 1, cursor=cursor
    )
    more = len(items) > limit
    items = items[:limit]
    return web.json_response(
        {
            "items": [message_resource(m) for m in items],
            "next_cursor": items[-1].id if more else None,
        }
    )


def _token(request: web.Request) -> str | None:
    """The callback token; a non-ASCII one (never issued) reads as empty, so it gets 401."""
    token = request.query.get("token")
    # hmac.compare_digest raises TypeError on non-ASCII str: that was a 500.
    return token if token is None or token.isascii() else ""


def _unauthorized() -> Problem:
    return Problem(
        401,
        "invalid_token",
        "Invalid callback token",
        "The token in the callback URL is missing or wrong; nothing was changed.",
    )


async def delivery_status(request: web.Request) -> web.Response:
    report = await read_report(request)
    msg_id = request.match_info["id"]
    try:
        await request.app[DEPS].service.report(msg_id, report, _token(request))
    except BadToken as exc:
        raise _unauthorized() from exc
    except UnknownMessage as exc:
        raise no_such_message(msg_id) from exc
    return web.Response(status=204)


async def seed_delivery_status(request: web.Request) -> web.Response:
    report = await read_report(request)
    try:
        await request.app[DEPS].service.report_by_provider_id(report, _token(request))
    except BadToken as exc:
        raise _unauthorized() from exc
    except UnknownMessage as exc:
        raise Problem(
            404,
            "message_not_found",
            "Message not found",
            f"No message has provider message id {report.provider_message_id!r}.",
        ) from exc
    return web.Response(status=204)


async def provider_reports(request: web.Request) -> web.Response:
    """Reports in a provider's own format: per message (`?message=&token=`) or sent to one
    account- or application-level URL; the provider's signature is verified either way."""
    deps = request.app[DEPS]
    name = request.match_info["name"]
    body = await read_body(request)
    incoming = IncomingReport(
        # As the provider called it: the signature covers the URL it was given.
        url=deps.public_url + request.raw_path,
        headers=request.headers,
        body=body,
        content_type=request.content_type,
    )
    msg_id = request.query.get("message")
    try:
        await deps.service.provider_reports(name, incoming, msg_id, _token(request))
    except BadToken as exc:
        raise _unauthorized() from exc
    except ForgedReport as exc:
        raise Problem(403, "invalid_signature", "Invalid report signature", exc.message) from exc
    except BadReport as exc:
        raise Problem(400, "malformed_report", "Malformed report", exc.message) from exc
    except UnknownMessage as exc:
        raise Problem(404, "message_not_found", "Message not found", exc.message) from exc
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    reason = request.app[DEPS].ready()
    if reason is not None:
        raise Problem(
            503, "not_ready", "Not ready", reason, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    source = request.app[DEPS].metrics
    if source is None:
        raise web.HTTPNotFound()
    return await metrics_response(source)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def _end_watches(app: web.Application) -> None:
    # Runs before the server waits for in-flight requests: event streams and long polls
    # would otherwise hold a graceful shutdown for its whole timeout.
    app[DEPS].watchers.close()


def make_app(deps: WebDeps) -> web.Application:
    """The dispatchd HTTP API."""
    guard = ConnectionGuard()
    middlewares: list[Middleware] = [guard.middleware, problem_middleware]
    if deps.keys.enabled:
        # Inside problem_middleware, which renders its 401.
        open_paths = OPEN_PATHS if deps.metrics_auth else OPEN_PATHS | {METRICS_PATH}
        middlewares.append(auth_middleware(deps.keys, open_paths))
    if deps.metrics is not None:
        # Outside problem_middleware, so it counts the status the client really gets.
        middlewares.insert(1, deps.metrics.middleware())
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BATCH_BODY)
    app[DEPS] = deps
    app[GUARD] = guard
    app.on_shutdown.append(_end_watches)
    r = app.router
    r.add_post("/messages", post_message)
    r.add_post("/messages/batch", post_batch)
    r.add_get("/messages", list_messages)
    r.add_post("/messages/delivery_status", seed_delivery_status)
    # Not `delivery_status`: that URL is the seed-compatible report route, POST only, and
    # matching it here made a GET answer 404 and its 405 advertise GET in `Allow`.
    # Nor `batch`, the POST-only batch route, for the same reason.
    r.add_get("/messages/{id:(?!(?:delivery_status|batch)$)[^/]+}", get_message)
    r.add_post("/messages/{id}/delivery_status", delivery_status)
    r.add_get("/messages/{id}/events", message_events)
    r.add_post("/providers/{name}/reports", provider_reports)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/openapi.json", openapi)
    r.add_get(METRICS_PATH, metrics)
    return app
