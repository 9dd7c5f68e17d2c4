"""Plain helpers shared by the test files: constants, URLs, a JSON request, message rows.

Fixtures live in tests/conftest.py; this module holds what is imported by name.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from dispatchd.daemon import Daemon
from dispatchd.domain.models import Message, Status

Json = dict[str, Any]

NUMBER = "+17034573322"
OTHER_NUMBER = "+17034573323"
INVALID_NUMBER = "+17034570000"  # the simulator reports numbers ending in 0000 as invalid
UNKNOWN = "01a222ab-f8ac-7206-bf20-90d60ad50f03"  # a well-formed message id nobody has
# A daemon whose simulated providers accept at once but never send a delivery report.
NO_REPORTS = {"callback_delay": 3600}
# A fixed "now" for stores and senders driven on an injected clock.
NOW = 1_800_000_000.0


def url(d: Daemon, path: str) -> str:
    return f"http://127.0.0.1:{d.port}{path}"


async def call(
    http: aiohttp.ClientSession, method: str, d: Daemon, path: str, **kwargs: Any
) -> tuple[int, Json, Any]:
    """One request; returns status, the JSON body ({} when empty) and the headers."""
    async with http.request(method, url(d, path), **kwargs) as resp:
        raw = await resp.read()
        body = await resp.json(content_type=None) if raw else {}
        return resp.status, body, resp.headers


def hold(daemon: Daemon) -> None:
    """Pause every provider: accepted messages stay queued."""
    for name in daemon.health.names:
        daemon.health.pause(name)


def queued_message(msg_id: str, to_number: str = NUMBER, at: float = NOW, **fields: Any) -> Message:
    """A queued one-segment "hello", created at `at`, due at once, expiring an hour later;
    `fields` override any of that."""
    row: dict[str, Any] = {
        "id": msg_id,
        "to_number": to_number,
        "body": "hello",
        "status": Status.QUEUED,
        "segments": 1,
        "encoding": "GSM-7",
        "created_at": at,
        "updated_at": at,
        "expires_at": at + 3600,
        "next_attempt_at": at,
        **fields,
    }
    return Message(**row)
