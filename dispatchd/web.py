"""HTTP API: parse requests, call the service, render resources and problem+json errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from dispatchd import store as store_mod
from dispatchd.auth import METRICS_PATH, OPEN_PATHS, KeyRing, auth_middleware
from dispatchd.connections import GUARD, ConnectionGuard, make_runner
from dispatchd.errors import StoreUnavailable
from dispatchd.idempotency import Idempotency, Rendered
from dispatchd.metrics import Metrics, metrics_response
from dispatchd.models import (
    REPORT_STATUSES,
    DeliveryReport,
    HistoryEntry,
    Message,
    Status,
    isoformat,
)
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
from dispatchd.store import SavedResponse
from dispatchd.watch import (
    HEARTBEAT,
    HEARTBEAT_LINE,
    MAX_EVENT_ID,
    MAX_WAIT,
    Watch,
    Watchers,
    status_changes,
    status_event,
)

logger = logging.getLogger(__name__)

# GUARD, ConnectionGuard, make_runner, Problem and PROBLEM_TYPE live in `connections` and
# `problems`; re-exported so callers of the HTTP layer need only this module.
__all__ = ["GUARD", "PROBLEM_TYPE", "ConnectionGuard", "Problem", "make_app", "make_runner"]

MAX_BODY = 64 * 1024
# POST /messages/batch alone may send this much (1,000 messages); the app-wide
# client_max_size is this, and every other route is held to MAX_BODY in _read_body.
MAX_BATCH_BODY = 2 * 1024 * 1024
MAX_BATCH_ITEMS = 1000
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
    # Live-status waiters; the daemon wakes them from the event bus and the worker.
    watchers: Watchers = field(default_factory=Watchers)
    # API keys; empty: no authentication (the daemon allows that on loopback only).
    keys: KeyRing = field(default_factory=lambda: KeyRing(()))
    # Idempotency-Key handling; default: one of the app's own over the service's store.
    idempotency: Idempotency | None = None
    metrics: Metrics | None = None  # None: no /metrics route
    metrics_auth: bool = False  # /metrics needs an API key too


DEPS = web.AppKey("deps", WebDeps)
IDEMPOTENCY = web.AppKey("idempotency", Idempotency)


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
        f"The request body is larger than {MAX_BATCH_BODY // (1024 * 1024)} MiB.",
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


def _seconds(value: float | None) -> float | int | None:
    """Seconds as the client wrote them: 900, not 900.0 (SQLite hands back REALs)."""
    if value is not None and value.is_integer():
        return int(value)
    return value


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
        "send_at": isoformat(msg.send_at),
        "validity_period": _seconds(msg.validity_period),
        "expires_at": isoformat(msg.expires_at),
        "status_callback_url": msg.status_callback_url,
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
        out["status_callbacks"] = [
            {
                "status": c.status.value,
                "url": c.url,
                "state": c.state,
                "attempts": c.attempts,
                "last_http_status": c.last_http_status,
                "last_error": c.last_error,
                "created_at": isoformat(c.created_at),
                "finished_at": isoformat(c.finished_at),
            }
            for c in msg.callbacks
        ]
    return out


# -- parsing ------------------------------------------------------------------------------


FORM = "application/x-www-form-urlencoded"
# In the order their errors are listed.
SEND_FIELDS = (
    "to_number",
    "message",
    "send_at",
    "validity_period",
    "smart_encoding",
    "status_callback_url",
)
# A plain decimal number of seconds, as a form sends validity_period.
_FORM_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?", re.ASCII)
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
    return _parse_body(await _read_body(request), is_json=is_json)


def _parse_body(raw: bytes, *, is_json: bool) -> Mapping[str, Any]:
    """A JSON object or a form as a mapping; Problem 400 for anything else."""
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


def _too_large(limit: int) -> Problem:
    size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
    return Problem(
        413,
        "payload_too_large",
        "Request body too large",
        f"The request body is larger than {size}, the most this URL takes.",
    )


async def _read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The raw body: at most `limit` bytes, received within BODY_TIMEOUT, not compressed."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
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
        async with asyncio.timeout(BODY_TIMEOUT):
            return await _read_capped(request, limit)
    except TimeoutError as exc:
        raise Problem(
            408,
            "request_timeout",
            "Request timeout",
            f"The request body did not arrive within {BODY_TIMEOUT:g} seconds.",
        ) from exc


async def _read_capped(request: web.Request, limit: int) -> bytes:
    """Read the body chunk by chunk, stopping with 413 as soon as it passes `limit`.

    Chunked or not, a huge body is never buffered whole: request.read() would only stop at
    the app-wide client_max_size, which is the batch route's larger limit.
    """
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _json_number(text: str) -> float:
    # Numbers are only seconds (validity_period), where a float is exact enough. int()
    # refuses more than 4300 digits (a ValueError that blamed the JSON) and is slow below
    # that; float() reads any length in linear time (a huge one becomes inf: out of range).
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
    fields = await _read_send_fields(request)

    async def accept(save: Callable[[Message], SavedResponse] | None) -> Message:
        send = _validate_send(service, fields)
        try:
            return await service.accept(send, save_response=save)
        except NumberSuppressed as exc:
            raise _number_suppressed(exc) from exc

    return await request.app[IDEMPOTENCY].run(request, fields, accept, _accepted)


def _accepted(msg: Message) -> Rendered:
    """The 202 of a new message (the same bytes web.json_response would send)."""
    return Rendered(202, json.dumps(message_resource(msg)), f"/messages/{msg.id}")


def _number_suppressed(exc: NumberSuppressed) -> Problem:
    return Problem(422, "number_suppressed", "Number suppressed", exc.message)


async def _read_send_fields(request: web.Request) -> Mapping[str, Any]:
    """A send request's fields; a form's flag and number arrive as text, so are converted."""
    fields = await _read_fields(request)
    return _from_form(fields) if request.content_type == FORM else fields


def _from_form(fields: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    flag = out.get("smart_encoding")
    if flag in ("true", "false"):
        out["smart_encoding"] = flag == "true"
    period = out.get("validity_period")
    # Anything else stays text, which the service refuses as not a number.
    if isinstance(period, str) and _FORM_SECONDS.fullmatch(period):
        out["validity_period"] = float(period)
    return out


# -- batches ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Each item's fate in item order (its send, or why not), and the messages created."""

    checked: list[SendRequest | Problem]
    messages: list[Message]


