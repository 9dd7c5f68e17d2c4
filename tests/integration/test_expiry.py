"""Expiry on time: a queued message past its validity ends `expired` within about a second,
whatever the providers' state, and says so on the bus (console, SSE, long polls, webhooks)."""

from __future__ import annotations

import time

import aiohttp
import pytest

from dispatchd.daemon import Daemon
from dispatchd.domain.models import Status
from tests.conftest import DaemonFactory, wait_for
from tests.helpers import NUMBER, OTHER_NUMBER, call

pytestmark = pytest.mark.slow  # each waits out a one-second validity


async def send(http: aiohttp.ClientSession, d: Daemon, to: str = NUMBER, **fields: object) -> str:
    body = {"to_number": to, "message": "otp 123456", **fields}
    status, resp, _ = await call(http, "POST", d, "/messages", json=body)
    assert status == 202, resp
    return str(resp["id"])


async def expires_on_time(d: Daemon, msg_id: str) -> None:
    """The message ends expired within about a second of its validity running out."""
    msg = await d.store.get(msg_id)
    assert msg is not None and msg.status is Status.QUEUED
    left = msg.expires_at - time.time()

    async def expired() -> bool:
        return await d.store.message_status(msg_id) is Status.EXPIRED

    await wait_for(expired, within=left + 2.5, what="the message to expire")
    assert time.time() <= msg.expires_at + 2.5
    final = await d.store.get(msg_id)
    assert final is not None and final.error_code == "expired"
    assert [e.type for e in d.events.recent() if e.payload.get("id") == msg_id][-1] == "expired"


async def test_with_every_provider_paused(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon()
    for name in d.health.names:
        d.health.pause(name)
    await expires_on_time(d, await send(http, d, validity_period=1))


async def test_with_every_circuit_open(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # Every call fails and one failure opens a circuit for a minute.
    d = await start_daemon(
        simulator={"failure_rate": 1.0},
        breaker={"failure_threshold": 1, "cooldown": 60},
        delivery={"max_attempts": 100},
    )
    await send(http, d, OTHER_NUMBER)

    def both_open() -> bool:
        return all(p["breaker"] == "open" for p in d.health.snapshot())

    await wait_for(both_open, what="both circuits to open")
    await expires_on_time(d, await send(http, d, validity_period=1))


async def test_with_nothing_routable(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # One provider paused by the operator, the other's circuit open.
    d = await start_daemon(
        simulator={"failure_rate": 1.0},
        breaker={"failure_threshold": 1, "cooldown": 60},
        delivery={"max_attempts": 100},
    )
    d.health.pause("provider1")
    await send(http, d, OTHER_NUMBER)

    def provider2_open() -> bool:
        return any(p["name"] == "provider2" and p["breaker"] == "open" for p in d.health.snapshot())

    await wait_for(provider2_open, what="provider2's circuit to open")
    await expires_on_time(d, await send(http, d, validity_period=1))
