"""POST /messages/batch: up to MAX_BATCH_ITEMS messages, each accepted or refused on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dispatchd.domain.models import Message
from dispatchd.http.bodies import parse_body, read_body, validate_send, validation
from dispatchd.http.deps import DEPS, IDEMPOTENCY
from dispatchd.http.idempotency import Rendered
from dispatchd.http.problems import Problem
from dispatchd.http.resources import message_resource, number_suppressed
from dispatchd.service import FieldError, NumberSuppressed, SendRequest, Service
from dispatchd.store.sqlite import SavedResponse

# POST /messages/batch alone may send this much (1,000 messages); the app-wide
# client_max_size is this, and every other route is held to MAX_BODY in bodies.read_body.
MAX_BATCH_BODY = 2 * 1024 * 1024
MAX_BATCH_ITEMS = 1000
# Items validated, and results rendered, between two yields to the event loop: a whole
# 1,000-item batch at once held the loop (every other request, the worker, the probes)
# for ~200 ms, mostly phone parsing, smart encoding and segment counting.
CHUNK = 100


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Each item's fate in item order (its send, or why not), the messages created, and
    the answer when it was rendered ahead (in chunks, see `accept`)."""

    checked: list[SendRequest | Problem]
    messages: list[Message]
    rendered: Rendered | None = None


async def post_batch(request: web.Request) -> web.Response:
    service = request.app[DEPS].service
    items = await _read_batch(request)

    async def accept(save: Callable[[BatchOutcome], SavedResponse] | None) -> BatchOutcome:
        checked = await _check_items(service, items)
        sends = [c for c in checked if isinstance(c, SendRequest)]
        # A batch that created nothing is not kept, like a refused POST /messages.
        keep = None if save is None or not sends else _keep_batch(save, checked)
        msgs = await service.accept_many(sends, save_response=keep)
        if keep is not None:
            # Rendered inside accept_many, at once: between the new messages' ids and their
            # place in the write queue nothing else may run, or a concurrent request to the
            # same number could commit a later id first (ids are the per-number order).
            return BatchOutcome(checked, msgs)
        # Nothing to keep: render after the write, in chunks.
        return BatchOutcome(checked, msgs, await _render_in_chunks(BatchOutcome(checked, msgs)))

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


async def _check_items(service: Service, items: list[Any]) -> list[SendRequest | Problem]:
    """Every item validated, CHUNK at a time; then, at once, whether its number is refused."""
    checked: list[SendRequest | Problem] = []
    for start in range(0, len(items), CHUNK):
        await asyncio.sleep(0)  # the first too: parsing and hashing the body came just before
        chunk = enumerate(items[start : start + CHUNK], start)
        checked += [_check_item(service, index, item) for index, item in chunk]
    # Checked after the last yield (a set lookup each), so a number an operator suppressed
    # meanwhile is refused for its items alone, not by accept_many for the whole batch.
    return [_not_suppressed(service, c) for c in checked]


def _not_suppressed(service: Service, item: SendRequest | Problem) -> SendRequest | Problem:
    if isinstance(item, SendRequest):
        try:
            service.check_not_suppressed(item.to_number)
        except NumberSuppressed as exc:
            return number_suppressed(exc)
    return item


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
        return validate_send(service, item)
    except Problem as problem:
        return problem


def _results(outcome: BatchOutcome) -> Iterator[dict[str, Any]]:
    """Each item's 202 message or 422 problem, in item order."""
    created = iter(outcome.messages)
    for index, item in enumerate(outcome.checked):
        if isinstance(item, Problem):
            yield {"index": index, "status": item.status, "problem": item.body()}
        else:
            yield {"index": index, "status": 202, "message": message_resource(next(created))}


def _assemble(outcome: BatchOutcome, results: list[str]) -> Rendered:
    """The batch's 200 from its results' JSON: what json.dumps of the whole would give."""
    accepted = len(outcome.messages)
    rejected = len(outcome.checked) - accepted
    head = f'{{"accepted": {accepted}, "rejected": {rejected}, "results": ['
    return Rendered(200, head + ", ".join(results) + "]}")


async def _render_in_chunks(outcome: BatchOutcome) -> Rendered:
    results: list[str] = []
    for result in _results(outcome):
        if results and len(results) % CHUNK == 0:
            await asyncio.sleep(0)
        results.append(json.dumps(result))
    return _assemble(outcome, results)


def _batch_body(outcome: BatchOutcome) -> Rendered:
    """The batch's 200: counts, then each item's 202 message or 422 problem, in order."""
    if outcome.rendered is not None:
        return outcome.rendered
    return _assemble(outcome, [json.dumps(result) for result in _results(outcome)])
