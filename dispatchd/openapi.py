"""The OpenAPI 3.1 document describing the HTTP API (served at `GET /openapi.json`).

The enums come from the code (`Status`, `Outcome`, `Encoding`, `ErrorCode`), so they
cannot drift; everything else is written out by hand and checked against real responses
by `tests/integration/test_openapi.py`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Final

from dispatchd.auth import OPEN_PATHS
from dispatchd.batches import MAX_BATCH_ITEMS
from dispatchd.bodies import MAX_NESTING
from dispatchd.encoding import Encoding
from dispatchd.models import REPORT_STATUSES, ErrorCode, Outcome, Status
from dispatchd.service import MAX_SCHEDULE_AHEAD, MAX_URL_LENGTH, MAX_VALIDITY
from dispatchd.watch import HEARTBEAT, MAX_EVENT_ID, MAX_WAIT

__all__ = ["openapi_document"]

API_VERSION: Final = "0.1.0"
E164_PATTERN: Final = r"^\+[1-9][0-9]{1,14}$"
# Must match dispatchd.problems and dispatchd.web (web imports this module, not the reverse).
PROBLEM_TYPE_PATTERN: Final = r"^https://dispatchd\.dev/problems/[a-z0-9_]+$"
LIST_LIMIT_DEFAULT: Final = 50
LIST_LIMIT_MAX: Final = 500
RETRY_AFTER_SECONDS: Final = 5

JSON: Final = "application/json"
FORM: Final = "application/x-www-form-urlencoded"
PROBLEM: Final = "application/problem+json"
EVENT_STREAM: Final = "text/event-stream"

FIELD_ERROR_CODES: Final = (
    "missing",
    "not_a_string",
    "empty",
    "too_long",
    "unparseable",
    "invalid_number",
    "invalid_choice",
    "out_of_range",
    "invalid_characters",
    # Message options and batches.
    "no_timezone",
    "not_a_number",
    "not_a_boolean",
    "invalid_url",
    "callbacks_disabled",
    "private_address",
    "not_a_list",
    "too_many",
    "not_an_object",
)
MAX_SCHEDULE_DAYS: Final = MAX_SCHEDULE_AHEAD // 86_400

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """`schema` or null, JSON Schema 2020-12 style (OpenAPI 3.1 has no `nullable`)."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


_TIMESTAMP: Final[Schema] = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 UTC timestamp with milliseconds.",
    "examples": ["2025-01-31T12:00:00.123Z"],
}


# -- schemas ------------------------------------------------------------------------------

_STATUS_HELP = {
    Status.QUEUED: "stored and waiting for the worker (also after a failed attempt, until "
    "`next_attempt_at`)",
    Status.SENDING: "a provider call is in flight",
    Status.SENT: "a provider accepted it; waiting for its delivery report",
    Status.DELIVERED: "final: the provider reported it delivered",
    Status.FAILED: "final: no provider would take it after every attempt, or the provider "
    "reported it undelivered",
    Status.INVALID: "final: the number was reported invalid (and is now suppressed)",
    Status.EXPIRED: "final: no provider accepted it within `max_age` seconds of acceptance",
}

_MESSAGE_STATUS: Final[Schema] = {
    "type": "string",
    "enum": [s.value for s in Status],
    "description": "Where a message stands. "
    + "; ".join(f"`{s.value}`: {_STATUS_HELP[s]}" for s in Status)
    + ". Final statuses never change.",
}

_MESSAGE_ERROR: Final[Schema] = {
    "type": "object",
    "description": "Why a message failed, or why its last attempt did.",
    "additionalProperties": False,
    "required": ["code", "detail"],
    "properties": {
        "code": {
            "type": "string",
            "enum": [c.value for c in ErrorCode],
            "description": "Machine-readable reason: `providers_unavailable` (no provider "
            "answered usefully; retried until `max_attempts`), `provider_rejected` (every "
            "provider refused it with a 4xx), `number_suppressed`, `expired`, "
            "`reported_failed`, `reported_invalid` (from a delivery report).",
        },
        "detail": {"type": "string", "description": "A sentence for humans."},
    },
}

