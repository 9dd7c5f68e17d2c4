"""The operations endpoints: liveness, readiness, this document and Prometheus metrics."""

from __future__ import annotations

from typing import Final

from dispatchd.http.openapi.common import (
    _DEFAULT,
    Schema,
    _json,
    _problem,
)
from dispatchd.http.openapi.security import _UNAUTHORIZED, BEARER


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
