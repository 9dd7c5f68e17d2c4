"""HTTP API: parse requests, call the service, render resources and problem+json errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dispatchd.errors import StoreUnavailable
from dispatchd.models import REPORT_STATUSES, DeliveryReport, Message, Status, isoformat
from dispatchd.numbers import NumberError, to_e164
from dispatchd.openapi import openapi_document
from dispatchd.service import (
    BadToken,
    FieldError,
    NumberSuppressed,
    Service,
    UnknownMessage,
    ValidationFailed,
)

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
PROBLEM_TYPE = "https://dispatchd.dev/problems/"
RETRY_AFTER_SECONDS = 5
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500


@dataclass(frozen=True, slots=True)
class WebDeps:
    """What the HTTP layer needs from the rest of the daemon."""

    service: Service
    default_region: str
    ready: Callable[[], str | None]  # None when ready, else the reason it is not


DEPS = web.AppKey("deps", WebDeps)


class Problem(Exception):
    """An RFC 9457 problem to send back instead of the normal response."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.errors = errors
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors is not None:
            body["errors"] = [
                {"field": e.field, "code": e.code, "message": e.message} for e in self.errors
            ]
        return web.Response(
            status=self.status,
            text=json.dumps(body),
            content_type="application/problem+json",
            headers=self.headers,
        )


def _validation(errors: list[FieldError]) -> Problem:
    return Problem(
        422,
        "validation_failed",
        "The request has invalid fields",
        " ".join(e.message for e in errors),
        errors=errors,
    )


_HTTP_PROBLEMS = {
    404: ("not_found", "Not found", "There is nothing at this URL."),
    405: ("method_not_allowed", "Method not allowed", "This URL does not accept that method."),
    413: (
        "payload_too_large",
        "Request body too large",
        f"The request body is larger than {MAX_BODY // 1024} KiB.",
    ),
}


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every error into problem+json; never let a traceback reach the client."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response()
    except StoreUnavailable as exc:
        return Problem(
            503,
            "storage_unavailable",
            "Storage unavailable",
            f"The message store cannot take writes right now ({exc.message}); try again shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title, detail = _HTTP_PROBLEMS.get(
            exc.status, (f"http_{exc.status}", exc.reason, exc.text or exc.reason)
        )
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return Problem(exc.status, code, title, detail, headers=headers).response()
    except Exception:
        logger.exception("event=internal_error path=%s", request.path)
        return Problem(
            500,
            "internal_error",
            "Internal error",
            "dispatchd hit an unexpected error; it has been logged.",
        ).response()


# -- rendering ----------------------------------------------------------------------------


def message_resource(msg: Message, *, detailed: bool = False) -> dict[str, Any]:
    """The public JSON shape of a message."""
    error = (
        {"code": msg.error_code, "detail": msg.error_detail} if msg.error_code is not None else None
    )
    out: dict[str, Any] = {
        "id": msg.id,
        "to_number": msg.to_number,
        "message": msg.body,
        "status": msg.status.value,
        "segments": msg.segments,
        "encoding": msg.encoding,
        "provider": msg.provider,
        "provider_message_id": msg.provider_message_id,
        "error": error,
        "created_at": isoformat(msg.created_at),
        "updated_at": isoformat(msg.updated_at),
        "next_attempt_at": isoformat(msg.next_attempt_at) if msg.status is Status.QUEUED else None,
    }
    if detailed:
        out["attempts"] = [
            {
                "provider": a.provider,
                "started_at": isoformat(a.started_at),
                "outcome": a.outcome.value,
                "http_status": a.http_status,
                "latency_ms": a.latency_ms,
                "error": a.error,
            }
            for a in msg.attempts
        ]
        out["history"] = [
            {"status": h.status.value, "at": isoformat(h.at), "detail": h.detail}
            for h in msg.history
        ]
    return out


# -- parsing ------------------------------------------------------------------------------