_MESSAGE_PROPERTIES: Final[dict[str, Schema]] = {
    "id": {
        "type": "string",
        "format": "uuid",
        "description": "The message id (a UUIDv7, so ids sort by acceptance time).",
        "examples": ["01a222ab-f8ac-7206-bf20-90d60ad50f03"],
    },
    "to_number": {
        "type": "string",
        "pattern": E164_PATTERN,
        "description": "The recipient in E.164 form, however it was written in the request.",
        "examples": ["+17034573322"],
    },
    "message": {"type": "string", "minLength": 1, "description": "The text, as sent."},
    "status": _ref("MessageStatus"),
    "segments": {
        "type": "integer",
        "minimum": 1,
        "description": "How many SMS parts the text needs in its encoding.",
    },
    "encoding": {
        "type": "string",
        "enum": [e.value for e in Encoding],
        "description": "`GSM-7` when every character is in the GSM 03.38 alphabet "
        "(160 characters per single SMS, 153 per part), else `UCS-2` (70, or 67 per part).",
    },
    "provider": _nullable(
        {"type": "string", "description": "The provider that accepted it; null until one did."}
    ),
    "provider_message_id": _nullable(
        {"type": "string", "description": "That provider's own id for the message."}
    ),
    "error": _nullable(_ref("MessageError")),
    "created_at": {**_TIMESTAMP, "description": "When dispatchd accepted the message."},
    "updated_at": {**_TIMESTAMP, "description": "When the message last changed."},
    "next_attempt_at": _nullable(
        {
            **_TIMESTAMP,
            "description": "While `queued`: when the next delivery attempt is due. "
            "Null in every other status.",
        }
    ),
    "send_at": _nullable(
        {
            **_TIMESTAMP,
            "description": "The time the client scheduled the message for (in UTC); null "
            "when it was to be sent at once.",
        }
    ),
    "validity_period": _nullable(
        {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_VALIDITY,
            "description": "Seconds the message may wait for a provider, as the client set "
            "it; null: the server's `[delivery] max_age`.",
        }
    ),
    "expires_at": {
        **_TIMESTAMP,
        "description": "When an unsent message expires: `send_at` (or acceptance, if later) "
        "plus `validity_period` (or `max_age`).",
    },
    "status_callback_url": _nullable(
        {
            "type": "string",
            "description": "Where each status change of the message is POSTed; null: none.",
        }
    ),
}

# next_attempt_at is a timestamp exactly while the message is queued.
_NEXT_ATTEMPT_RULE: Final[Schema] = {
    "if": {"properties": {"status": {"const": Status.QUEUED.value}}},
    "then": {"properties": {"next_attempt_at": {"type": "string"}}},
    "else": {"properties": {"next_attempt_at": {"type": "null"}}},
}

_MESSAGE: Final[Schema] = {
    "type": "object",
    "description": "A message as dispatchd stores it.",
    "additionalProperties": False,
    "required": list(_MESSAGE_PROPERTIES),
    "properties": _MESSAGE_PROPERTIES,
    **_NEXT_ATTEMPT_RULE,
}

_ATTEMPT: Final[Schema] = {
    "type": "object",
    "description": "One call to one provider.",
    "additionalProperties": False,
    "required": ["provider", "started_at", "outcome", "http_status", "latency_ms", "error"],
    "properties": {
        "provider": {"type": "string", "description": "The provider's configured name."},
        "started_at": _TIMESTAMP,
        "outcome": {
            "type": "string",
            "enum": [o.value for o in Outcome],
            "description": "`accepted`: the provider took the message. `unavailable`: 5xx, "
            "408, 429, timeout or connection error, so dispatchd failed over to the next "
            "provider. `rejected`: another 4xx; this provider will not take this message.",
        },
        "http_status": _nullable(
            {
                "type": "integer",
                "minimum": 100,
                "maximum": 599,
                "description": "The provider's HTTP status; null if it never answered.",
            }
        ),
        "latency_ms": {"type": "number", "minimum": 0, "description": "Call duration."},
        "error": _nullable({"type": "string", "description": "What went wrong, if anything."}),
    },
}

_HISTORY_ENTRY: Final[Schema] = {
    "type": "object",
    "description": "One status change, or a delivery report that was recorded but ignored.",
    "additionalProperties": False,
    "required": ["status", "at", "detail"],
    "properties": {
        "status": _ref("MessageStatus"),
        "at": _TIMESTAMP,
        "detail": _nullable({"type": "string", "description": "Why, in a few words."}),
    },
}

_STATUS_CALLBACK: Final[Schema] = {
    "type": "object",
    "description": "One status change queued for the message's status callback URL, and how "
    "sending it went.",
    "additionalProperties": False,
    "required": [
        "status",
        "url",
        "state",
        "attempts",
        "last_http_status",
        "last_error",
        "created_at",
        "finished_at",
    ],
    "properties": {
        "status": _ref("MessageStatus"),
        "url": {"type": "string", "description": "Where it is POSTed."},
        "state": {
            "type": "string",
            "enum": ["pending", "delivered", "failed"],
            "description": "`pending`: not yet taken (waiting for its turn or a retry); "
            "`delivered`: the receiver answered 2xx; `failed`: given up (any answer "
            "but 2xx, 5xx, 408 and 429 — a 4xx or a redirect, which is not followed —, a "
            "private destination, or `max_attempts` tries without a 2xx).",
        },
        "attempts": {"type": "integer", "minimum": 0, "description": "Tries made so far."},
        "last_http_status": _nullable(
            {
                "type": "integer",
                "minimum": 100,
                "maximum": 599,
                "description": "The receiver's last HTTP status; null if it never answered.",
            }
        ),
        "last_error": _nullable(
            {
                "type": "string",
                "description": "What went wrong on the last try, if anything: `HTTP <status>`, "
                "`no answer within <timeout>`, `connection failed` or `refused: private "
                "address`, with why it was given up when it was.",
            }
        ),
        "created_at": {**_TIMESTAMP, "description": "When the status change was queued."},
        "finished_at": _nullable(
            {**_TIMESTAMP, "description": "When it was delivered or given up; null while pending."}
        ),
    },
}

