"""The worker on the in-memory store: claim, deliver, fail over, retry, expire and stop.

Each test builds a daemon (`build`, the daemon's own wiring) around a `MemoryStore` and a
fake clock, never starts it, and drives its worker by hand against providers that are
small local aiohttp apps, so each runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dispatchd.daemon import Daemon, build
from dispatchd.domain.models import Message, Outcome, Status
from dispatchd.events import Event
from dispatchd.store.api import Claimed
from dispatchd.store.memory import MemoryStore
from tests.conftest import free_port, make_config, wait_for
from tests.helpers import NOW, NUMBER, Json


@dataclass
class Provider:
    """A provider endpoint answering `answers` in turn (then 200); `hold` delays answers."""

    name: str
    answers: list[int] = field(default_factory=list)
    requests: list[Json] = field(default_factory=list)
    hold: asyncio.Event | None = None
    url: str = ""

    def config(self, weight: int) -> Json:
        return {"name": self.name, "url": self.url, "weight": weight, "timeout": 5.0}

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        if self.hold is not None:
            await self.hold.wait()
        status = self.answers.pop(0) if self.answers else 200
        if status == 200:
            return web.json_response({"message_id": f"{self.name}-{len(self.requests)}"})
        return web.json_response({"error": "Something went wrong"}, status=status)


ProviderFactory = Callable[..., Awaitable[Provider]]


@pytest.fixture
async def provider(aiohttp_server: Any) -> ProviderFactory:
    async def start(name: str, *answers: int) -> Provider:
        p = Provider(name, list(answers))
        app = web.Application()
        app.router.add_post("/send", p.handle)
        p.url = str((await aiohttp_server(app)).make_url("/send"))
        return p

    return start


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    daemon: Daemon
    clock: Clock
    seen: list[Event]  # everything the bus gave its listeners, local events included

    async def accept(self, text: str = "hello") -> Message:
        service = self.daemon.service
        msg = service.prepare(service.validate({"to_number": NUMBER, "message": text}))
        await service.accept([msg])
        return msg

    async def get(self, msg_id: str) -> Message:
        msg = await self.daemon.store.get(msg_id)
        assert msg is not None
        return msg

    def kinds(self) -> list[str]:
        return [e.type for e in self.seen]


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig(short_tmp: Path) -> AsyncIterator[RigFactory]:
    built: list[Daemon] = []

    async def make(*providers: Json, **delivery: Any) -> Rig:
        cfg = make_config(
            short_tmp,
            free_port(),
            providers=list(providers),
            delivery=delivery,
            simulator={"enabled": False},
        )
        clock = Clock()
        d = await build(cfg, clock, random.Random(1), store=MemoryStore(clock=clock))
        built.append(d)
        seen: list[Event] = []
        d.events.add_listener(seen.append)
        return Rig(d, clock, seen)

    yield make
    for d in built:
        await d.stop(grace=0.1)


def summary(msg: Message) -> list[tuple[str, Outcome, int | None]]:
    return [(a.provider, a.outcome, a.http_status) for a in msg.attempts]


async def test_a_claimed_message_is_sent_and_marked_sent(
    rig: RigFactory, provider: ProviderFactory
) -> None:
    p1 = await provider("provider1")
    r = await rig(p1.config(1))
    console = r.daemon.events.subscribe()
    msg = await r.accept("Your code is 1234")

    await r.daemon.worker.drain()
    sent = await r.get(msg.id)
    assert (sent.status, sent.provider, sent.provider_message_id) == (
        Status.SENT,
        "provider1",
        "provider1-1",
    )
    assert summary(sent) == [("provider1", Outcome.ACCEPTED, 200)]
    assert [h.status for h in sent.history] == [Status.QUEUED, Status.SENDING, Status.SENT]
    [request] = p1.requests
    assert request == {
        "to_number": NUMBER,
        "message": "Your code is 1234",
        "callback_url": r.daemon.service.callback_url(msg.id),
    }
    # The claim is told to the bus's listeners (watchers, callbacks) but not to consoles.
    assert r.kinds() == ["accepted", "claimed", "sent"]
    assert r.seen[1].payload == {"ids": [msg.id]}
    assert [console.queue.get_nowait().type for _ in range(console.queue.qsize())] == [
        "accepted",
        "sent",
    ]
    assert "claimed" not in [e.type for e in r.daemon.events.recent()]


async def test_a_claim_wakes_the_watchers_of_the_message(
    rig: RigFactory, provider: ProviderFactory
) -> None:
    r = await rig((await provider("provider1")).config(1))
    msg = await r.accept()
    with r.daemon.watchers.watch(msg.id) as watch:
        claimed = await r.daemon.store.claim(10, lease=60)
        assert [c.id for c in claimed] == [msg.id]
        assert not await watch.wait(0), "the store alone publishes nothing"
        r.daemon.events.publish("claimed", {"ids": [msg.id]}, local=True)
        assert await watch.wait(0), "a local event wakes the watchers it names"


async def test_a_provider_down_fails_over_within_the_attempt(
    rig: RigFactory, provider: ProviderFactory
) -> None:
    p1, p2 = await provider("provider1", 500), await provider("provider2")
    r = await rig(p1.config(1), p2.config(0), max_attempts=1)
    msg = await r.accept()

    await r.daemon.worker.drain()
    sent = await r.get(msg.id)
    assert (sent.status, sent.provider, sent.attempt_count) == (Status.SENT, "provider2", 1)
    assert summary(sent) == [
        ("provider1", Outcome.UNAVAILABLE, 500),
        ("provider2", Outcome.ACCEPTED, 200),
    ]
    [failover] = [e for e in r.seen if e.type == "failover"]
    assert (failover.payload["provider"], failover.payload["to"]) == ("provider1", "provider2")
    assert p2.requests[0]["callback_url"] == p1.requests[0]["callback_url"]


async def test_no_provider_taking_it_schedules_a_retry_after_the_backoff(
    rig: RigFactory, provider: ProviderFactory
) -> None:
    p1, p2 = await provider("provider1", 500), await provider("provider2", 503)
    r = await rig(p1.config(1), p2.config(0), backoff_initial=10.0, backoff_max=10.0)
    msg = await r.accept()

    await r.daemon.worker.drain()
    queued = await r.get(msg.id)
    assert queued.status is Status.QUEUED
    assert queued.next_attempt_at is not None
    assert NOW + 5.0 <= queued.next_attempt_at <= NOW + 10.0  # 10 s, jittered 50-100%
    [retry] = [e for e in r.seen if e.type == "retry_scheduled"]
    assert retry.payload["attempt"] == 1

    await r.daemon.worker.drain()  # not due yet
    assert (len(p1.requests), len(p2.requests)) == (1, 1)
    r.clock.now = queued.next_attempt_at
    await r.daemon.worker.drain()
    sent = await r.get(msg.id)
    assert (sent.status, sent.provider, sent.attempt_count) == (Status.SENT, "provider1", 2)
    assert sent.error_code is None


async def test_a_message_claimed_after_it_expired_is_not_sent(
    rig: RigFactory, provider: ProviderFactory
) -> None:
    p1 = await provider("provider1")
    r = await rig(p1.config(1), max_age=60.0)
    msg = await r.accept()
    r.clock.now += 61

    await r.daemon.worker.drain()
    expired = await r.get(msg.id)
    assert (expired.status, expired.error_code, expired.attempts) == (
        Status.EXPIRED,
        "expired",
        (),
    )
    assert p1.requests == []
    assert "expired" in r.kinds()


async def test_stop_gives_back_the_deliveries_it_cut_short(
    rig: RigFactory, provider: ProviderFactory
) -> None:
    p1 = await provider("provider1")
    p1.hold = asyncio.Event()  # the provider answers only once the test lets it
    r = await rig(p1.config(1))
    worker = r.daemon.worker
    run = asyncio.create_task(worker.run())
    try:
        msg = await r.accept()  # the `accepted` event wakes the worker
        await wait_for(lambda: worker.in_flight == 1, what="the delivery in flight")
        cut = await worker.stop(grace=0.05)
        assert [c.id for c in cut] == [msg.id]
        assert all(isinstance(c, Claimed) and c.token for c in cut)
        await run  # the loop ends with stop()
        assert worker.in_flight == 0 and not worker.running
        assert (await r.get(msg.id)).status is Status.SENDING, "still leased"
        assert await r.daemon.store.release(cut, r.clock(), "released at shutdown") == 1
        released = await r.get(msg.id)
        assert (released.status, released.history[-1].detail) == (
            Status.QUEUED,
            "released at shutdown",
        )
    finally:
        p1.hold.set()
        run.cancel()


async def test_the_daemon_releases_what_the_worker_cut_short_when_it_stops(
    rig: RigFactory,
    provider: ProviderFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd")
    p1 = await provider("provider1")
    p1.hold = asyncio.Event()
    r = await rig(p1.config(1))
    d = r.daemon
    released: list[tuple[list[str], str]] = []
    release = d.store.release

    async def recording_release(claims: Any, at: float, detail: str) -> int:
        released.append(([c.id for c in claims], detail))
        return await release(claims, at, detail)

    monkeypatch.setattr(d.store, "release", recording_release)
    await d.start()
    try:
        msg = await r.accept()
        await wait_for(lambda: d.worker.in_flight == 1, what="the delivery in flight")
        await d.stop(grace=0.05)
    finally:
        p1.hold.set()
    assert released == [([msg.id], "released at shutdown")]
    assert "event=deliveries_abandoned count=1" in caplog.messages
    assert caplog.messages[-1] == "event=stopped"
    assert d.supervisor.names == [] and not d.failed, "every loop ended, none died"
