"""API-key security and idempotency, added to the operations that need them."""

from __future__ import annotations

import copy
from typing import Any, Final

from dispatchd.http.auth import OPEN_PATHS
from dispatchd.http.openapi.common import (
    _MALFORMED,
    PROBLEM,
    Schema,
    _problem,
)

# -- authentication and idempotency -------------------------------------------------

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


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """`paths` with each operation's `security`: none on open routes, else an API key.

    Protected is the default, as in the daemon (`dispatchd.http.auth`), so a new route is
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
