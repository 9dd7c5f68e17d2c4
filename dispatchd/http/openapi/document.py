"""Assembles the OpenAPI document from the schemas, operations and security parts."""

from __future__ import annotations

import copy
import functools
from typing import Any, Final

from dispatchd.http.openapi.common import _HEADERS, API_VERSION, Schema
from dispatchd.http.openapi.message_schemas import (
    _ATTEMPT,
    _HISTORY_ENTRY,
    _MESSAGE,
    _MESSAGE_DETAIL,
    _MESSAGE_ERROR,
    _MESSAGE_PAGE,
    _MESSAGE_STATUS,
    _STATUS_CALLBACK,
    _STATUS_CALLBACK_BODY,
    _STATUS_EVENT,
)
from dispatchd.http.openapi.messages import (
    _GET_MESSAGE,
    _LIST_MESSAGES,
    _MESSAGE_EVENTS,
    _POST_BATCH,
    _POST_MESSAGES,
    _STATUS_CALLBACK_WEBHOOK,
)
from dispatchd.http.openapi.operations import _HEALTHZ, _METRICS, _OPENAPI, _READYZ
from dispatchd.http.openapi.reports import (
    _PROVIDER_REPORTS,
    _REPORT_BY_ID,
    _REPORT_BY_PROVIDER_ID,
)
from dispatchd.http.openapi.request_schemas import (
    _BATCH_REQUEST,
    _BATCH_RESPONSE,
    _BATCH_RESULT,
    _DELIVERY_REPORT,
    _FIELD_ERROR,
    _PROBLEM,
    _SEND_REQUEST,
)
from dispatchd.http.openapi.security import _BEARER_SCHEME, BEARER, _idempotent, _secured

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
            "/providers/{name}/reports": {"post": _PROVIDER_REPORTS},
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
