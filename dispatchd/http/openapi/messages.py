"""The message operations (send, batch, list, get, follow) and the status callback webhook."""

from __future__ import annotations

from typing import Final

from dispatchd.http.batches import MAX_BATCH_ITEMS
from dispatchd.http.openapi.common import (
    _BODY_TOO_LARGE,
    _DEFAULT,
    _ID_PARAM,
    _MALFORMED,
    _STORAGE_UNAVAILABLE,
    _STORAGE_UNREADABLE,
    _UNSUPPORTED,
    EVENT_STREAM,
    FORM,
    JSON,
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    Schema,
    _json,
    _problem,
    _ref,
)
from dispatchd.http.watch import HEARTBEAT, MAX_EVENT_ID, MAX_WAIT

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
