"""The delivery worker against real local provider servers that each test scripts.

Fake providers are aiohttp servers speaking the provider wire format; every request
they get is recorded, and each answers according to a per-test script (200 with a
message id, 500, 400, 429, hang, drop the connection, or report before answering).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses
from yarl import URL

from dispatchd.config import Config
from dispatchd.daemon import Daemon, build
from dispatchd.domain.models import DeliveryReport, Message, Outcome, Status
from dispatchd.service import Service
from dispatchd.store.api import Store
from dispatchd.worker import Worker
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import NUMBER, OTHER_NUMBER, Json

# -- fake providers -----------------------------------------------------------------------


@dataclass
class FakeProvider:
    """A provider endpoint answering from `script` (then `default`), recording every request."""

    name: str
    session: aiohttp.ClientSession
    default: str = "ok"
    script: list[str] = field(default_factory=list)
    requests: list[Json] = field(default_factory=list)
    callback_statuses: list[int] = field(default_factory=list)
    url: str = ""

    def answers(self, *behaviours: str, then: str = "ok") -> FakeProvider:
        self.script = list(behaviours)
        self.default = then
        return self

    def config(self, weight: int, **extra: Any) -> Json:
        return {"name": self.name, "url": self.url, "weight": weight, **extra}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        behaviour = self.script.pop(0) if self.script else self.default
        message_id = f"{self.name}-{len(self.requests)}"
        if behaviour == "ok":
            return web.json_response({"message_id": message_id})
        if behaviour == "report_first":
            # The delivery report reaches dispatchd before the provider's own 200 does.
            report = {"status": "delivered", "message_id": message_id}
            async with self.session.post(body["callback_url"], json=report) as resp:
                self.callback_statuses.append(resp.status)
            return web.json_response({"message_id": message_id})
        if behaviour == "500":
            return web.json_response({"error": "Something went wrong"}, status=500)
        if behaviour == "400":
            return web.json_response({"error": "Invalid destination"}, status=400)
        if behaviour == "429":
            return web.json_response(
                {"error": "Too many requests"}, status=429, headers={"Retry-After": "0"}
            )
        if behaviour == "hang":
            # A provider that never answers, the subject of the tests using it; the sleep is
            # cancelled when the server closes.
            await asyncio.sleep(30)
            return web.json_response({"message_id": message_id})
        if behaviour == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        raise AssertionError(f"unknown behaviour {behaviour!r}")


FakeFactory = Callable[..., Awaitable[FakeProvider]]


@pytest.fixture
async def fake(aiohttp_server: Any, http: aiohttp.ClientSession) -> FakeFactory:
    """`await fake("provider1")` starts a fake provider on its own free port."""

    async def start(name: str) -> FakeProvider:
        provider = FakeProvider(name, http)
        app = web.Application()
        app.router.add_post("/send", provider.handle)
        server = await aiohttp_server(app)
        provider.url = str(server.make_url("/send"))
        return provider

    return start


# -- daemon helpers -----------------------------------------------------------------------


def config_for(tmp_path: Path, providers: list[Json], **delivery: Any) -> Config:
    return make_config(
        tmp_path,
        free_port(),
        providers=providers,
        delivery=delivery,
        simulator={"enabled": False},
    )


async def accept(service: Service, to: str = NUMBER, text: str = "hello") -> Message:
    msg = service.prepare(service.validate({"to_number": to, "message": text}))
    await service.accept([msg])
    return msg


async def post_message(
    http: aiohttp.ClientSession, d: Daemon, to: str = NUMBER, text: str = "hello"
) -> str:
    async with http.post(
        f"http://127.0.0.1:{d.port}/messages", json={"to_number": to, "message": text}
    ) as resp:
        body = await resp.json()
        assert resp.status == 202, body
        return str(body["id"])


async def wait_status(
    store: Store, msg_id: str, *statuses: Status, within: float = 10.0
) -> Message:
    seen: list[Message] = []

    async def reached() -> bool:
        msg = await store.get(msg_id)
        assert msg is not None
        seen[:] = [msg]
        return msg.status in statuses

    await wait_for(reached, within=within, what=f"{msg_id} to reach {statuses}")
    return seen[0]


def attempt_summary(msg: Message) -> list[tuple[str, Outcome, int | None]]:
    return [(a.provider, a.outcome, a.http_status) for a in msg.attempts]


def history_statuses(msg: Message) -> list[Status]:
    return [h.status for h in msg.history]


# -- a daemon built but not started: its worker driven by hand --------------------------------


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A daemon as `build` makes it, never started: `await rig.worker.drain()` delivers."""

    daemon: Daemon

    @property
    def store(self) -> Store:
        return self.daemon.store

    @property
    def worker(self) -> Worker:
        return self.daemon.worker

    async def accept(self, to: str = NUMBER, text: str = "hello") -> str:
        return (await accept(self.daemon.service, to, text)).id

    async def get(self, msg_id: str) -> Message:
        msg = await self.store.get(msg_id)
        assert msg is not None
        return msg


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    built: list[Daemon] = []

    async def make(
        providers: list[Json], *, clock: Callable[[], float] = time.time, **delivery: Any
    ) -> Rig:
        d = await build(config_for(tmp_path, providers, **delivery), clock, random.Random(1))
        built.append(d)
        return Rig(d)

    yield make
    for d in built:
        await d.stop(grace=1.0)