_STATUS_CALLBACK_BODY: Final[Schema] = {
    "type": "object",
    "description": "The body dispatchd POSTs to a status callback URL on every status change. "
    "Verify `Dispatchd-Signature` over the raw bytes before parsing them.",
    "additionalProperties": False,
    "required": ["id", "status", "to_number", "provider", "error", "at"],
    "properties": {
        "id": _MESSAGE_PROPERTIES["id"],
        "status": _ref("MessageStatus"),
        "to_number": _MESSAGE_PROPERTIES["to_number"],
        "provider": _MESSAGE_PROPERTIES["provider"],
        "error": _nullable(_ref("MessageError")),
        "at": {**_TIMESTAMP, "description": "When the message took this status."},
    },
}

_MESSAGE_DETAIL: Final[Schema] = {
    "type": "object",
    "description": "A message with every provider call and every status change, oldest first.",
    "additionalProperties": False,
    "required": [*_MESSAGE_PROPERTIES, "attempts", "history", "status_callbacks"],
    "properties": {
        **_MESSAGE_PROPERTIES,
        "attempts": {"type": "array", "items": _ref("Attempt")},
        "history": {"type": "array", "items": _ref("HistoryEntry")},
        "status_callbacks": {
            "type": "array",
            "items": _ref("StatusCallback"),
            "description": "One entry per status change sent (or being sent) to the "
            "message's `status_callback_url`, oldest first; empty without one.",
        },
    },
    **_NEXT_ATTEMPT_RULE,
}

_MESSAGE_PAGE: Final[Schema] = {
    "type": "object",
    "description": "One page of messages, newest first.",
    "additionalProperties": False,
    "required": ["items", "next_cursor"],
    "properties": {
        "items": {"type": "array", "items": _ref("Message")},
        "next_cursor": _nullable(
            {
                "type": "string",
                "description": "Pass as `cursor` to get the next (older) page; null on the "
                "last page.",
            }
        ),
    },
}

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

_STATUS_EVENT: Final[Schema] = {
    "type": "object",
    "description": "The `data` of a `status` event of `GET /messages/{id}/events`: one "
    "status change, as in the message's `history`.",
    "additionalProperties": False,
    "required": ["id", "status", "at", "detail", "final"],
    "properties": {
        "id": _MESSAGE_PROPERTIES["id"],
        "status": _ref("MessageStatus"),
        "at": {**_TIMESTAMP, "description": "When the status changed."},
        "detail": _nullable({"type": "string", "description": "Why, in a few words."}),
        "final": {
            "type": "boolean",
            "description": "True for the last event: the status will not change again.",
        },
    },
}

_SCHEMAS: Final[dict[str, Schema]] = {
    "Message": _MESSAGE,
    "MessageDetail": _MESSAGE_DETAIL,
    "MessagePage": _MESSAGE_PAGE,
    "MessageStatus": _MESSAGE_STATUS,
    "MessageError": _MESSAGE_ERROR,
    "Attempt": _ATTEMPT,
    "HistoryEntry": _HISTORY_ENTRY,
    "StatusEvent": _STATUS_EVENT,
    "StatusCallback": _STATUS_CALLBACK,
    "StatusCallbackBody": _STATUS_CALLBACK_BODY,
    "Problem": _PROBLEM,
    "FieldError": _FIELD_ERROR,
    "SendMessageRequest": _SEND_REQUEST,
    "SendBatchRequest": _BATCH_REQUEST,
    "BatchResult": _BATCH_RESULT,
    "BatchResponse": _BATCH_RESPONSE,
    "DeliveryReport": _DELIVERY_REPORT,
}


# -- responses ----------------------------------------------------------------------------

_HEADERS: Final[dict[str, Any]] = {
    "Location": {
        "description": "Path of the new message: `/messages/{id}`.",
        "required": True,
        "schema": {"type": "string", "pattern": "^/messages/[0-9a-f-]{36}$"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "examples": [RETRY_AFTER_SECONDS]},
    },
}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _problem(
    status: int, codes: list[str], description: str, *, retry_after: bool = False
) -> Schema:
    """A problem+json answer whose `status` and `code` are pinned down."""
    schema: Schema = {
        "allOf": [_ref("Problem")],
        "properties": {"status": {"const": status}, "code": {"enum": codes}},
    }
    response: Schema = {"description": description, "content": {PROBLEM: {"schema": schema}}}
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


