"""Request bodies: read within size and time caps, parse JSON or forms, validate fields."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from dispatchd.domain.errors import FieldError
from dispatchd.domain.models import REPORT_STATUSES, DeliveryReport, Status
from dispatchd.domain.sending import text_errors
from dispatchd.http.problems import Problem, validation

MAX_BODY = 64 * 1024
# POST /messages/batch alone may send this much (1,000 messages); the app-wide
# client_max_size is this, and every other route is held to MAX_BODY in read_body.
MAX_BATCH_BODY = 2 * 1024 * 1024
# Deepest JSON nesting taken: send fields are flat and a batch adds two levels. Deeper
# values are refused up front, so nothing later (the idempotency hash re-encodes the
# fields inside another level) can hit Python's recursion limit on them.
MAX_NESTING = 32
# Seconds a client has to send the whole body once its headers are in (slow-body attacks).
BODY_TIMEOUT = 10.0

FORM = "application/x-www-form-urlencoded"
# A plain decimal number of seconds, as a form sends validity_period.
_FORM_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?", re.ASCII)


def whole_number(raw: str, max_digits: int = 9) -> int | None:
    """`raw` as an int when it is nothing but ASCII digits (at most `max_digits`), else None.

    int() alone also takes other scripts' digits, " 10", "+10" and "1_0", and str.isdigit()
    is true for "²", which int() refuses; thousands of digits make int() raise too.
    """
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= max_digits else None


def status_param(query: Mapping[str, str], errors: list[FieldError]) -> Status | None:
    """The `status` query parameter, when present; a field error if it names no status.

    Present but empty is checked too: `status=` is not a status.
    """
    if "status" not in query:
        return None
    try:
        return Status(query["status"])
    except ValueError:
        choices = ", ".join(s.value for s in Status)
        errors.append(FieldError("status", "invalid_choice", f"status must be one of {choices}."))
        return None


def _malformed(detail: str) -> Problem:
    return Problem(400, "malformed_request", "Malformed request", detail)


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
    return parse_body(await read_body(request), is_json=is_json)


def parse_body(raw: bytes, *, is_json: bool) -> Mapping[str, Any]:
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
    if _nesting(data) > MAX_NESTING:
        raise _malformed(f"The body's JSON is nested too deeply (more than {MAX_NESTING} levels).")
    return data


def _nesting(value: Any) -> int:
    """How deeply a parsed JSON value nests (a flat object is 1), walked without recursion.

    Stops as soon as it passes MAX_NESTING, so a deep value costs no more than a flat one.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > deepest:
            deepest = depth
            if deepest > MAX_NESTING:
                break
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _too_large(limit: int) -> Problem:
    size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
    return Problem(
        413,
        "payload_too_large",
        "Request body too large",
        f"The request body is larger than {size}, the most this URL takes.",
    )


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
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
    if request.content_length is not None:
        # Already checked against `limit`, and the parser never reads past Content-Length.
        return await request.read()
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


async def read_send_fields(request: web.Request) -> Mapping[str, Any]:
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


async def read_report(request: web.Request) -> DeliveryReport:
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
    errors += text_errors(fields, ("message_id",))
    if errors or not isinstance(status, str) or not isinstance(pmid, str):
        raise validation(errors)
    return DeliveryReport(Status(status), pmid)