# -- happy path and the report race -------------------------------------------------------


async def test_happy_path_sent_then_delivered(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    d = await start_daemon(config_for(tmp_path, [p1.config(1), p2.config(0)]))
    msg_id = await post_message(http, d, text="Your code is 1234")

    msg = await wait_status(d.store, msg_id, Status.SENT)
    assert msg.provider == "provider1"
    assert msg.provider_message_id == "provider1-1"
    assert msg.attempt_count == 1
    assert msg.error_code is None
    [attempt] = msg.attempts
    assert (attempt.provider, attempt.outcome, attempt.http_status) == (
        "provider1",
        Outcome.ACCEPTED,
        200,
    )
    assert attempt.latency_ms >= 0
    assert attempt.error is None
    assert p2.requests == []

    [request] = p1.requests
    assert request["to_number"] == NUMBER
    assert request["message"] == "Your code is 1234"
    callback_url = request["callback_url"]
    assert callback_url.startswith(f"http://127.0.0.1:{d.port}/messages/{msg_id}/delivery_status")

    report = {"status": "delivered", "message_id": "provider1-1"}
    async with http.post(callback_url, json=report) as resp:
        assert resp.status == 204
    msg = await wait_status(d.store, msg_id, Status.DELIVERED)
    assert history_statuses(msg) == [Status.QUEUED, Status.SENDING, Status.SENT, Status.DELIVERED]

    async with http.get(f"http://127.0.0.1:{d.port}/messages/{msg_id}") as resp:
        body = await resp.json()
    assert body["status"] == "delivered"
    assert body["provider"] == "provider1"
    assert body["attempts"][0]["outcome"] == "accepted"


async def test_report_arriving_before_the_providers_answer(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers("report_first")
    d = await start_daemon(config_for(tmp_path, [p1.config(1), p2.config(0)]))
    msg_id = await post_message(http, d)

    # The worker records the attempt only after the provider's 200, i.e. after the report.
    async def attempt_recorded() -> bool:
        msg = await d.store.get(msg_id)
        return msg is not None and len(msg.attempts) == 1

    await wait_for(attempt_recorded, what="the provider's 200 to be processed")
    assert p1.callback_statuses == [204], "the report was accepted before the 200"
    msg = await d.store.get(msg_id)
    assert msg is not None
    assert msg.status is Status.DELIVERED, "a late 200 must not regress delivered to sent"
    assert msg.provider == "provider1"
    assert msg.provider_message_id == "provider1-1"
    assert attempt_summary(msg) == [("provider1", Outcome.ACCEPTED, 200)]
    assert Status.SENT not in history_statuses(msg)
    assert history_statuses(msg)[-1] is Status.DELIVERED
    assert p2.requests == []


# -- failover within one attempt ----------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "http_status", "error_part"),
    [
        ("500", 500, "Something went wrong"),
        ("hang", None, "no answer within 0.5s"),
        ("drop", None, "connection failed"),
    ],
)
@pytest.mark.parametrize("failing", ["provider1", "provider2"])
async def test_failover_to_the_other_provider(
    tmp_path: Path,
    start_daemon: DaemonFactory,
    fake: FakeFactory,
    http: aiohttp.ClientSession,
    failing: str,
    behaviour: str,
    http_status: int | None,
    error_part: str,
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    bad, good = (p1, p2) if failing == "provider1" else (p2, p1)
    bad.answers(behaviour, then=behaviour)
    # The failing provider carries all the weight, so it is always tried first.
    providers = [p.config(1 if p is bad else 0, timeout=0.5) for p in (p1, p2)]
    d = await start_daemon(config_for(tmp_path, providers, max_attempts=1))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.SENT, Status.FAILED)
    assert msg.status is Status.SENT
    assert msg.provider == good.name
    assert msg.provider_message_id == f"{good.name}-1"
    assert msg.attempt_count == 1, "failover happens inside one attempt"
    assert attempt_summary(msg) == [
        (bad.name, Outcome.UNAVAILABLE, http_status),
        (good.name, Outcome.ACCEPTED, 200),
    ]
    assert error_part in (msg.attempts[0].error or "")
    assert len(bad.requests) == 1
    assert len(good.requests) == 1
    assert good.requests[0]["callback_url"] == bad.requests[0]["callback_url"]


async def test_a_throttle_answer_holds_the_message_for_that_provider_not_another(
    tmp_path: Path,
    start_daemon: DaemonFactory,
    fake: FakeFactory,
    http: aiohttp.ClientSession,
) -> None:
    busy, idle = await fake("provider1"), await fake("provider2")
    busy.answers("429", "429", then="ok")
    providers = [busy.config(1), idle.config(0)]
    d = await start_daemon(config_for(tmp_path, providers, max_attempts=1))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.SENT, Status.FAILED)
    # Not a failover: the same provider took it once it said so, and no attempt was spent.
    assert (msg.status, msg.provider, msg.attempt_count) == (Status.SENT, "provider1", 1)
    assert idle.requests == []
    assert len(busy.requests) == 3
    assert attempt_summary(msg) == [("provider1", Outcome.ACCEPTED, 200)]
    assert any("throttled" in (h.detail or "") for h in msg.history)
    provider = next(p for p in d.health.snapshot() if p["name"] == "provider1")
    assert (provider["throttled"], provider["breaker"]) == (2, "closed")