_DEFAULT: Final[Schema] = {
    "description": "Any other error, as a problem: `400 malformed_request` (not valid "
    "HTTP/1.1), `405 method_not_allowed` (with an `Allow` header), `408 request_timeout` "
    "(the body did not arrive within 10 seconds) or `500 internal_error` (dispatchd logged "
    "the cause).",
    "content": {PROBLEM: {"schema": _ref("Problem")}},
}

_BODY_TOO_LARGE: Final = _problem(413, ["payload_too_large"], "The body is over 64 KiB.")
_MALFORMED: Final = _problem(
    400,
    ["malformed_request"],
    f"The body is not valid UTF-8 JSON, is nested more than {MAX_NESTING} levels deep, or is "
    "JSON but not an object.",
)
_UNSUPPORTED: Final = _problem(
    415,
    ["unsupported_media_type"],
    "The body is neither JSON (`application/json` or any `+json` type) nor "
    "`application/x-www-form-urlencoded` (a missing Content-Type counts as neither), or it "
    "is compressed (any `Content-Encoding` but `identity`).",
)
_STORAGE_UNAVAILABLE: Final = _problem(
    503,
    ["storage_unavailable"],
    "The database cannot take writes right now (disk full, locked, I/O error); nothing was "
    "stored. Retry after `Retry-After` seconds.",
    retry_after=True,
)
_STORAGE_UNREADABLE: Final = _problem(
    503,
    ["storage_unavailable"],
    "The database cannot be read right now (an I/O error, or dispatchd is shutting down). "
    "Retry after `Retry-After` seconds.",
    retry_after=True,
)
_INVALID_TOKEN: Final = _problem(
    401,
    ["invalid_token"],
    "The `token` is missing or is not the one dispatchd issued for this message; nothing "
    "was changed.",
)
_REPORT_INVALID: Final = _problem(
    422,
    ["validation_failed"],
    "`status` is not one of delivered, failed, invalid, or `message_id` is missing, not "
    "a non-empty string or holds NUL or a lone surrogate; `errors` lists each problem. "
    "Checked before the token.",
)


def _report_body() -> Schema:
    schema = _ref("DeliveryReport")
    return {
        "required": True,
        "content": {JSON: {"schema": schema}, FORM: {"schema": schema}},
    }


_TOKEN_PARAM: Final[Schema] = {
    "name": "token",
    "in": "query",
    "required": True,
    "description": "The callback token dispatchd put in the callback URL it gave the "
    "provider (an HMAC of the dispatchd message id under a secret kept in the database). "
    "Missing or wrong: `401`.",
    "schema": {"type": "string"},
}

_ID_PARAM: Final[Schema] = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The message id, as returned by `POST /messages`.",
    # `/messages/delivery_status` is the seed-compatible report URL and `/messages/batch`
    # the batch route, not messages.
    "schema": {"type": "string", "not": {"enum": ["delivery_status", "batch"]}},
    "examples": {"uuid": {"value": "01a222ab-f8ac-7206-bf20-90d60ad50f03"}},
}

_REPORT_204: Final[Schema] = {
    "description": "Report taken. If the message was not final, its status changed (an "
    "`invalid` report also suppresses the number); if it was already final, or this is a "
    "duplicate, the report is only recorded in `history`. Either way, do not resend it."
}


# -- operations ---------------------------------------------------------------------------

_POST_MESSAGES: Final[Schema] = {
    "operationId": "sendMessage",
    "tags": ["messages"],
    "summary": "Send an SMS",
    "description": "Validates the number and text, stores the message durably and hands it "
    "to the delivery worker. `202` means the message is committed to disk (fsynced) and "
    "will reach a final status even if dispatchd restarts; it has not been sent yet. "
    "Follow it with `GET /messages/{id}` (the `Location` header).",
    "requestBody": {
        "required": True,
        "description": "JSON or an HTML form with the same fields; at most 64 KiB.",
        "content": {
            JSON: {
                "schema": _ref("SendMessageRequest"),
                "example": {"to_number": "+17034573322", "message": "Hello from dispatchd"},
            },
            FORM: {"schema": _ref("SendMessageRequest")},
        },
    },
    "responses": {
        "202": _json(
            _ref("Message"),
            "Accepted and committed to disk; status `queued`.",
            {"Location": {"$ref": "#/components/headers/Location"}},
        ),
        "400": _MALFORMED,
        "413": _BODY_TOO_LARGE,
        "415": _UNSUPPORTED,
        "422": _problem(
            422,
            ["validation_failed", "number_suppressed"],
            "Not accepted. `validation_failed`: a field is missing, not a string, holds NUL "
            "or a lone UTF-16 surrogate (`invalid_characters`), an unparseable or invalid "
            "number, empty text or too many segments, or an option is wrong (`send_at`, "
            "`validity_period`, `smart_encoding`, `status_callback_url`); `errors` lists "
            "every problem. "
            "`number_suppressed`: a provider reported this number invalid earlier, so "
            "dispatchd refuses to message it.",
        ),
        "503": _STORAGE_UNAVAILABLE,
        "default": _DEFAULT,
    },
}

