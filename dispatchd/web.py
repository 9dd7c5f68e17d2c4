"""HTTP API: parse requests, call the service, render resources and problem+json errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from dispatchd.connections import GUARD, ConnectionGuard, make_runner
from dispatchd.errors import StoreUnavailable
from dispatchd.models import REPORT_STATUSES, DeliveryReport, Message, Status, isoformat
from dispatchd.numbers import NumberError, to_e164
from dispatchd.openapi import openapi_document
from dispatchd.problems import PROBLEM_TYPE, Problem
from dispatchd.service import (
    BadToken,
    FieldError,
    NumberSuppressed,
    SendRequest,
    Service,
    UnknownMessage,
    ValidationFailed,
)

logger = logging.getLogger(__name__)

# GUARD, ConnectionGuard, make_runner, Problem and PROBLEM_TYPE live in `connections` and
# `problems`; re-exported so callers of the HTTP layer need only this module.
__all__ = ["GUARD", "PROBLEM_TYPE", "ConnectionGuard", "Problem", "make_app", "make_runner"]

MAX_BODY = 64 * 1024
RETRY_AFTER_SECONDS = 5
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500
# Seconds a client has to send the whole body once its headers are in (slow-body attacks).
BODY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class WebDeps:
    """What the HTTP layer needs from the rest of the daemon."""

    service: Service
    default_region: str
    ready: Callable[[], str | None]  # None when ready, else the reason it is not


DEPS = web.AppKey("deps", WebDeps)


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


FORM = "application/x-www-form-urlencoded"
SEND_FIELDS = ("to_number", "message")
# NUL and lone UTF-16 surrogates: a JSON string may hold them ("\\u0000", "\\ud800"), but a
# surrogate cannot be encoded as UTF-8 (SQLite refused it: a 500) and NUL is no SMS text
# (providers written in C cut the message there).
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


async def _read_fields(request: web.Request) -> Mapping[str, Any]:
    """The request body as a mapping, from JSON or a form; Problem for anything else."""
    ctype = request.content_type
    is_json = ctype == "application/json" or ctype.endswith("+json")
    if ctype != FORM and not is_json:
        raise Problem(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            f"Send the body as application/json or {FORM}, not {ctype}.",
        )
    raw = await _read_body(request)
    try:
        # Strictly UTF-8 whatever the charset parameter says (RFC 8259 and the URL standard
        # both require it); json.loads(bytes) would also take UTF-16 and encoded surrogates.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed("The body is not valid UTF-8.") from exc
    if not is_json:
        try:
            pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise _malformed("The form has a percent-encoded value that is not UTF-8.") from exc
        return dict(pairs)
    try:
        data = json.loads(text, parse_int=_json_number, parse_constant=_not_json)
    except RecursionError as exc:
        raise _malformed("The body's JSON is nested too deeply.") from exc
    except ValueError as exc:
        raise _malformed(f"The body is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise _malformed("The body must be a JSON object.")
    return data


async def _read_body(request: web.Request) -> bytes:
    """The raw body: at most MAX_BODY bytes, received within BODY_TIMEOUT, not compressed."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    coding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if coding not in ("", "identity"):
        # Compressed bodies are refused rather than inflated: 64 KiB of gzip can hold
        # gigabytes, and no client of this API needs to compress a text message.
        raise Problem(
            415,
            "unsupported_media_type",
            "Unsupported content encoding",
            f"Send the body uncompressed, not with Content-Encoding {coding}.",
        )
    try:
        # read() stops with 413 as soon as the body passes client_max_size (= MAX_BODY),
        # chunked or not, so a huge body is never buffered whole.
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except TimeoutError as exc:
        raise Problem(
            408,
            "request_timeout",
            "Request timeout",
            f"The request body did not arrive within {BODY_TIMEOUT:g} seconds.",
        ) from exc


