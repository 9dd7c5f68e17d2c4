"""RFC 9457 problem details: the one shape every error answer of dispatchd takes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from dispatchd.domain.errors import FieldError, NumberSuppressed

PROBLEM_TYPE = "https://dispatchd.dev/problems/"


class Problem(Exception):
    """An RFC 9457 problem to send back instead of the normal response."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.errors = errors
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/problem+json",
            headers=self.headers,
        )

    def body(self) -> dict[str, Any]:
        """The problem as a JSON object (also embedded in batch results)."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors is not None:
            body["errors"] = [
                {"field": e.field, "code": e.code, "message": e.message} for e in self.errors
            ]
        return body


def validation(errors: list[FieldError]) -> Problem:
    """The 422 listing every invalid field."""
    return Problem(
        422,
        "validation_failed",
        "The request has invalid fields",
        " ".join(e.message for e in errors),
        errors=errors,
    )


def number_suppressed(exc: NumberSuppressed) -> Problem:
    """The 422 for a number that takes no messages."""
    return Problem(422, "number_suppressed", "Number suppressed", exc.message)