_POST_BATCH: Final[Schema] = {
    "operationId": "sendMessageBatch",
    "tags": ["messages"],
    "summary": "Send up to 1,000 SMS in one request",
    "description": "Each item is checked like the body of `POST /messages`; every valid "
    "item is stored in one transaction (all of them committed to disk before the answer) "
    "and the worker is woken once. A bad item does not fail the others: the `200` lists, "
    "in item order, a `202` with the message or a `422` with the problem for each.",
    "requestBody": {
        "required": True,
        "description": "JSON only; at most 2 MiB.",
        "content": {
            JSON: {
                "schema": _ref("SendBatchRequest"),
                "example": {
                    "messages": [
                        {"to_number": "+17034573322", "message": "Hello"},
                        {"to_number": "+17034573323", "message": "Hi", "validity_period": 600},
                    ]
                },
            },
        },
    },
    "responses": {
        "200": _json(_ref("BatchResponse"), "Every item's result; the accepted ones are stored."),
        "400": _MALFORMED,
        "413": _problem(413, ["payload_too_large"], "The body is over 2 MiB."),
        "415": _problem(
            415,
            ["unsupported_media_type"],
            "The body is not JSON (`application/json` or any `+json` type): batches take "
            "no forms. Or it is compressed (any `Content-Encoding` but `identity`).",
        ),
        "422": _problem(
            422,
            ["validation_failed"],
            "`messages` is missing, not a list, empty, or longer than "
            f"{MAX_BATCH_ITEMS} (`too_many`); nothing was stored.",
        ),
        "503": _STORAGE_UNAVAILABLE,
        "default": _DEFAULT,
    },
}

_LIST_MESSAGES: Final[Schema] = {
    "operationId": "listMessages",
    "tags": ["messages"],
    "summary": "List messages, newest first",
    "description": "Optionally filtered by recipient and status. Pages are at most `limit` "
    "long; follow `next_cursor` until it is null to see them all.",
    "parameters": [
        {
            "name": "to_number",
            "in": "query",
            "required": False,
            "description": "Only messages to this number, written in any format `POST "
            "/messages` accepts. An invalid number: `422`.",
            "schema": {"type": "string"},
        },
        {
            "name": "status",
            "in": "query",
            "required": False,
            "description": "Only messages in this status. Anything else: `422`.",
            "schema": _ref("MessageStatus"),
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"Page size, 1 to {LIST_LIMIT_MAX}. Anything else: `422`.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": LIST_LIMIT_MAX,
                "default": LIST_LIMIT_DEFAULT,
            },
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "`next_cursor` from the previous page. Opaque.",
            "schema": {"type": "string"},
        },
    ],
    "responses": {
        "200": _json(_ref("MessagePage"), "A page of messages (possibly empty)."),
        "422": _problem(
            422,
            ["validation_failed"],
            "A query parameter is invalid (present but empty counts: `status=` is not a "
            "status); `errors` lists each one.",
        ),
        "503": _STORAGE_UNREADABLE,
        "default": _DEFAULT,
    },
}

_GET_MESSAGE: Final[Schema] = {
    "operationId": "getMessage",
    "tags": ["messages"],
    "summary": "Get one message with its attempts and history",
    "description": "The message, every provider call made for it (`attempts`) and every "
    "status change (`history`), oldest first. With `wait`, a long poll: the answer is held "
    "until the status differs from `status` (default: the status when the request "
    "arrived) or `wait` seconds pass, and comes at once if the message is final.",
    "parameters": [
        _ID_PARAM,
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": f"Seconds to wait for a status change, 0 to {MAX_WAIT:g} "
            "(decimals allowed). Anything else: `422`.",
            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT, "default": 0},
        },
        {
            "name": "status",
            "in": "query",
            "required": False,
            "description": "With `wait`: the status the client last saw; a message in any "
            "other status is answered at once, so no change between two polls is missed. "
            "Anything that is not a status: `422`.",
            "schema": _ref("MessageStatus"),
        },
    ],
    "responses": {
        "200": _json(_ref("MessageDetail"), "The message."),
        "404": _problem(404, ["message_not_found"], "No message has this id."),
        "422": _problem(
            422,
            ["validation_failed"],
            "`wait` is not a number from 0 to 60, or `status` is not a status; `errors` "
            "lists each one.",
        ),
        "503": _STORAGE_UNREADABLE,
        "default": _DEFAULT,
    },
}