@pytest.mark.parametrize("failing", ["provider1", "provider2"])
async def test_failover_on_connection_refused(
    tmp_path: Path,
    start_daemon: DaemonFactory,
    fake: FakeFactory,
    http: aiohttp.ClientSession,
    failing: str,
) -> None:
    good = await fake("provider2" if failing == "provider1" else "provider1")
    dead = {"name": failing, "url": f"http://127.0.0.1:{free_port()}/send", "weight": 1}
    providers = sorted([dead, good.config(0)], key=lambda p: str(p["name"]))
    d = await start_daemon(config_for(tmp_path, providers, max_attempts=1))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.SENT, Status.FAILED)
    assert msg.status is Status.SENT
    assert msg.provider == good.name
    assert attempt_summary(msg) == [
        (failing, Outcome.UNAVAILABLE, None),
        (good.name, Outcome.ACCEPTED, 200),
    ]
    assert "connection failed" in (msg.attempts[0].error or "")


async def test_connection_errors_mocked_with_aioresponses(
    make_rig: RigFactory, fake: FakeFactory
) -> None:
    # provider1 is mocked by aioresponses; provider2 is a real local server passed through.
    # (aioresponses 0.7.9 cannot build responses for aiohttp 3.14, so it only raises here.)
    url1 = "http://provider-one.test/send"
    p2 = await fake("provider2")
    p2.answers("drop", then="ok")
    rig = await make_rig(
        [{"name": "provider1", "url": url1, "weight": 1}, p2.config(0)], max_attempts=2
    )
    msg_id = await rig.accept()
    with aioresponses(passthrough=[p2.url]) as mocked:
        mocked.post(url1, exception=aiohttp.ClientConnectionError("Connection reset by peer"))
        mocked.post(url1, exception=TimeoutError())
        await rig.worker.drain()
        calls = mocked.requests[("POST", URL(url1))]

    msg = await rig.get(msg_id)
    assert msg.status is Status.SENT
    assert msg.provider == "provider2"
    assert msg.provider_message_id == "provider2-2"
    assert msg.attempt_count == 2
    assert attempt_summary(msg) == [
        ("provider1", Outcome.UNAVAILABLE, None),
        ("provider2", Outcome.UNAVAILABLE, None),
        ("provider1", Outcome.UNAVAILABLE, None),
        ("provider2", Outcome.ACCEPTED, 200),
    ]
    assert "Connection reset by peer" in (msg.attempts[0].error or "")
    assert "connection failed" in (msg.attempts[1].error or "")
    assert "no answer within" in (msg.attempts[2].error or "")
    assert len(calls) == 2
    payload = json.loads(calls[0].kwargs["data"])
    assert payload["to_number"] == NUMBER
    assert payload["message"] == "hello"
    assert f"/messages/{msg_id}/delivery_status?token=" in payload["callback_url"]
    assert [r["callback_url"] for r in p2.requests] == [payload["callback_url"]] * 2


