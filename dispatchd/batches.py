"""POST /messages/batch: up to MAX_BATCH_ITEMS messages, each accepted or refused on its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dispatchd.bodies import parse_body, read_body, validate_send, validation
from dispatchd.idempotency import Rendered
from dispatchd.models import Message
from dispatchd.problems import Problem
from dispatchd.resources import message_resource, number_suppressed
from dispatchd.service import FieldError, NumberSuppressed, SendRequest, Service
from dispatchd.store import SavedResponse
from dispatchd.webdeps import DEPS, IDEMPOTENCY

# POST /messages/batch alone may send this much (1,000 messages); the app-wide
# client_max_size is this, and every other route is held to MAX_BODY in bodies.read_body.
MAX_BATCH_BODY = 2 * 1024 * 1024
MAX_BATCH_ITEMS = 1000


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Each item's fate in item order (its send, or why not), and the messages created."""

    checked: list[SendRequest | Problem]
    messages: list[Message]


async def post_batch(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    items = await _read_batch(request)

    async def accept(save: Callable[[BatchOutcome], SavedResponse] | None) -> BatchOutcome:
        checked = [_check_item(service, index, item) for index, item in enumerate(items)]
        sends = [c for c in checked if isinstance(c, SendRequest)]
        # A batch that created nothing is not kept, like a refused POST /messages.
        keep = None if save is None or not sends else _keep_batch(save, checked)
        msgs = await service.accept_many(sends, save_response=keep)
        return BatchOutcome(checked, msgs)

    return await request.app[IDEMPOTENCY].run(request, {"messages": items}, accept, _batch_body)


async def _read_batch(request: web.Request) -> list[Any]:
    """The `messages` list of a batch: JSON only, 1 to MAX_BATCH_ITEMS items."""
    ctype = request.content_type
    if not (ctype == "application/json" or ctype.endswith("+json")):
        raise Problem(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            f"Send a batch as application/json, not {ctype}.",
        )
    data = parse_body(await read_body(request, MAX_BATCH_BODY), is_json=True)
    items = data.get("messages")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise validation([_batch_list_error(items)])
    return items


def _batch_list_error(items: Any) -> FieldError:
    """What is wrong with a batch's `messages` field."""
    if items is None:
        return FieldError("messages", "missing", "messages is required: a list of messages.")
    if not isinstance(items, list):
        return FieldError("messages", "not_a_list", "messages must be a list of messages.")
    if not items:
        return FieldError("messages", "empty", "messages must hold at least one message.")
    return FieldError(
        "messages",
        "too_many",
        f"messages holds {len(items)} messages; at most {MAX_BATCH_ITEMS} are allowed "
        "in one batch.",
    )


def _keep_batch(
    save: Callable[[BatchOutcome], SavedResponse], checked: list[SendRequest | Problem]
) -> Callable[[list[Message]], SavedResponse]:
    """The service's save_response for a batch: the whole batch answer, rendered once."""
    return lambda msgs: save(BatchOutcome(checked, msgs))


def _check_item(service: Service, index: int, item: Any) -> SendRequest | Problem:
    """One batch item validated like a POST /messages body, or the problem it would get."""
    if not isinstance(item, dict):
        return validation(
            [
                FieldError(
                    f"messages[{index}]",
                    "not_an_object",
                    f"messages[{index}] must be an object with to_number and message.",
                )
            ]
        )
    try:
        send = validate_send(service, item)
        service.check_not_suppressed(send.to_number)
    except Problem as problem:
        return problem
    except NumberSuppressed as exc:
        return number_suppressed(exc)
    return send


def _batch_body(outcome: BatchOutcome) -> Rendered:
    """The batch's 200: counts, then each item's 202 message or 422 problem, in order."""
    created = iter(outcome.messages)
    results: list[dict[str, Any]] = []
    for index, item in enumerate(outcome.checked):
        if isinstance(item, Problem):
            results.append({"index": index, "status": item.status, "problem": item.body()})
        else:
            resource = message_resource(next(created))
            results.append({"index": index, "status": 202, "message": resource})
    accepted = len(outcome.messages)
    rejected = len(outcome.checked) - accepted
    body = {"accepted": accepted, "rejected": rejected, "results": results}
    return Rendered(200, json.dumps(body))