_MESSAGE_EVENTS: Final[Schema] = {
    "operationId": "getMessageEvents",
    "tags": ["messages"],
    "summary": "Follow a message's status changes as Server-Sent Events",
    "description": "A `text/event-stream`: first every status change so far, then each "
    "new one as it happens; the stream ends after a final status. Each change is an "
    "event `status` whose `id` is its index in the message's `history` and whose `data` "
    "is a `StatusEvent` JSON object; history entries that keep the status (a report on "
    "a final message) are not sent. A comment line `: keep-alive` comes every "
    f"{HEARTBEAT:g} seconds of silence. A reconnecting client sends `Last-Event-ID` and "
    "gets only the later changes. When dispatchd shuts down the stream ends early; "
    "reconnect with `Last-Event-ID`.",
    "parameters": [
        _ID_PARAM,
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "The `id` of the last event received: only later changes are "
            "sent. Not a whole number up to 999999999: `422`.",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID},
        },
    ],
    "responses": {
        "200": {
            "description": "The event stream, e.g. `event: status`, `id: 2`, `data: "
            '{"id": "...", "status": "sent", "at": "...", "detail": "via provider1", '
            '"final": false}`, each event ended by a blank line.',
            "headers": {
                "Cache-Control": {
                    "description": "Always `no-cache`.",
                    "required": True,
                    "schema": {"type": "string", "const": "no-cache"},
                }
            },
            # OpenAPI 3.1 has no item schema for streams: `schema` describes each event as
            # an SSE parser reads it, its `data` a JSON-encoded StatusEvent.
            "content": {
                EVENT_STREAM: {
                    "schema": {
                        "type": "object",
                        "description": "One event, as Server-Sent Events parsers read it.",
                        "required": ["event", "id", "data"],
                        "properties": {
                            "event": {"const": "status"},
                            "id": {"type": "string", "pattern": "^[0-9]+$"},
                            "data": {
                                "type": "string",
                                "contentMediaType": JSON,
                                "contentSchema": _ref("StatusEvent"),
                            },
                        },
                    }
                }
            },
        },
        "404": _problem(
            404, ["message_not_found"], "No message has this id (answered before any stream)."
        ),
        "422": _problem(
            422, ["validation_failed"], "`Last-Event-ID` is not a whole number up to 999999999."
        ),
        "503": _problem(
            503,
            ["storage_unavailable"],
            "The database cannot be read right now (an I/O error, or dispatchd is shutting "
            "down), before any stream. Retry after `Retry-After` seconds. Once the stream has "
            "begun, a failure ends it instead: reconnect with `Last-Event-ID`.",
            retry_after=True,
        ),
        "default": _DEFAULT,
    },
}

_REPORT_BY_ID: Final[Schema] = {
    "operationId": "reportDeliveryStatus",
    "tags": ["delivery reports"],
    "summary": "Receive a provider's delivery report",
    "description": "Providers call this URL, which dispatchd hands them as `callback_url` "
    "with each message, to say whether the message reached the phone. Reports are "
    "idempotent and final statuses never change.",
    "parameters": [_ID_PARAM, _TOKEN_PARAM],
    "requestBody": _report_body(),
    "responses": {
        "204": _REPORT_204,
        "400": _MALFORMED,
        "401": _INVALID_TOKEN,
        "404": _problem(
            404, ["message_not_found"], "The token is right but no message has this id."
        ),
        "413": _BODY_TOO_LARGE,
        "415": _UNSUPPORTED,
        "422": _REPORT_INVALID,
        "503": _STORAGE_UNAVAILABLE,
        "default": _DEFAULT,
    },
}

_REPORT_BY_PROVIDER_ID: Final[Schema] = {
    "operationId": "reportDeliveryStatusByProviderId",
    "tags": ["delivery reports"],
    "summary": "Receive a delivery report matched on the provider's message id",
    "description": "Seed-compatible variant of `POST /messages/{id}/delivery_status`: the "
    "message is found by the provider's `message_id`, then the token is checked against it. "
    "It only works once dispatchd has recorded the provider's `200`, so a report that "
    "outruns it gets `404`; providers should prefer the per-message URL.",
    "parameters": [_TOKEN_PARAM],
    "requestBody": _report_body(),
    "responses": {
        "204": _REPORT_204,
        "400": _MALFORMED,
        "401": _INVALID_TOKEN,
        "404": _problem(
            404,
            ["message_not_found"],
            "No message has this provider message id (yet). Checked before the token.",
        ),
        "413": _BODY_TOO_LARGE,
        "415": _UNSUPPORTED,
        "422": _REPORT_INVALID,
        "503": _STORAGE_UNAVAILABLE,
        "default": _DEFAULT,
    },
}


def _status_body(value: str) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["status"],
        "properties": {"status": {"const": value}},
    }


_HEALTHZ: Final[Schema] = {
    "operationId": "getHealth",
    "tags": ["operations"],
    "summary": "Liveness check",
    "description": "`200` whenever the process is serving HTTP. Use it to decide whether to "
    "restart dispatchd; use `/readyz` to decide whether to send it traffic.",
    "responses": {
        "200": _json(_status_body("ok"), "The process is alive."),
        "default": _DEFAULT,
    },
}

