"""POST /messages/batch: up to MAX_BATCH_ITEMS messages, each accepted or refused on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dispatchd.domain.errors import FieldError, NumberSuppressed, ValidationFailed
from dispatchd.domain.models import Message
from dispatchd.domain.sending import SendRequest
from dispatchd.http.bodies import MAX_BATCH_BODY, parse_body, read_body
from dispatchd.http.deps import DEPS
from dispatchd.http.idempotency import Rendered
from dispatchd.http.problems import Problem, number_suppressed, validation
from dispatchd.http.resources import message_resource
from dispatchd.service import Service

MAX_BATCH_ITEMS = 1000
# Items validated, and results rendered, between two yields to the event loop: a whole
# 1,000-item batch at once held the loop (every other request, the worker, the probes)
# for ~200 ms, mostly phone parsing, smart encoding and segment counting.
CHUNK = 100


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Each item's fate in item order: its new message, or the problem that refused it."""

    items: list[Message | Problem]

    @property
    def messages(self) -> list[Message]:
        return [m for m in self.items if isinstance(m, Message)]


async def post_batch(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    items = await _read_batch(request)
    async with deps.idempotency.request(request, {"messages": items}) as idem:
        if idem.replay is not None:
            return idem.replay
        checked = await _check_items(deps.service, items)
        # From here to the store's queue nothing may await: the new ids are the order of
        # messages to one number, and a concurrent request must not commit a later id first.
        outcome = _prepare(deps.service, checked)
        msgs = outcome.messages
        # A batch that created nothing is not kept, like a refused POST /messages; a kept
        # answer is rendered at once, the bytes kept being the bytes sent.
        rendered = _render(outcome) if idem.key is not None and msgs else None
        await deps.service.accept(msgs, idem.save(rendered) if rendered is not None else None)
        if rendered is None:
            rendered = await _render_in_chunks(outcome)
        return rendered.response()


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


async def _check_items(service: Service, items: list[Any]) -> list[SendRequest | Problem]:
    """Every item validated, CHUNK at a time, yielding to the loop between chunks."""
    checked: list[SendRequest | Problem] = []
    for start in range(0, len(items), CHUNK):
        await asyncio.sleep(0)  # the first too: parsing and hashing the body came just before
        chunk = enumerate(items[start : start + CHUNK], start)
        checked += [_check_item(service, index, item) for index, item in chunk]
    return checked


def _prepare(service: Service, checked: list[SendRequest | Problem]) -> BatchOutcome:
    """Each valid item's message, all created at one time; a suppressed number's items are
    refused alone (checked after the last yield, so an operator's change counts)."""
    now = service.now()
    out: list[Message | Problem] = []
    for item in checked:
        if isinstance(item, Problem):
            out.append(item)
            continue
        try:
            out.append(service.prepare(item, now))
        except NumberSuppressed as exc:
            out.append(number_suppressed(exc))
    return BatchOutcome(out)


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
        return service.validate(item)
    except ValidationFailed as exc:
        return validation(exc.errors)


def _results(outcome: BatchOutcome) -> Iterator[dict[str, Any]]:
    """Each item's 202 message or 422 problem, in item order."""
    for index, item in enumerate(outcome.items):
        if isinstance(item, Problem):
            yield {"index": index, "status": item.status, "problem": item.body()}
        else:
            yield {"index": index, "status": 202, "message": message_resource(item)}


def _assemble(outcome: BatchOutcome, results: list[str]) -> Rendered:
    """The batch's 200 from its results' JSON: what json.dumps of the whole would give."""
    accepted = len(outcome.messages)
    rejected = len(outcome.items) - accepted
    head = f'{{"accepted": {accepted}, "rejected": {rejected}, "results": ['
    return Rendered(200, head + ", ".join(results) + "]}")


async def _render_in_chunks(outcome: BatchOutcome) -> Rendered:
    results: list[str] = []
    for result in _results(outcome):
        if results and len(results) % CHUNK == 0:
            await asyncio.sleep(0)
        results.append(json.dumps(result))
    return _assemble(outcome, results)


def _render(outcome: BatchOutcome) -> Rendered:
    """The batch's 200: counts, then each item's 202 message or 422 problem, in order."""
    return _assemble(outcome, [json.dumps(result) for result in _results(outcome)])
