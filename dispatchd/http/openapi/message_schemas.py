"""Component schemas of a message as clients see it: status, attempts, history, callbacks."""

from __future__ import annotations

from typing import Final

from dispatchd.domain.encoding import Encoding
from dispatchd.domain.models import ErrorCode, Outcome, Status
from dispatchd.domain.sending import MAX_VALIDITY
from dispatchd.http.openapi.common import (
    _TIMESTAMP,
    E164_PATTERN,
    Schema,
    _nullable,
    _ref,
)

# -- schemas ------------------------------------------------------------------------------

_STATUS_HELP = {
    Status.QUEUED: "stored and waiting for the worker (also after a failed attempt, until "
    "`next_attempt_at`)",
    Status.SENDING: "a provider call is in flight",
    Status.SENT: "a provider accepted it; waiting for its delivery report (at most "
    "`[delivery] report_timeout` seconds, then `unknown`)",
    Status.DELIVERED: "final: the provider reported it delivered",
    Status.FAILED: "final: no provider would take it after every attempt, or the provider "
    "reported it undelivered",
    Status.INVALID: "final: the number was reported invalid (and is now suppressed)",
    Status.EXPIRED: "final: no provider accepted it within `max_age` seconds of acceptance",
    Status.UNKNOWN: "final: a provider accepted it but no delivery report came within "
    "`[delivery] report_timeout` (72 h by default); whether it arrived is unknown. A report "
    "that comes later is recorded in `history` and does not change the status",
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
            "`reported_failed`, `reported_invalid` (from a delivery report), `report_timeout` "
            "(status `unknown`: no report came in time).",
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
