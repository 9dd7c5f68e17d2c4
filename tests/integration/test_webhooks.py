"""Status callbacks through the real daemon, to a real local receiver each test scripts."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dispatchd import store as store_mod
from dispatchd.errors import ConfigError
from dispatchd.models import Message, Status
from dispatchd.openapi import openapi_document
from dispatchd.retry import RetryPolicy
from dispatchd.store import Store
from dispatchd.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, Sender, SenderSettings, verify
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.integration.test_openapi import ApiChecker

SECRET = "test-webhook-secret"
NUMBER = "+17034573322"
FULL_RUN = ["queued", "sending", "sent", "delivered"]
# Tiny timings so retries happen within the test; a report 0.2 s after the provider's 200
# keeps `sent` strictly before `delivered`.
FAST = {"secret": SECRET, "backoff_initial": 0.02, "backoff_max": 0.05, "timeout": 2.0}
SIMULATOR = {"callback_delay": 0.2}

Json = dict[str, Any]


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes
    json: Json
    received_at: float


@dataclass
class Receiver:
    """A client's callback endpoint: records every request and answers per `answer`."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    # The status to answer with; None hangs until `release` is set (then answers 200).
    answer: Callable[[Call], int | None] = lambda call: 200
    release: asyncio.Event = field(default_factory=asyncio.Event)
    answered: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        call = Call(dict(request.headers), body, json.loads(body), time.time())
        self.calls.append(call)
        status = self.answer(call)
        if status is None:
            await self.release.wait()
            status = 200
        self.answered += 1
        return web.Response(status=status)

    def statuses(self, calls: list[Call] | None = None) -> list[str]:
        return [c.json["status"] for c in (self.calls if calls is None else calls)]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield r
    r.release.set()
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(http: aiohttp.ClientSession, port: int | None, callback: str) -> Json:
    body = {"to_number": NUMBER, "message": "hello", "status_callback_url": callback}
    async with http.post(f"http://127.0.0.1:{port}/messages", json=body) as resp:
        assert resp.status == 202, await resp.text()
        return dict(await resp.json())


async def get(http: aiohttp.ClientSession, port: int | None, msg_id: str) -> Json:
    async with http.get(f"http://127.0.0.1:{port}/messages/{msg_id}") as resp:
        assert resp.status == 200
        return dict(await resp.json())


def _for(receiver: Receiver, msg_id: str) -> list[Call]:
    return [c for c in receiver.calls if c.json["id"] == msg_id]