_READYZ: Final[Schema] = {
    "operationId": "getReadiness",
    "tags": ["operations"],
    "summary": "Readiness check",
    "description": "`200` when the message store takes writes and the delivery worker runs, "
    "so a `POST /messages` would be accepted and delivered; `503` otherwise.",
    "responses": {
        "200": _json(_status_body("ready"), "Ready for traffic."),
        "503": _problem(
            503,
            ["not_ready"],
            "Not ready: `detail` says whether the store cannot take writes or the worker "
            "is not running.",
            retry_after=True,
        ),
        "default": _DEFAULT,
    },
}

_OPENAPI: Final[Schema] = {
    "operationId": "getOpenApiDocument",
    "tags": ["operations"],
    "summary": "This API description",
    "description": "This OpenAPI 3.1 document, for tools and code generators.",
    "responses": {
        "200": _json(
            {
                "type": "object",
                "required": ["openapi", "info", "paths", "components"],
                "properties": {"openapi": {"const": "3.1.0"}},
            },
            "The OpenAPI document.",
        ),
        "default": _DEFAULT,
    },
}


_STATUS_CALLBACK_WEBHOOK: Final[Schema] = {
    "post": {
        "operationId": "statusCallback",
        "tags": ["messages"],
        "summary": "A message's status changed (sent by dispatchd to your URL)",
        "description": "dispatchd POSTs this to the message's `status_callback_url` (or "
        "`[webhooks] default_url`) on every status change, in order per message, at least "
        "once: deduplicate on `Dispatchd-Event-Id` (or `id`, `status`, `at`). Answer 2xx "
        "to take it. 5xx, 408, 429, timeouts and connection errors are retried with "
        "backoff; any other answer gives it up at once.",
        "parameters": [
            {
                "name": "Dispatchd-Signature",
                "in": "header",
                "required": True,
                "description": '`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" '
                "under [webhooks] secret>`. Compare in constant time and reject a `t` more "
                "than 5 minutes from your clock.",
                "schema": {"type": "string", "pattern": "^t=[0-9]+,v1=[0-9a-f]{64}$"},
            },
            {
                "name": "Dispatchd-Event-Id",
                "in": "header",
                "required": True,
                "description": "Unique per status change; the same on every retry of it.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": _ref("StatusCallbackBody")}},
        },
        "responses": {"2XX": {"description": "Taken; not sent again."}},
    }
}


# -- authentication, idempotency, metrics -------------------------------------------------

BEARER: Final = "bearerAuth"
_BEARER_SCHEME: Final[Schema] = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key from `[api] keys` (or `keys_file`), sent as "
    "`Authorization: Bearer <key>`. Needed on every route but `/healthz`, `/readyz`, "
    "`/openapi.json` and the provider callbacks (which carry their own token); on "
    "`/metrics` only with `[api] metrics_auth`. A daemon without keys (allowed on a "
    "loopback address only) needs none.",
}

_UNAUTHORIZED: Final[Schema] = {
    **_problem(
        401,
        ["unauthorized"],
        "The API key is missing or wrong (`detail` says which); nothing was done.",
    ),
    "headers": {
        "WWW-Authenticate": {
            "description": '`Bearer realm="dispatchd"`, with `error="invalid_token"` when a '
            "key was sent but is not accepted (RFC 6750).",
            "required": True,
            "schema": {"type": "string", "pattern": '^Bearer realm="dispatchd"'},
        }
    },
}

_IDEMPOTENCY_KEY_PARAM: Final[Schema] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes retrying safe: the first request with this key runs and its "
    "response is kept for `[api] idempotency_ttl` (24 h by default); a repeat with the same "
    "request gets that response again (with `Idempotent-Replayed: true`) and creates "
    "nothing. Same key, different request: `422 idempotency_key_reused`; while the first "
    "is still running: `409 request_in_progress`. Requests are the same when the SHA-256 of "
    "method, path and the parsed body fields (as JSON with sorted keys, so whitespace, key "
    "order and JSON versus form do not matter) is. Keys are per API key; answers that "
    "created nothing (400, 415, 422, 503) are not kept, so fix the request and retry with "
    "the same key. 1 to 255 printable ASCII characters, e.g. a UUID.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[!-~]([ -~]*[!-~])?$",
    },
}

_REPLAYED_HEADER: Final[Schema] = {
    "description": "`true` when this is the kept response to an earlier request with the same "
    "`Idempotency-Key`; absent otherwise.",
    "required": False,
    "schema": {"type": "string", "const": "true"},
}

_IN_PROGRESS: Final = _problem(
    409,
    ["request_in_progress"],
    "A request with this `Idempotency-Key` is still being processed; retry after "
    "`Retry-After` seconds to get its response.",
    retry_after=True,
)