async def post_batch(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    items = await _read_batch(request)

    async def accept(save: Callable[[BatchOutcome], SavedResponse] | None) -> BatchOutcome:
        checked = [_check_item(service, index, item) for index, item in enumerate(items)]
        sends = [c for c in checked if isinstance(c, SendRequest)]
        # A batch that created nothing is not kept, like a refused POST /messages.
        keep = None if save is None or not sends else _keep_batch(save, checked)
        msgs = await service.accept_many(sends, save_response=keep)
        return BatchOutcome(checked, msgs)

    return await request.app[IDEMPOTENCY].run(request, {"messages": items}, accept, _batch_body)


async def _read_batch(request: web.Request) -> list[Any]:
    """The `messages` list of a batch: JSON only, 1 to MAX_BATCH_ITEMS items."""
    ctype = request.content_type
    if not (ctype == "application/json" or ctype.endswith("+json")):
        raise Problem(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            f"Send a batch as application/json, not {ctype}.",
        )
    data = _parse_body(await _read_body(request, MAX_BATCH_BODY), is_json=True)
    items = data.get("messages")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise _validation([_batch_list_error(items)])
    return items


def _batch_list_error(items: Any) -> FieldError:
    """What is wrong with a batch's `messages` field."""
    if items is None:
        return FieldError("messages", "missing", "messages is required: a list of messages.")
    if not isinstance(items, list):
        return FieldError("messages", "not_a_list", "messages must be a list of messages.")
    if not items:
        return FieldError("messages", "empty", "messages must hold at least one message.")
    return FieldError(
        "messages",
        "too_many",
        f"messages holds {len(items)} messages; at most {MAX_BATCH_ITEMS} are allowed "
        "in one batch.",
    )


def _keep_batch(
    save: Callable[[BatchOutcome], SavedResponse], checked: list[SendRequest | Problem]
) -> Callable[[list[Message]], SavedResponse]:
    """The service's save_response for a batch: the whole batch answer, rendered once."""
    return lambda msgs: save(BatchOutcome(checked, msgs))


def _check_item(service: Service, index: int, item: Any) -> SendRequest | Problem:
    """One batch item validated like a POST /messages body, or the problem it would get."""
    if not isinstance(item, dict):
        return _validation(
            [
                FieldError(
                    f"messages[{index}]",
                    "not_an_object",
                    f"messages[{index}] must be an object with to_number and message.",
                )
            ]
        )
    try:
        send = _validate_send(service, item)
        service.check_not_suppressed(send.to_number)
    except Problem as problem:
        return problem
    except NumberSuppressed as exc:
        return _number_suppressed(exc)
    return send


def _batch_body(outcome: BatchOutcome) -> Rendered:
    """The batch's 200: counts, then each item's 202 message or 422 problem, in order."""
    created = iter(outcome.messages)
    results: list[dict[str, Any]] = []
    for index, item in enumerate(outcome.checked):
        if isinstance(item, Problem):
            results.append({"index": index, "status": item.status, "problem": item.body()})
        else:
            resource = message_resource(next(created))
            results.append({"index": index, "status": 202, "message": resource})
    accepted = len(outcome.messages)
    rejected = len(outcome.checked) - accepted
    body = {"accepted": accepted, "rejected": rejected, "results": results}
    return Rendered(200, json.dumps(body))


async def get_message(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    wait, seen = _wait_params(request)
    msg_id = request.match_info["id"]
    # Registered before the first read, so a change committed after it always wakes us.
    with deps.watchers.watch(msg_id) as watch:
        msg = await deps.service.store.get(msg_id)
        if msg is None:
            raise _no_such_message(msg_id)
        baseline = seen or msg.status
        waits = wait > 0 and msg.status is baseline and not msg.status.final
        if waits and await _until_status_changes(deps, watch, baseline, wait):
            msg = await deps.service.store.get(msg_id) or msg
    return web.json_response(message_resource(msg, detailed=True))


async def _until_status_changes(deps: WebDeps, watch: Watch, baseline: Status, wait: float) -> bool:
    """Wait up to `wait` seconds for the status to leave `baseline`; False if nothing woke us."""
    # A woken watch reads only the status (one small query); the caller reads the whole
    # message once, at the end.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    woken = False
    while (left := deadline - loop.time()) > 0 and await watch.wait(left):
        woken = True
        if await store_mod.message_status(deps.service.store, watch.msg_id) is not baseline:
            break
    return woken or deps.watchers.closed


# A decimal or scientific number: what clients (and JSON encoders) write for seconds.
_SECONDS = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _wait_params(request: web.Request) -> tuple[float, Status | None]:
    """`wait` (seconds to hold the answer) and `status` (the status the client last saw)."""
    q = request.query
    errors: list[FieldError] = []
    wait = 0.0
    if "wait" in q:
        raw = q["wait"]
        value = float(raw) if len(raw) <= 32 and _SECONDS.fullmatch(raw) else -1.0
        if 0 <= value <= MAX_WAIT:
            wait = value
        else:
            errors.append(
                FieldError(
                    "wait",
                    "out_of_range",
                    f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, such as 30 or 2.5.",
                )
            )
    seen = None
    if "status" in q:
        try:
            seen = Status(q["status"])
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            errors.append(
                FieldError("status", "invalid_choice", f"status must be one of {choices}.")
            )
    if errors:
        raise _validation(errors)
    return wait, seen


def _last_event_id(request: web.Request) -> int:
    """The `Last-Event-ID` a reconnecting client sends; -1 when absent (start from the top)."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        return -1
    raw = raw.strip()
    # ASCII digits only, and few of them: int() takes other scripts' digits and "1_0".
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= MAX_EVENT_ID:
        return int(raw)
    raise _validation(
        [
            FieldError(
                "Last-Event-ID",
                "out_of_range",
                "Last-Event-ID must be the id of an event this stream sent: a whole number "
                f"from 0 to {MAX_EVENT_ID}.",
            )
        ]
    )


async def message_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the message's status changes so far, then each as it happens."""
    deps = request.app[DEPS]
    after = _last_event_id(request)
    msg_id = request.match_info["id"]
    store = deps.service.store
    with deps.watchers.watch(msg_id) as watch:
        history = await store_mod.message_history(store, msg_id)
        if not history and await store_mod.message_status(store, msg_id) is None:
            raise _no_such_message(msg_id)
        response = web.StreamResponse(
            headers={
                hdrs.CONTENT_TYPE: "text/event-stream",
                hdrs.CACHE_CONTROL: "no-cache",
                # nginx buffers proxied responses unless told not to.
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        if request.method == hdrs.METH_HEAD:
            return response  # no body would ever reach the client: do not hold the handler
        try:
            await _stream(response, deps, watch, history, after)
            await response.write_eof()
        except (ConnectionResetError, StoreUnavailable):
            # The client left, or the store failed mid-stream: the headers are sent, so no
            # problem+json now; a client resumes with Last-Event-ID.
            pass
    return response


async def _stream(
    response: web.StreamResponse,
    deps: WebDeps,
    watch: Watch,
    history: tuple[HistoryEntry, ...],
    after: int,
) -> None:
    """Write status events until one is final or the server stops; heartbeats meanwhile."""
    while True:
        for index, entry in status_changes(history, after):
            await response.write(status_event(watch.msg_id, index, entry))
            after = index
            if entry.status.final:
                return
        # Final with nothing left to send: the client had seen it all (Last-Event-ID).
        if (history and history[-1].status.final) or deps.watchers.closed:
            return
        if not await watch.wait(HEARTBEAT):
            if deps.watchers.closed:
                return
            await response.write(HEARTBEAT_LINE)
            continue  # nothing woke us, so nothing changed
        history = await store_mod.message_history(deps.service.store, watch.msg_id)


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
    app[IDEMPOTENCY] = deps.idempotency or Idempotency(deps.service.store)
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
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/openapi.json", openapi)
    r.add_get(METRICS_PATH, metrics)
    return app