async def _read_fields(request: web.Request) -> Mapping[str, Any]:
    """The request body as a mapping, from JSON or a form; Problem for anything else."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    ctype = request.content_type
    if ctype == "application/x-www-form-urlencoded":
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise Problem(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            f"Send the body as application/json or application/x-www-form-urlencoded, not {ctype}.",
        )
    raw = await request.read()
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise _malformed("The body is not valid UTF-8.") from exc
    except ValueError as exc:
        raise _malformed(f"The body is not valid JSON ({exc}).") from exc
    except RecursionError as exc:
        raise _malformed("The body's JSON is nested too deeply.") from exc
    if not isinstance(data, dict):
        raise _malformed("The body must be a JSON object.")
    return data


def _malformed(detail: str) -> Problem:
    return Problem(400, "malformed_request", "Malformed request", detail)


# -- handlers -----------------------------------------------------------------------------


async def post_message(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    fields = await _read_fields(request)
    try:
        send = service.validate(fields)
        msg = await service.accept(send)
    except ValidationFailed as exc:
        raise _validation(exc.errors) from exc
    except NumberSuppressed as exc:
        raise Problem(422, "number_suppressed", "Number suppressed", exc.message) from exc
    return web.json_response(
        message_resource(msg), status=202, headers={"Location": f"/messages/{msg.id}"}
    )


async def get_message(request: web.Request) -> web.Response:
    msg = await request.app[DEPS].service.store.get(request.match_info["id"])
    if msg is None:
        raise _no_such_message(request.match_info["id"])
    return web.json_response(message_resource(msg, detailed=True))


def _no_such_message(msg_id: str) -> Problem:
    return Problem(404, "message_not_found", "Message not found", f"No message has id {msg_id!r}.")


def _list_params(request: web.Request) -> tuple[str | None, Status | None, int, str | None]:
    deps = request.app[DEPS]
    q = request.query
    errors: list[FieldError] = []
    number = q.get("to_number") or None
    if number is not None:
        try:
            number = to_e164(number, deps.default_region)
        except NumberError as exc:
            errors.append(FieldError("to_number", exc.code, exc.message))
    status = None
    if q.get("status"):
        try:
            status = Status(q["status"])
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            errors.append(
                FieldError("status", "invalid_choice", f"status must be one of {choices}.")
            )
    limit = LIST_LIMIT_DEFAULT
    if q.get("limit"):
        raw = q["limit"]
        # isdecimal, not isdigit: int() rejects "²"; the length cap keeps int() from
        # refusing (ValueError) a string of thousands of digits. Either was a 500.
        if not raw.isdecimal() or len(raw) > 9 or not 1 <= int(raw) <= LIST_LIMIT_MAX:
            errors.append(
                FieldError(
                    "limit",
                    "out_of_range",
                    f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}.",
                )
            )
        else:
            limit = int(raw)
    if errors:
        raise _validation(errors)
    return number, status, limit, q.get("cursor") or None


async def list_messages(request: web.Request) -> web.Response:
    number, status, limit, cursor = _list_params(request)
    items = await request.app[DEPS].service.store.search(
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


async def _read_report(request: web.Request) -> DeliveryReport:
    fields = await _read_fields(request)
    errors: list[FieldError] = []
    status = fields.get("status")
    pmid = fields.get("message_id")
    allowed = sorted(s.value for s in REPORT_STATUSES)
    if not isinstance(status, str) or status not in allowed:
        errors.append(
            FieldError("status", "invalid_choice", f"status must be one of {', '.join(allowed)}.")
        )
    if not isinstance(pmid, str) or not pmid:
        errors.append(FieldError("message_id", "missing", "message_id must be a non-empty string."))
    if errors or not isinstance(status, str) or not isinstance(pmid, str):
        raise _validation(errors)
    return DeliveryReport(Status(status), pmid)


def _unauthorized() -> Problem:
    return Problem(
        401,
        "invalid_token",
        "Invalid callback token",
        "The token in the callback URL is missing or wrong; nothing was changed.",
    )


async def delivery_status(request: web.Request) -> web.Response:
    report = await _read_report(request)
    msg_id = request.match_info["id"]
    try:
        await request.app[DEPS].service.report(msg_id, report, request.query.get("token"))
    except BadToken as exc:
        raise _unauthorized() from exc
    except UnknownMessage as exc:
        raise _no_such_message(msg_id) from exc
    return web.Response(status=204)


async def seed_delivery_status(request: web.Request) -> web.Response:
    report = await _read_report(request)
    try:
        await request.app[DEPS].service.report_by_provider_id(report, request.query.get("token"))
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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    reason = request.app[DEPS].ready()
    if reason is not None:
        raise Problem(
            503, "not_ready", "Not ready", reason, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return web.json_response({"status": "ready"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def make_app(deps: WebDeps) -> web.Application:
    """The dispatchd HTTP API."""
    app = web.Application(middlewares=[problem_middleware], client_max_size=MAX_BODY)
    app[DEPS] = deps
    r = app.router
    r.add_post("/messages", post_message)
    r.add_get("/messages", list_messages)
    r.add_post("/messages/delivery_status", seed_delivery_status)
    r.add_get("/messages/{id}", get_message)
    r.add_post("/messages/{id}/delivery_status", delivery_status)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/openapi.json", openapi)
    return app