async def test_every_status_change_arrives_in_order_signed(
    receiver: Receiver, start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(webhooks=FAST, simulator=SIMULATOR)
    msg = await send(http, d.port, receiver.url)

    await wait_for(lambda: len(receiver.calls) == 4, what="four status callbacks")

    assert receiver.statuses() == FULL_RUN
    for call in receiver.calls:
        assert verify(SECRET, call.body, call.headers[SIGNATURE_HEADER], now=time.time())
        assert not verify("another secret", call.body, call.headers[SIGNATURE_HEADER], time.time())
        assert call.headers["Content-Type"] == "application/json"
        assert call.headers["User-Agent"].startswith("dispatchd/")
        assert set(call.json) == {"id", "status", "to_number", "provider", "error", "at"}
        assert call.json["id"] == msg["id"]
        assert call.json["to_number"] == NUMBER
    assert len({c.headers[EVENT_ID_HEADER] for c in receiver.calls}) == 4
    last = receiver.calls[-1].json
    assert last["provider"] in ("provider1", "provider2")
    assert last["error"] is None

    async def all_settled() -> bool:
        detail = await get(http, d.port, msg["id"])
        return all(c["state"] == "delivered" for c in detail["status_callbacks"])

    await wait_for(all_settled, what="the callbacks to show as delivered on the message")
    callbacks = (await get(http, d.port, msg["id"]))["status_callbacks"]
    assert [c["status"] for c in callbacks] == FULL_RUN
    assert {
        (c["url"], c["attempts"], c["last_http_status"], c["last_error"]) for c in callbacks
    } == {(receiver.url, 1, 200, None)}
    assert all(c["finished_at"] >= c["created_at"] for c in callbacks)
    types = [e.type for e in d.events.recent()]
    assert types.count("webhook_delivered") == 4


async def test_a_message_without_a_callback_url_has_none(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(webhooks=FAST)
    async with http.post(
        f"http://127.0.0.1:{d.port}/messages", json={"to_number": NUMBER, "message": "hi"}
    ) as resp:
        msg = await resp.json()
    assert (await get(http, d.port, msg["id"]))["status_callbacks"] == []


async def test_5xx_is_retried_in_order_and_the_attempts_show_on_the_message(
    receiver: Receiver, start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # The first callback (queued) gets 500, 503, then 200; the rest are taken at once.
    receiver.answer = lambda call: {1: 500, 2: 503}.get(len(receiver.calls), 200)
    d = await start_daemon(webhooks=FAST, simulator=SIMULATOR)
    msg = await send(http, d.port, receiver.url)

    await wait_for(lambda: receiver.statuses()[-1:] == ["delivered"], what="the last callback")

    # The later callbacks waited for the first one: nothing overtook it.
    assert receiver.statuses() == ["queued", "queued", "queued", "sending", "sent", "delivered"]
    assert len({c.headers[EVENT_ID_HEADER] for c in receiver.calls[:3]}) == 1

    async def settled() -> list[Json]:
        callbacks: list[Json] = (await get(http, d.port, msg["id"]))["status_callbacks"]
        return callbacks if all(c["state"] == "delivered" for c in callbacks) else []

    await wait_for(settled, what="every callback to show as delivered")
    callbacks = await settled()
    assert [c["attempts"] for c in callbacks] == [3, 1, 1, 1]
    assert [c["last_http_status"] for c in callbacks] == [200] * 4


async def test_a_4xx_gives_up_at_once_and_the_message_is_unaffected(
    receiver: Receiver, start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    receiver.answer = lambda call: 400
    d = await start_daemon(webhooks=FAST, simulator=SIMULATOR)
    msg = await send(http, d.port, receiver.url)

    async def all_failed() -> bool:
        detail = await get(http, d.port, msg["id"])
        callbacks = detail["status_callbacks"]
        return len(callbacks) == 4 and all(c["state"] == "failed" for c in callbacks)

    await wait_for(all_failed, what="every callback to be given up")
    detail = await get(http, d.port, msg["id"])
    assert detail["status"] == "delivered"
    assert receiver.statuses() == FULL_RUN  # each tried exactly once, still in order
    for c in detail["status_callbacks"]:
        assert (c["attempts"], c["last_http_status"]) == (1, 400)
        assert "refused" in c["last_error"]
        assert c["finished_at"] is not None
    assert [e.type for e in d.events.recent()].count("webhook_failed") == 4


async def test_retries_stop_after_max_attempts(
    receiver: Receiver, start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    receiver.answer = lambda call: 503
    d = await start_daemon(webhooks={**FAST, "max_attempts": 3}, simulator=SIMULATOR)
    msg = await send(http, d.port, receiver.url)

    async def first_given_up() -> bool:
        callbacks = (await get(http, d.port, msg["id"]))["status_callbacks"]
        return bool(callbacks) and callbacks[0]["state"] == "failed"

    await wait_for(first_given_up, what="the first callback to be given up")
    first = (await get(http, d.port, msg["id"]))["status_callbacks"][0]
    assert (first["attempts"], first["last_http_status"]) == (3, 503)
    assert first["last_error"] == "HTTP 503; given up after 3 tries"
    assert receiver.statuses()[:3] == ["queued"] * 3


async def test_a_hanging_receiver_does_not_delay_provider_delivery(
    receiver: Receiver, start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    receiver.answer = lambda call: None  # never answers until released
    d = await start_daemon(webhooks={**FAST, "timeout": 30.0, "concurrency": 2})
    started = time.monotonic()
    ids = [(await send(http, d.port, receiver.url))["id"] for _ in range(10)]

    async def all_delivered() -> bool:
        statuses = [(await get(http, d.port, i))["status"] for i in ids]
        return statuses == ["delivered"] * len(ids)

    await wait_for(all_delivered, within=5.0, what="every message to be delivered")
    assert time.monotonic() - started < 5.0
    # The callbacks are stuck at the receiver, at most `concurrency` at a time.
    await wait_for(lambda: len(receiver.calls) == 2, what="two callbacks at the receiver")
    assert receiver.answered == 0
    assert d.webhooks is not None and d.webhooks.in_flight == 2
    receiver.release.set()  # now they go through, still in order per message

    def all_called_back() -> bool:
        return all(receiver.statuses(_for(receiver, i)) == FULL_RUN for i in ids)

    await wait_for(all_called_back, what="every message's callbacks after the receiver recovered")


async def test_a_receiver_timeout_is_retried(
    receiver: Receiver, start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    # The first try of each callback hangs past the timeout; the retry is answered at once.
    receiver.answer = lambda call: None if len(receiver.calls) == 1 else 200
    d = await start_daemon(webhooks={**FAST, "timeout": 0.2}, simulator=SIMULATOR)
    msg = await send(http, d.port, receiver.url)

    async def settled() -> bool:
        callbacks = (await get(http, d.port, msg["id"]))["status_callbacks"]
        return len(callbacks) == 4 and all(c["state"] == "delivered" for c in callbacks)

    await wait_for(settled, what="every callback to be delivered")
    first = (await get(http, d.port, msg["id"]))["status_callbacks"][0]
    assert first["attempts"] == 2
    assert receiver.statuses() == ["queued", *FULL_RUN]


async def test_pending_callbacks_are_sent_after_a_restart(
    receiver: Receiver, start_daemon: DaemonFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    receiver.answer = lambda call: 503  # the client's endpoint is down
    cfg = make_config(
        tmp_path, free_port(), webhooks={**FAST, "max_attempts": 1000}, simulator=SIMULATOR
    )
    d = await start_daemon(cfg)
    msg = await send(http, d.port, receiver.url)

    async def delivered_with_callbacks_pending() -> bool:
        detail = await get(http, d.port, msg["id"])
        states = [c["state"] for c in detail["status_callbacks"]]
        return detail["status"] == "delivered" and states == ["pending"] * 4

    await wait_for(delivered_with_callbacks_pending, what="the message delivered, callbacks held")
    await d.stop(grace=1.0)
    tried_before = len(receiver.calls)
    assert set(receiver.statuses()) == {"queued"}  # only the first was ever tried

    receiver.answer = lambda call: 200
    d2 = await start_daemon(cfg)
    await wait_for(
        lambda: receiver.statuses()[-1:] == ["delivered"], what="callbacks after restart"
    )
    assert receiver.statuses(receiver.calls[tried_before:]) == FULL_RUN
    callbacks = (await get(http, d2.port, msg["id"]))["status_callbacks"]
    assert callbacks[0]["attempts"] == tried_before + 1


async def test_timings_reload_live_and_the_rest_needs_a_restart(
    start_daemon: DaemonFactory,
) -> None:
    d = await start_daemon(webhooks=FAST)
    live = d.config.model_copy(
        update={"webhooks": d.config.webhooks.model_copy(update={"timeout": 9.0})}
    )
    await d.reload(live)
    assert d.config.webhooks.timeout == 9.0
    frozen = d.config.model_copy(
        update={"webhooks": d.config.webhooks.model_copy(update={"concurrency": 3})}
    )
    with pytest.raises(ConfigError, match=r"webhooks\.concurrency"):
        await d.reload(frozen)


async def test_callbacks_and_their_record_match_the_openapi_document(
    receiver: Receiver, start_daemon: DaemonFactory
) -> None:
    api = ApiChecker(openapi_document())
    receiver.answer = lambda call: 503
    d = await start_daemon(webhooks={**FAST, "max_attempts": 1000}, simulator=SIMULATOR)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{d.port}") as http:
        body = {"to_number": NUMBER, "message": "hi", "status_callback_url": receiver.url}
        assert api.request_errors("/messages", "post", "application/json", body) == []
        async with http.post("/messages", json=body) as resp:
            msg_id = (await resp.json())["id"]

        async def detail() -> Json:
            async with http.get(f"/messages/{msg_id}") as resp:
                return dict(await api.check(resp, "/messages/{id}", "get"))

        async def held() -> bool:
            found = await detail()
            callbacks = found["status_callbacks"]
            return found["status"] == "delivered" and callbacks[0]["attempts"] >= 2

        await wait_for(held, what="the first callback to be retried")
        pending = (await detail())["status_callbacks"]
        assert {c["state"] for c in pending} == {"pending"}
        assert (pending[0]["last_http_status"], pending[0]["last_error"]) == (503, "HTTP 503")
        assert (pending[1]["attempts"], pending[1]["last_http_status"]) == (0, None)

        receiver.answer = lambda call: 400 if call.json["status"] == "sent" else 200

        async def settled() -> bool:
            states = [c["state"] for c in (await detail())["status_callbacks"]]
            return states == ["delivered", "delivered", "failed", "delivered"]

        await wait_for(settled, what="every callback to be settled")
    webhook = api.doc["webhooks"]["messageStatus"]["post"]
    for call in receiver.calls:
        assert api.errors("#/components/schemas/StatusCallbackBody", call.json) == []
        for param in webhook["parameters"]:
            assert re.fullmatch(param["schema"]["pattern"], call.headers[param["name"]])


# -- the sender driven directly, on an injected clock ---------------------------------------

NOW = 1_800_000_000.0


def _message(msg_id: str, url: str) -> Message:
    return Message(
        id=msg_id,
        to_number=NUMBER,
        body="hello",
        status=Status.QUEUED,
        segments=1,
        encoding="GSM-7",
        created_at=NOW,
        updated_at=NOW,
        expires_at=NOW + 3600,
        next_attempt_at=NOW + 3600,  # not due: the worker is not part of these tests
        status_callback_url=url,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "dispatchd.db")
    yield s
    await s.close()


async def test_backoff_follows_the_injected_clock_then_gives_up(
    receiver: Receiver, store: Store
) -> None:
    receiver.answer = lambda call: 500
    clock = [NOW]
    await store.insert(_message("m-1", receiver.url))
    policy = RetryPolicy(max_attempts=3, backoff_initial=10.0, backoff_max=100.0)
    async with aiohttp.ClientSession() as session:
        sender = Sender(
            store,
            session,
            SenderSettings(SECRET, timeout=2.0, concurrency=4, policy=policy),
            clock=lambda: clock[0],
            rng=random.Random(1),
        )
        await sender.drain()
        assert len(receiver.calls) == 1
        (row,) = (await store.get("m-1") or _message("", "")).callbacks
        assert (row.state, row.attempts, row.last_http_status) == ("pending", 1, 500)

        await sender.drain()  # not due yet: 5-10 s of backoff on the injected clock
        assert len(receiver.calls) == 1
        clock[0] += 10.0
        await sender.drain()
        assert len(receiver.calls) == 2
        clock[0] += 20.0
        await sender.drain()
        assert len(receiver.calls) == 3
        clock[0] += 1000.0
        await sender.drain()
        assert len(receiver.calls) == 3  # given up after max_attempts
    (row,) = (await store.get("m-1") or _message("", "")).callbacks
    assert (row.state, row.attempts, row.finished_at) == ("failed", 3, NOW + 30.0)
    signed_at = [int(c.headers[SIGNATURE_HEADER].split(",")[0][2:]) for c in receiver.calls]
    assert signed_at == [int(NOW), int(NOW + 10), int(NOW + 30)]


async def test_without_a_secret_nothing_is_sent_unsigned(receiver: Receiver, store: Store) -> None:
    await store.insert(_message("m-2", receiver.url))
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    async with aiohttp.ClientSession() as session:
        sender = Sender(store, session, SenderSettings("", 2.0, 4, policy), clock=lambda: NOW)
        await sender.drain()
    assert receiver.calls == []
    (row,) = (await store.get("m-2") or _message("", "")).callbacks
    assert row.state == "failed"
    assert "secret" in (row.last_error or "")


# The due-callback read runs on every status change: it must use the partial index.
async def test_the_due_callbacks_query_uses_the_indexes(store: Store) -> None:
    plan = await store.explain(
        store_mod.DUE_WEBHOOKS, {"now": NOW, "limit": 10, "in_flight": "[1, 2]"}
    )
    print(plan)
    assert any("webhooks_due" in step for step in plan), plan
    assert any("webhooks_message" in step for step in plan), plan
    assert not any(step.startswith("SCAN w ") or step == "SCAN w" for step in plan), plan
    per_message = await store.explain(store_mod.SELECT_CALLBACKS, ("m-1",))
    assert any("webhooks_message" in step for step in per_message), per_message
