"""Simulated SMS providers speaking the real providers' wire format.

`POST /{name}` with JSON `{"to_number", "message", "callback_url"}` answers
`200 {"message_id": "<uuid4>"}`, or `500 {"error": "Something went wrong"}` for a
`failure_rate` share of requests, after `latency` seconds; `callback_delay`
seconds later it POSTs `{"status", "message_id"}` to `callback_url`. Statuses are
drawn from the delivered/failed/invalid weights, except that numbers ending in
`invalid_suffix` (default `0000`) are always reported `invalid`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from dispatchd.config import SimulatorConfig

logger = logging.getLogger(__name__)


@dataclass
class SimulatorState:
    """Live, mutable behaviour of the simulated providers (tests may change it at run time)."""

    settings: SimulatorConfig
    rng: random.Random = field(default_factory=random.Random)
    received: list[dict[str, str]] = field(default_factory=list)
    keep_received: bool = False

    def report_status(self, to_number: str) -> str:
        suffix = self.settings.invalid_suffix
        if suffix and to_number.endswith(suffix):
            return "invalid"
        s = self.settings
        return self.rng.choices(
            ("delivered", "failed", "invalid"), weights=(s.delivered, s.failed, s.invalid)
        )[0]


STATE = web.AppKey("simulator_state", SimulatorState)
SESSION = web.AppKey("simulator_session", aiohttp.ClientSession)
CALLBACKS = web.AppKey[set[asyncio.Task[None]]]("simulator_callbacks")


def _bad_request(detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=400)


async def _send(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        data = json.loads(await request.read())
    except ValueError:
        return _bad_request("body must be JSON")
    if not isinstance(data, dict):
        return _bad_request("body must be a JSON object")
    fields = ("to_number", "message", "callback_url")
    missing = [f for f in fields if not isinstance(data.get(f), str) or not data[f]]
    if missing:
        return _bad_request(f"missing or non-string fields: {', '.join(missing)}")
    settings = state.settings
    if settings.latency:
        await asyncio.sleep(settings.latency)
    if state.rng.random() < settings.failure_rate:
        return web.json_response({"error": "Something went wrong"}, status=500)
    message_id = str(uuid.UUID(int=state.rng.getrandbits(128), version=4))
    if state.keep_received:
        record = {f: data[f] for f in fields}
        state.received.append(
            {**record, "provider": request.match_info["name"], "message_id": message_id}
        )
    status = state.report_status(data["to_number"])
    task = asyncio.create_task(
        _call_back(request.app, data["callback_url"], status, message_id, settings.callback_delay),
        name=f"simulator-callback-{message_id}",
    )
    callbacks = request.app[CALLBACKS]
    callbacks.add(task)
    task.add_done_callback(callbacks.discard)
    return web.json_response({"message_id": message_id})


async def _call_back(
    app: web.Application, url: str, status: str, message_id: str, delay: float
) -> None:
    if delay:
        await asyncio.sleep(delay)
    payload = {"status": status, "message_id": message_id}
    try:
        async with app[SESSION].post(
            url, json=payload, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        # A real provider might retry; the simulator just says so.
        # The URL carries the callback token, so only the id is logged.
        logger.warning("event=simulator_callback_failed message_id=%s error=%r", message_id, exc)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession()
    app[CALLBACKS] = set()
    yield
    pending: set[asyncio.Task[None]] = app[CALLBACKS]
    for task in list(pending):
        task.cancel()
    # Awaited so no callback outlives the session it would post with.
    await asyncio.gather(*pending, return_exceptions=True)
    await app[SESSION].close()


async def _ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def make_simulator_app(state: SimulatorState) -> web.Application:
    """Simulated providers at `POST /{name}`; any name works."""
    app = web.Application()
    app[STATE] = state
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/{name}", _send)
    app.router.add_get("/readyz", _ready)
    return app
