"""Constants, schema helpers and the responses and parameters many operations share."""

from __future__ import annotations

from typing import Any, Final

from dispatchd.domain.sending import MAX_SCHEDULE_AHEAD
from dispatchd.http.bodies import MAX_NESTING

API_VERSION: Final = "0.1.0"
E164_PATTERN: Final = r"^\+[1-9][0-9]{1,14}$"
# Must match http.problems and http.app (the app imports this module, not the reverse).
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