# -- rejections (4xx) ---------------------------------------------------------------------


async def test_rejection_by_one_provider_tries_the_other(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers(then="400")
    d = await start_daemon(config_for(tmp_path, [p1.config(1), p2.config(0)]))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.SENT, Status.FAILED)
    assert msg.status is Status.SENT
    assert msg.provider == "provider2"
    assert attempt_summary(msg) == [
        ("provider1", Outcome.REJECTED, 400),
        ("provider2", Outcome.ACCEPTED, 200),
    ]
    assert "Invalid destination" in (msg.attempts[0].error or "")


async def test_rejection_by_every_provider_fails_without_retry(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers(then="400")
    p2.answers(then="400")
    d = await start_daemon(config_for(tmp_path, [p1.config(30), p2.config(70)], max_attempts=5))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.FAILED)
    assert msg.error_code == "provider_rejected"
    assert msg.attempt_count == 1
    assert sorted(attempt_summary(msg)) == [
        ("provider1", Outcome.REJECTED, 400),
        ("provider2", Outcome.REJECTED, 400),
    ]
    assert (len(p1.requests), len(p2.requests)) == (1, 1)
    assert history_statuses(msg) == [Status.QUEUED, Status.SENDING, Status.FAILED]
    async with http.get(f"http://127.0.0.1:{d.port}/messages/{msg_id}") as resp:
        body = await resp.json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "provider_rejected"


async def test_rejection_plus_outage_is_retried(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers(then="400")
    p2.answers("500", then="ok")
    d = await start_daemon(config_for(tmp_path, [p1.config(1), p2.config(0)], max_attempts=3))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.SENT, Status.FAILED)
    assert msg.status is Status.SENT, "one provider being down is not a verdict on the message"
    assert msg.provider == "provider2"
    assert msg.attempt_count == 2


# -- retries ------------------------------------------------------------------------------


async def test_both_down_fails_after_max_attempts(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers(then="500")
    p2.answers(then="500")
    d = await start_daemon(config_for(tmp_path, [p1.config(30), p2.config(70)], max_attempts=3))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.FAILED, Status.SENT)
    assert msg.status is Status.FAILED
    assert msg.error_code == "providers_unavailable"
    assert msg.error_detail and "Something went wrong" in msg.error_detail
    assert msg.attempt_count == 3
    assert len(msg.attempts) == 6, "every provider call of every attempt is recorded"
    for first, second in zip(msg.attempts[::2], msg.attempts[1::2], strict=True):
        assert {first.provider, second.provider} == {"provider1", "provider2"}
    assert all(a.outcome is Outcome.UNAVAILABLE and a.http_status == 500 for a in msg.attempts)
    assert (len(p1.requests), len(p2.requests)) == (3, 3)
    assert history_statuses(msg) == [
        Status.QUEUED,
        Status.SENDING,
        Status.QUEUED,
        Status.SENDING,
        Status.QUEUED,
        Status.SENDING,
        Status.FAILED,
    ]


