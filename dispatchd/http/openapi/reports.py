"""The delivery report operations providers call, with their token, body and answers."""

from __future__ import annotations

from typing import Final

from dispatchd.http.openapi.common import (
    _BODY_TOO_LARGE,
    _DEFAULT,
    _ID_PARAM,
    _MALFORMED,
    _STORAGE_UNAVAILABLE,
    _UNSUPPORTED,
    FORM,
    JSON,
    Schema,
    _problem,
    _ref,
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


_REPORT_204: Final[Schema] = {
    "description": "Report taken. If the message was not final, its status changed (an "
    "`invalid` report also suppresses the number); if it was already final, or this is a "
    "duplicate, the report is only recorded in `history`. Either way, do not resend it."
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

_PROVIDER_NAME_PARAM: Final[Schema] = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The provider's `name` in the configuration.",
    "schema": {"type": "string"},
}
_MESSAGE_PARAM: Final[Schema] = {
    "name": "message",
    "in": "query",
    "required": False,
    "description": "The dispatchd message id, in the per-message URL dispatchd hands the "
    "provider with each message (with `token`). Without it, the report is matched on the "
    "provider's own message id: for reports sent to an account- or application-level URL.",
    "schema": {"type": "string"},
}

_PROVIDER_REPORTS: Final[Schema] = {
    "operationId": "receiveProviderReports",
    "tags": ["delivery reports"],
    "summary": "Receive delivery reports in a provider's own format",
    "description": "For providers of a real kind (`twilio`, ...): the body is the "
    "provider's status callback as it sends it (Twilio: form-encoded `MessageSid`, "
    "`MessageStatus`, `ErrorCode`). Where the provider signs its webhooks the signature is "
    "verified (Twilio: `X-Twilio-Signature` over the URL as called and the parameters); a "
    "per-message URL's `token` is checked too. The provider's status words are mapped to "
    "dispatchd's statuses as the README's table says; intermediate ones are only recorded "
    "in `history`.",
    "parameters": [_PROVIDER_NAME_PARAM, _MESSAGE_PARAM, {**_TOKEN_PARAM, "required": False}],
    "requestBody": {
        "required": True,
        "content": {
            FORM: {"schema": {"type": "object", "additionalProperties": {"type": "string"}}},
            JSON: {"schema": {"type": "object"}},
        },
    },
    "responses": {
        "204": _REPORT_204,
        "400": _problem(
            400,
            ["malformed_report", "malformed_request"],
            "The body is not a report this provider's kind can read.",
        ),
        "401": _INVALID_TOKEN,
        "403": _problem(
            403,
            ["invalid_signature"],
            "The provider's signature is missing, wrong or stale; nothing was changed.",
        ),
        "404": _problem(
            404,
            ["message_not_found"],
            "No provider by this name takes reports here, or no message is known by the "
            "report's id.",
        ),
        "413": _BODY_TOO_LARGE,
        "503": _STORAGE_UNAVAILABLE,
        "default": _DEFAULT,
    },
}
