"""Live status: long polling (GET /messages/{id}?wait=) and Server-Sent Events (/events)."""

from __future__ import annotations

import asyncio
import re

from aiohttp import hdrs, web

from dispatchd.domain.errors import FieldError, StoreUnavailable
from dispatchd.domain.models import HistoryEntry, Status
from dispatchd.http.bodies import status_param, whole_number
from dispatchd.http.connections import connection_gone, on_connection_lost
from dispatchd.http.deps import DEPS, WebDeps
from dispatchd.http.problems import validation
from dispatchd.http.resources import message_resource, no_such_message
from dispatchd.http.watch import (
    HEARTBEAT,
    HEARTBEAT_LINE,
    MAX_EVENT_ID,
    MAX_WAIT,
    Watch,
    status_changes,
    status_event,
)


async def get_message(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    wait, seen = _wait_params(request)
    msg_id = request.match_info["id"]
    # Registered before the first read, so a change committed after it always wakes us.
    # A client that hangs up wakes it too, so its watch and handler end then, not after
    # the whole wait: a client dropping polls in a loop would otherwise pile them up.
    with deps.watchers.watch(msg_id) as watch, on_connection_lost(request, watch.wake):
        msg = await deps.service.get(msg_id)
        if msg is None:
            raise no_such_message(msg_id)
        baseline = seen or msg.status
        waits = wait > 0 and msg.status is baseline and not msg.status.final
        if waits and await _until_status_changes(request, deps, watch, baseline, wait):
            msg = await deps.service.get(msg_id) or msg
    return web.json_response(message_resource(msg, detailed=True))


async def _until_status_changes(
    request: web.Request, deps: WebDeps, watch: Watch, baseline: Status, wait: float
) -> bool:
    """Wait up to `wait` seconds for the status to leave `baseline`; False if nothing woke us
    (or the client left: the answer would reach no one)."""
    # A woken watch reads only the status (one small query); the caller reads the whole
    # message once, at the end.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    woken = False
    while (left := deadline - loop.time()) > 0 and await watch.wait(left):
        if connection_gone(request):
            return False
        woken = True
        if await deps.service.status(watch.msg_id) is not baseline:
            break
    return woken or deps.watchers.closed


# A decimal or scientific number: what clients (and JSON encoders) write for seconds.
_SECONDS = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _wait_params(request: web.Request) -> tuple[float, Status | None]:
    """`wait` (seconds to hold the answer) and `status` (the status the client last saw)."""
    q = request.query
    errors: list[FieldError] = []
    wait = 0.0
    if "wait" in q:
        raw = q["wait"]
        value = float(raw) if len(raw) <= 32 and _SECONDS.fullmatch(raw) else -1.0
        if 0 <= value <= MAX_WAIT:
            wait = value
        else:
            errors.append(
                FieldError(
                    "wait",
                    "out_of_range",
                    f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, such as 30 or 2.5.",
                )
            )
    seen = status_param(q, errors)
    if errors:
        raise validation(errors)
    return wait, seen


def _last_event_id(request: web.Request) -> int:
    """The `Last-Event-ID` a reconnecting client sends; -1 when absent (start from the top)."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        return -1
    event_id = whole_number(raw.strip(), max_digits=10)
    if event_id is not None and event_id <= MAX_EVENT_ID:
        return event_id
    raise validation(
        [
            FieldError(
                "Last-Event-ID",
                "out_of_range",
                "Last-Event-ID must be the id of an event this stream sent: a whole number "
                f"from 0 to {MAX_EVENT_ID}.",
            )
        ]
    )


async def message_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the message's status changes so far, then each as it happens."""
    deps = request.app[DEPS]
    after = _last_event_id(request)
    msg_id = request.match_info["id"]
    service = deps.service
    # A client that hangs up wakes the watch, ending the stream at once rather than at
    # the next heartbeat (the first write that would fail).
    with deps.watchers.watch(msg_id) as watch, on_connection_lost(request, watch.wake):
        history = await service.history(msg_id)
        if not history and await service.status(msg_id) is None:
            raise no_such_message(msg_id)
        response = web.StreamResponse(
            headers={
                hdrs.CONTENT_TYPE: "text/event-stream",
                hdrs.CACHE_CONTROL: "no-cache",
                # nginx buffers proxied responses unless told not to.
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        if request.method == hdrs.METH_HEAD:
            return response  # no body would ever reach the client: do not hold the handler
        try:
            await _stream(request, response, deps, watch, history, after)
            if not connection_gone(request):
                await response.write_eof()
        except (ConnectionResetError, StoreUnavailable):
            # The client left, or the store failed mid-stream: the headers are sent, so no
            # problem+json now; a client resumes with Last-Event-ID.
            pass
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    deps: WebDeps,
    watch: Watch,
    history: tuple[HistoryEntry, ...],
    after: int,
) -> None:
    """Write status events until one is final, the server stops or the client leaves;
    heartbeats meanwhile."""
    while True:
        for index, entry in status_changes(history, after):
            await response.write(status_event(watch.msg_id, index, entry))
            after = index
            if entry.status.final:
                return
        # Final with nothing left to send: the client had seen it all (Last-Event-ID).
        if (history and history[-1].status.final) or deps.watchers.closed:
            return
        woken = await watch.wait(HEARTBEAT)
        if connection_gone(request):
            return
        if not woken:
            if deps.watchers.closed:
                return
            await response.write(HEARTBEAT_LINE)
            continue  # nothing woke us, so nothing changed
        history = await deps.service.history(watch.msg_id)