async def test_provider_recovering_after_outage_gets_the_message(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers("500", "500", then="ok")
    p2.answers("500", "500", then="ok")
    d = await start_daemon(config_for(tmp_path, [p1.config(1), p2.config(0)], max_attempts=5))
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.SENT, Status.FAILED)
    assert msg.status is Status.SENT
    assert msg.provider == "provider1"
    assert msg.provider_message_id == "provider1-3"
    assert msg.attempt_count == 3
    assert attempt_summary(msg) == [
        ("provider1", Outcome.UNAVAILABLE, 500),
        ("provider2", Outcome.UNAVAILABLE, 500),
        ("provider1", Outcome.UNAVAILABLE, 500),
        ("provider2", Outcome.UNAVAILABLE, 500),
        ("provider1", Outcome.ACCEPTED, 200),
    ]
    assert msg.error_code is None, "a stale retry error must not stick to a sent message"


async def test_retry_waits_for_backoff(make_rig: RigFactory, fake: FakeFactory) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers("500", "500", then="ok")
    p2.answers("500", "500", then="ok")
    clock = FakeClock()
    start = clock.now
    rig = await make_rig(
        [p1.config(1), p2.config(0)],
        clock=clock,
        max_attempts=5,
        backoff_initial=10.0,
        backoff_max=15.0,
    )
    msg_id = await rig.accept()

    await rig.worker.drain()
    msg = await rig.get(msg_id)
    assert msg.status is Status.QUEUED
    assert msg.next_attempt_at is not None
    assert start + 5.0 <= msg.next_attempt_at <= start + 10.0  # 10 s, jittered 50-100%

    await rig.worker.drain()  # nothing is due yet
    assert (len(p1.requests), len(p2.requests)) == (1, 1)

    clock.now = msg.next_attempt_at
    await rig.worker.drain()
    msg = await rig.get(msg_id)
    assert msg.status is Status.QUEUED
    assert msg.next_attempt_at is not None
    # Doubled to 20 s but capped at 15 s, jittered.
    assert clock.now + 7.5 <= msg.next_attempt_at <= clock.now + 15.0
    assert (len(p1.requests), len(p2.requests)) == (2, 2)

    clock.now = msg.next_attempt_at
    await rig.worker.drain()
    msg = await rig.get(msg_id)
    assert msg.status is Status.SENT
    assert msg.attempt_count == 3


# -- expiry -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_message_expires_while_providers_are_down(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory, http: aiohttp.ClientSession
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers(then="500")
    p2.answers(then="500")
    cfg = config_for(
        tmp_path,
        [p1.config(30), p2.config(70)],
        max_age=0.5,
        max_attempts=100,
        backoff_initial=0.1,
        backoff_max=0.1,
    )
    d = await start_daemon(cfg)
    msg_id = await post_message(http, d)

    msg = await wait_status(d.store, msg_id, Status.EXPIRED, Status.FAILED, Status.SENT)
    assert msg.status is Status.EXPIRED
    assert msg.error_code == "expired"
    assert msg.attempt_count >= 2, "it was retried before expiring"
    assert len(p1.requests) + len(p2.requests) == len(msg.attempts)
    assert history_statuses(msg)[-1] is Status.EXPIRED
    assert Status.QUEUED in history_statuses(msg)[1:], "requeued between attempts"


async def test_expiry_with_a_controlled_clock(make_rig: RigFactory, fake: FakeFactory) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    p1.answers(then="500")
    p2.answers(then="500")
    clock = FakeClock()
    rig = await make_rig(
        [p1.config(30), p2.config(70)],
        clock=clock,
        max_age=30.0,
        max_attempts=100,
        backoff_initial=4.0,
        backoff_max=8.0,
    )
    msg_id = await rig.accept()
    msg = await rig.get(msg_id)
    for _ in range(50):
        await rig.worker.drain()
        msg = await rig.get(msg_id)
        if msg.status.final:
            break
        assert msg.next_attempt_at is not None
        assert msg.next_attempt_at <= msg.expires_at, "a retry is never scheduled after expiry"
        clock.now = msg.next_attempt_at
    assert msg.status is Status.EXPIRED
    assert msg.error_code == "expired"
    assert msg.attempt_count >= 3
    assert all(a.started_at < msg.expires_at for a in msg.attempts)
    assert len(p1.requests) + len(p2.requests) == len(msg.attempts)


# -- weighted split -----------------------------------------------------------------------


