"""Component schemas of request bodies, batch results, delivery reports and problems."""

from __future__ import annotations

from typing import Final

from dispatchd.domain.models import REPORT_STATUSES
from dispatchd.domain.sending import MAX_URL_LENGTH, MAX_VALIDITY
from dispatchd.http.batches import MAX_BATCH_ITEMS
from dispatchd.http.openapi.common import (
    FIELD_ERROR_CODES,
    MAX_SCHEDULE_DAYS,
    PROBLEM_TYPE_PATTERN,
    Schema,
    _ref,
)

_FIELD_ERROR: Final[Schema] = {
    "type": "object",
    "description": "What is wrong with one field.",
    "additionalProperties": False,
    "required": ["field", "code", "message"],
    "properties": {
        "field": {"type": "string", "examples": ["to_number"]},
        "code": {"type": "string", "enum": list(FIELD_ERROR_CODES)},
        "message": {"type": "string", "description": "A sentence for humans."},
    },
}

_PROBLEM: Final[Schema] = {
    "type": "object",
    "description": "An RFC 9457 problem: every error answer has this shape and the media "
    "type `application/problem+json`. Switch on `code`, show `detail` to humans.",
    "additionalProperties": False,
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {
            "type": "string",
            "format": "uri",
            "pattern": PROBLEM_TYPE_PATTERN,
            "description": "`https://dispatchd.dev/problems/{code}`.",
        },
        "title": {"type": "string", "description": "Short summary of the kind of problem."},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "What went wrong this time, as a sentence."},
        "code": {
            "type": "string",
            "pattern": "^[a-z0-9_]+$",
            "description": "Machine-readable problem code, e.g. `validation_failed`.",
        },
        "errors": {
            "type": "array",
            "minItems": 1,
            "items": _ref("FieldError"),
            "description": "Only for `validation_failed`: every invalid field.",
        },
    },
    # Validation failures list their fields; nothing else has `errors`.
    "if": {"properties": {"code": {"const": "validation_failed"}}},
    "then": {"required": ["errors"]},
    "else": {"not": {"required": ["errors"]}},
}

_SEND_REQUEST: Final[Schema] = {
    "type": "object",
    "description": "A message to send. Other fields are ignored.",
    "required": ["to_number", "message"],
    "properties": {
        "to_number": {
            "type": "string",
            "maxLength": 64,
            "description": "The recipient. E.164 (`+17034573322`) or any common national "
            "format (`(703) 457-3322`), read in the configured `default_region`.",
            "examples": ["+17034573322", "(703) 457-3322"],
        },
        "message": {
            "type": "string",
            "minLength": 1,
            "pattern": r"\S",
            "description": "The text; not only whitespace, and at most `max_segments` "
            "(default 10) SMS segments.",
            "examples": ["Hello from dispatchd"],
        },
        "send_at": {
            "type": "string",
            "format": "date-time",
            "description": "Send at this time, not at once: RFC 3339 with `Z` or an offset "
            f"(no timezone: `no_timezone`), at most {MAX_SCHEDULE_DAYS} days ahead "
            "(`out_of_range`). A time in the past means at once.",
            "examples": ["2025-01-31T09:00:00Z", "2025-01-31T10:00:00+01:00"],
        },
        "validity_period": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_VALIDITY,
            "description": "Seconds (fractions allowed, at most 30 days) the message may "
            "wait for a provider, counted from `send_at` or acceptance; then it expires. "
            "Default: the server's `[delivery] max_age`.",
            "examples": [600],
        },
        "smart_encoding": {
            "type": "boolean",
            "description": "Replace typographic quotes, dashes, ellipses and unusual spaces "
            "with plain GSM-7 ones before counting segments, so such text is not sent as "
            "UCS-2. Default: the server's `[delivery] smart_encoding`. In a form: `true` or "
            "`false`.",
        },
        "status_callback_url": {
            "type": "string",
            "format": "uri",
            "maxLength": MAX_URL_LENGTH,
            "description": "An http(s) URL to POST each status change of the message to "
            "(see the `messageStatus` webhook). Default: the server's `[webhooks] "
            "default_url`. Refused (`callbacks_disabled`) when the server has no "
            "`[webhooks] secret` to sign them with, and (`private_address`) when the host is "
            "a loopback, private, link-local or other non-public IP address, unless the "
            "server allows those (`[webhooks] allow_private_addresses`); a host name that "
            "resolves only to such addresses is refused when sending.",
            "examples": ["https://app.example.com/sms/status"],
        },
    },
}

_BATCH_REQUEST: Final[Schema] = {
    "type": "object",
    "description": "Messages to send in one request. Other fields are ignored.",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BATCH_ITEMS,
            # Deliberately unconstrained: a bad item is answered in its own result, not by
            # refusing the batch.
            "items": {
                "description": "A message, as the JSON body of `POST /messages` "
                "(`SendMessageRequest`). An item that is not valid gets its own `422` "
                "result; the others are still accepted.",
            },
        },
    },
}

_BATCH_RESULT: Final[Schema] = {
    "type": "object",
    "description": "What became of one item: `202` and the message, or `422` and the "
    "problem a `POST /messages` of it would have got.",
    "additionalProperties": False,
    "required": ["index", "status"],
    "properties": {
        "index": {"type": "integer", "minimum": 0, "description": "The item's position."},
        "status": {"type": "integer", "enum": [202, 422]},
        "message": _ref("Message"),
        "problem": {
            "allOf": [_ref("Problem")],
            "properties": {"code": {"enum": ["validation_failed", "number_suppressed"]}},
        },
    },
    "if": {"properties": {"status": {"const": 202}}},
    "then": {"required": ["message"], "not": {"required": ["problem"]}},
    "else": {"required": ["problem"], "not": {"required": ["message"]}},
}

_BATCH_RESPONSE: Final[Schema] = {
    "type": "object",
    "description": "One result per item, in item order.",
    "additionalProperties": False,
    "required": ["accepted", "rejected", "results"],
    "properties": {
        "accepted": {"type": "integer", "minimum": 0, "description": "Items stored."},
        "rejected": {"type": "integer", "minimum": 0, "description": "Items refused."},
        "results": {"type": "array", "items": _ref("BatchResult")},
    },
}

_DELIVERY_REPORT: Final[Schema] = {
    "type": "object",
    "description": "A provider's delivery report. Other fields are ignored.",
    "required": ["status", "message_id"],
    "properties": {
        "status": {"type": "string", "enum": sorted(s.value for s in REPORT_STATUSES)},
        "message_id": {
            "type": "string",
            "minLength": 1,
            "description": "The provider's own message id (from its 200 answer).",
        },
    },
}