def _idempotent(operation: Schema) -> Schema:
    """`operation` taking an `Idempotency-Key`, with its header, codes and answers."""
    op = copy.deepcopy(operation)
    op["parameters"] = [*op.get("parameters", []), _IDEMPOTENCY_KEY_PARAM]
    responses = op["responses"]
    for status, response in responses.items():
        if status.startswith("2"):
            response.setdefault("headers", {})["Idempotent-Replayed"] = _REPLAYED_HEADER
    bad = responses.get("400", _MALFORMED)
    responses["400"] = _with_codes(
        bad,
        ["invalid_idempotency_key"],
        " `invalid_idempotency_key`: the `Idempotency-Key` header is empty, longer than 255 "
        "characters or not printable ASCII.",
    )
    responses["409"] = _IN_PROGRESS
    responses["422"] = _with_codes(
        responses["422"],
        ["idempotency_key_reused"],
        " `idempotency_key_reused`: the `Idempotency-Key` was used for a different request.",
    )
    return op


def _with_codes(response: Schema, codes: list[str], description: str) -> Schema:
    """A problem answer that may also carry `codes`."""
    out = copy.deepcopy(response)
    schema = out["content"][PROBLEM]["schema"]
    schema["properties"]["code"]["enum"] = [*schema["properties"]["code"]["enum"], *codes]
    out["description"] += description
    return out


_METRICS: Final[Schema] = {
    "operationId": "getMetrics",
    "tags": ["operations"],
    "summary": "Prometheus metrics",
    "description": "Every metric in the Prometheus text format: "
    "`dispatchd_http_requests_total{route,method,code}`, `dispatchd_messages{status}`, "
    "`dispatchd_provider_attempts_total{provider,outcome}`, "
    "`dispatchd_provider_latency_seconds{provider}` (histogram), "
    "`dispatchd_breaker_state{provider}` (0 closed, 1 half-open, 2 open), "
    "`dispatchd_queue_depth` and `dispatchd_oldest_queued_age_seconds`. Open unless "
    "`[api] metrics_auth` is set.",
    # Either an API key or nothing, depending on `[api] metrics_auth`.
    "security": [{BEARER: []}, {}],
    "responses": {
        "200": {
            "description": "The metrics.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        "401": _UNAUTHORIZED,
        "503": _problem(
            503,
            ["storage_unavailable"],
            "The message counts cannot be read from the database right now.",
            retry_after=True,
        ),
        "default": _DEFAULT,
    },
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """`paths` with each operation's `security`: none on open routes, else an API key.

    Protected is the default, as in the daemon (`dispatchd.auth`), so a new route is
    documented as needing a key, with its `401`, unless it is named open there.
    """
    out = copy.deepcopy(paths)
    for path, item in out.items():
        for op in item.values():
            if path in OPEN_PATHS:
                op["security"] = []
            elif "security" not in op:
                op["security"] = [{BEARER: []}]
                op["responses"] = {"401": _UNAUTHORIZED, **op["responses"]}
    return out


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "dispatchd",
            "version": API_VERSION,
            "summary": "SMS dispatch proxy: durable outbox, provider failover, delivery reports.",
            "description": "Hand dispatchd a text message with `POST /messages`; it stores "
            "it durably, delivers it through the configured SMS providers (failing over and "
            "retrying when one has trouble), takes their delivery reports and tells you "
            "where each message stands with `GET /messages/{id}`. Every error is an RFC "
            "9457 problem (`application/problem+json`) with a machine-readable `code`.",
        },
        "tags": [
            {"name": "messages", "description": "Send messages and follow them."},
            {
                "name": "delivery reports",
                "description": "Called by SMS providers, not by applications.",
            },
            {"name": "operations", "description": "Health checks and this document."},
        ],
        "paths": {
            "/messages": {"post": _idempotent(_POST_MESSAGES), "get": _LIST_MESSAGES},
            "/messages/batch": {"post": _idempotent(_POST_BATCH)},
            "/messages/{id}": {"get": _GET_MESSAGE},
            "/messages/{id}/events": {"get": _MESSAGE_EVENTS},
            "/messages/{id}/delivery_status": {"post": _REPORT_BY_ID},
            "/messages/delivery_status": {"post": _REPORT_BY_PROVIDER_ID},
            "/healthz": {"get": _HEALTHZ},
            "/readyz": {"get": _READYZ},
            "/openapi.json": {"get": _OPENAPI},
            "/metrics": {"get": _METRICS},
        },
        "webhooks": {"messageStatus": _STATUS_CALLBACK_WEBHOOK},
        "components": {
            "schemas": _SCHEMAS,
            "headers": _HEADERS,
            "securitySchemes": {BEARER: _BEARER_SCHEME},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of the HTTP API (a fresh copy; built once)."""
    return copy.deepcopy(_secured_document())


@functools.cache
def _secured_document() -> dict[str, Any]:
    doc = _document()
    return {**doc, "paths": _secured(doc["paths"])}