@pytest.mark.slow
async def test_weighted_split_end_to_end(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    cfg = config_for(tmp_path, [p1.config(30), p2.config(70)], concurrency=64)
    d = await start_daemon(cfg)
    total = 2_000
    for _ in range(0, total, 500):
        await asyncio.gather(*(accept(d.service, text="split") for _ in range(500)))

    async def all_sent() -> bool:
        return (await d.store.counts()).get("sent", 0) == total

    await wait_for(all_sent, within=30, what=f"{total} messages to be sent")
    assert len(p1.requests) + len(p2.requests) == total, "each message was sent exactly once"
    share = len(p1.requests) / total
    assert 0.26 <= share <= 0.34, f"provider1 got {share:.1%}, want 30% ± 4%"
    by_provider = Counter(
        m.provider
        for m in await d.store.search(to_number=None, status=None, limit=total, cursor=None)
    )
    assert by_provider == {"provider1": len(p1.requests), "provider2": len(p2.requests)}


# -- crash recovery and leases ------------------------------------------------------------


async def test_messages_claimed_by_a_crashed_process_are_delivered_after_restart(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    cfg = config_for(tmp_path, [p1.config(30), p2.config(70)])

    crashed = await build(cfg, time.time, random.Random(1))  # never started: no worker runs
    ids = {(await accept(crashed.service, text="in flight during a crash")).id for _ in range(3)}
    claimed = await crashed.store.claim(10, lease=60)
    assert {c.id for c in claimed} == ids
    assert (await crashed.store.counts()) == {"sending": 3}
    await crashed.stop()  # the process dies before any provider call finishes

    d = await start_daemon(cfg)
    for msg_id in ids:
        msg = await wait_status(d.store, msg_id, Status.SENT)
        assert any(h.detail == "requeued after restart" for h in msg.history)
    assert len(p1.requests) + len(p2.requests) == 3


async def test_expired_lease_is_claimed_again(tmp_path: Path) -> None:
    cfg = config_for(tmp_path, [{"name": "p", "url": "http://127.0.0.1:1/send"}])
    clock = FakeClock()
    d = await build(cfg, clock, random.Random(1))
    try:
        store = d.store
        ids = {(await accept(d.service)).id for _ in range(2)}

        first = await store.claim(10, lease=60)
        assert {c.id for c in first} == ids
        assert {c.attempt for c in first} == {1}
        clock.now += 30
        assert await store.claim(10, lease=60) == [], "the lease still holds"

        clock.now += 31
        again = await store.claim(10, lease=60)
        assert {c.id for c in again} == ids
        assert {c.attempt for c in again} == {2}
        for msg_id in ids:
            msg = await store.get(msg_id)
            assert msg is not None
            assert msg.status is Status.SENDING
            assert msg.attempt_count == 2
        clock.now += 39
        assert await store.claim(10, lease=60) == [], "the new lease holds"
    finally:
        await d.stop()


# -- suppression --------------------------------------------------------------------------


async def test_worker_does_not_send_to_a_suppressed_number(
    tmp_path: Path, start_daemon: DaemonFactory, fake: FakeFactory
) -> None:
    p1, p2 = await fake("provider1"), await fake("provider2")
    cfg = config_for(tmp_path, [p1.config(30), p2.config(70)])

    # Process A claims two messages to the same number; while they are in flight a
    # report marks the first one's number invalid, then the process dies.
    crashed = await build(cfg, time.time, random.Random(1))
    service = crashed.service
    first = await accept(service, text="one")
    second = await accept(service, text="two")
    other = await accept(service, OTHER_NUMBER, "3")
    await crashed.store.claim(10, lease=60)
    await service.report(
        first.id, DeliveryReport(Status.INVALID, "pm-1"), service.token(first.id), "provider1"
    )
    await crashed.stop()

    d = await start_daemon(cfg)
    msg = await wait_status(d.store, second.id, Status.INVALID, Status.SENT)
    assert msg.status is Status.INVALID
    assert msg.error_code == "number_suppressed"
    assert msg.attempts == ()
    await wait_status(d.store, other.id, Status.SENT)
    received = [r["to_number"] for r in p1.requests + p2.requests]
    assert received == [OTHER_NUMBER], "the provider never received the suppressed message"
