"""The middleware that turns every error into problem+json, for the API and the control socket."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dispatchd.domain.errors import NumberSuppressed, StoreUnavailable, ValidationFailed
from dispatchd.http.bodies import MAX_BATCH_BODY
from dispatchd.http.problems import Problem, number_suppressed, validation

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


_HTTP_PROBLEMS = {
    404: ("not_found", "Not found", "There is nothing at this URL."),
    405: ("method_not_allowed", "Method not allowed", "This URL does not accept that method."),
    413: (
        "payload_too_large",
        "Request body too large",
        f"The request body is larger than {MAX_BATCH_BODY // (1024 * 1024)} MiB.",
    ),
}


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every error into problem+json; never let a traceback reach the client."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response()
    except ValidationFailed as exc:
        return validation(exc.errors).response()
    except NumberSuppressed as exc:
        return number_suppressed(exc).response()
    except StoreUnavailable as exc:
        return Problem(
            503,
            "storage_unavailable",
            "Storage unavailable",
            f"The message store cannot take writes right now ({exc.message}); try again shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title, detail = _HTTP_PROBLEMS.get(
            exc.status, (f"http_{exc.status}", exc.reason, exc.text or exc.reason)
        )
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return Problem(exc.status, code, title, detail, headers=headers).response()
    except Exception:
        logger.exception("event=internal_error path=%s", request.path)
        return Problem(
            500,
            "internal_error",
            "Internal error",
            "dispatchd hit an unexpected error; it has been logged.",
        ).response()