def _json_number(text: str) -> float:
    # No field takes a number, so a number only has to stay "not a string". int() refuses
    # more than 4300 digits (a ValueError that blamed the JSON) and is slow below that;
    # float() reads any length in linear time.
    return float(text)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _text_errors(fields: Mapping[str, Any], names: tuple[str, ...]) -> list[FieldError]:
    """A field error for each named string field holding NUL or a lone surrogate."""
    errors = []
    for name in names:
        value = fields.get(name)
        if isinstance(value, str) and (found := _NOT_TEXT.search(value)):
            char = found.group()
            what = "a NUL character" if char == "\x00" else "a lone UTF-16 surrogate"
            errors.append(
                FieldError(
                    name,
                    "invalid_characters",
                    f"{name} contains {what} (U+{ord(char):04X} at position {found.start()}), "
                    "which is not text; send valid Unicode without NUL.",
                )
            )
    return errors


def _validate_send(service: Service, fields: Mapping[str, Any]) -> SendRequest:
    """The service's validation, plus the text check the store needs; every error at once."""
    errors = _text_errors(fields, SEND_FIELDS)
    bad = {e.field for e in errors}
    try:
        send = service.validate({k: v for k, v in fields.items() if k not in bad})
    except ValidationFailed as exc:
        # The service sees a rejected field as missing; keep only what it says of the others.
        errors += [e for e in exc.errors if e.field not in bad]
        errors.sort(key=lambda e: SEND_FIELDS.index(e.field) if e.field in SEND_FIELDS else 99)
        raise _validation(errors) from exc
    return send


def _token(request: web.Request) -> str | None:
    """The callback token; a non-ASCII one (never issued) reads as empty, so it gets 401."""
    token = request.query.get("token")
    # hmac.compare_digest raises TypeError on non-ASCII str: that was a 500.
    return token if token is None or token.isascii() else ""


def _malformed(detail: str) -> Problem:
    return Problem(400, "malformed_request", "Malformed request", detail)


# -- handlers -----------------------------------------------------------------------------


async def post_message(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    send = _validate_send(service, await _read_fields(request))
    try:
        msg = await service.accept(send)
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
    # A parameter that is present is checked, even when empty: `status=` is not a status.
    number = q.get("to_number")
    if number is not None:
        try:
            number = to_e164(number, deps.default_region)
        except NumberError as exc:
            errors.append(FieldError("to_number", exc.code, exc.message))
    status = None
    if "status" in q:
        try:
            status = Status(q["status"])
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            errors.append(
                FieldError("status", "invalid_choice", f"status must be one of {choices}.")
            )
    limit = LIST_LIMIT_DEFAULT
    if "limit" in q:
        raw = q["limit"]
        # ASCII digits only: int() also takes Arabic-Indic digits, " 10", "+10" and "1_0".
        # The length cap keeps int() from refusing (ValueError) thousands of digits (a 500).
        ok = raw.isascii() and raw.isdigit() and len(raw) <= 9
        if not ok or not 1 <= int(raw) <= LIST_LIMIT_MAX:
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
    errors += _text_errors(fields, ("message_id",))
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
        await request.app[DEPS].service.report(msg_id, report, _token(request))
    except BadToken as exc:
        raise _unauthorized() from exc
    except UnknownMessage as exc:
        raise _no_such_message(msg_id) from exc
    return web.Response(status=204)


async def seed_delivery_status(request: web.Request) -> web.Response:
    report = await _read_report(request)
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
    guard = ConnectionGuard()
    app = web.Application(
        middlewares=[guard.middleware, problem_middleware], client_max_size=MAX_BODY
    )
    app[DEPS] = deps
    app[GUARD] = guard
    r = app.router
    r.add_post("/messages", post_message)
    r.add_get("/messages", list_messages)
    r.add_post("/messages/delivery_status", seed_delivery_status)
    # Not `delivery_status`: that URL is the seed-compatible report route, POST only, and
    # matching it here made a GET answer 404 and its 405 advertise GET in `Allow`.
    r.add_get("/messages/{id:(?!delivery_status$)[^/]+}", get_message)
    r.add_post("/messages/{id}/delivery_status", delivery_status)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/openapi.json", openapi)
    return app
