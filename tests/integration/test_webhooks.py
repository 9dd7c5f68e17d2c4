"""Status callbacks through the real daemon, to a real local receiver each test scripts."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dispatchd.domain.errors import ConfigError
from dispatchd.domain.models import Message
from dispatchd.domain.retry import RetryPolicy
from dispatchd.events import EventBus
from dispatchd.http.openapi import openapi_document
from dispatchd.store.api import DueWebhook
from dispatchd.store.sqlite import SqliteStore
from dispatchd.store.sqlite.messages import SELECT_CALLBACKS
from dispatchd.store.sqlite.webhooks import DUE_WEBHOOKS, NEXT_WEBHOOK_RETRY, PROMOTE_NEXT_WEBHOOK
from dispatchd.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, Sender, SenderSettings, verify
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import NOW, NUMBER, Json, queued_message
from tests.integration.test_openapi import ApiChecker

SECRET = "test-webhook-secret"
FULL_RUN = ["queued", "sending", "sent", "delivered"]
# Tiny timings so retries happen within the test; a report 0.2 s after the provider's 200
# keeps `sent` strictly before `delivered`. The receivers listen on 127.0.0.1.
FAST = {
    "secret": SECRET,
    "backoff_initial": 0.02,
    "backoff_max": 0.05,
    "timeout": 2.0,
    "allow_private_addresses": True,
}
SIMULATOR = {"callback_delay": 0.2}


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
    # The very first try hangs past the timeout; the retry is answered at once. A second
    # is long enough for an answer at once even on a loaded machine.
    receiver.answer = lambda call: None if len(receiver.calls) == 1 else 200
    d = await start_daemon(webhooks={**FAST, "timeout": 1.0}, simulator=SIMULATOR)
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


def _message(msg_id: str, url: str) -> Message:
    # Not due: the worker is not part of these tests.
    return queued_message(msg_id, next_attempt_at=NOW + 3600, status_callback_url=url)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "dispatchd.db")
    yield s
    await s.close()


async def test_backoff_follows_the_injected_clock_then_gives_up(
    receiver: Receiver, store: SqliteStore
) -> None:
    receiver.answer = lambda call: 500
    clock = [NOW]
    await store.insert([_message("m-1", receiver.url)], "accepted")
    policy = RetryPolicy(max_attempts=3, backoff_initial=10.0, backoff_max=100.0)
    async with aiohttp.ClientSession() as session:
        sender = Sender(
            store,
            session,
            SenderSettings(SECRET, 2.0, 4, policy, allow_private_addresses=True),
            clock=lambda: clock[0],
            rng=random.Random(1),
            events=EventBus(),
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


async def test_without_a_secret_nothing_is_sent_unsigned(
    receiver: Receiver, store: SqliteStore
) -> None:
    await store.insert([_message("m-2", receiver.url)], "accepted")
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    async with aiohttp.ClientSession() as session:
        settings = SenderSettings("", 2.0, 4, policy, allow_private_addresses=True)
        sender = Sender(
            store, session, settings, clock=lambda: NOW, rng=random.Random(1), events=EventBus()
        )
        await sender.drain()
    assert receiver.calls == []
    (row,) = (await store.get("m-2") or _message("", "")).callbacks
    assert row.state == "failed"
    assert "secret" in (row.last_error or "")


# The due-callback read runs on every status change, on the reader every request shares: a
# range of the partial index, with no per-row subquery, however many callbacks wait.
async def test_the_due_callbacks_query_uses_the_indexes(store: SqliteStore) -> None:
    plan = await store.explain(DUE_WEBHOOKS, {"now": NOW, "limit": 10, "in_flight": "[1, 2]"})
    print(plan)
    assert plan[0].startswith("SEARCH w USING INDEX webhooks_due (next_attempt_at<?)"), plan
    assert not any("CORRELATED" in step or "webhooks_message" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan  # the index gives the order
    assert not any(step.startswith("SCAN w ") or step == "SCAN w" for step in plan), plan
    per_message = await store.explain(SELECT_CALLBACKS, ("m-1",))
    assert any("webhooks_message" in step for step in per_message), per_message
    promote = await store.explain(PROMOTE_NEXT_WEBHOOK, {"id": 1, "now": NOW})
    assert any("webhooks_message" in step for step in promote), promote
    assert not any(step.startswith("SCAN") for step in promote), promote
    retry = await store.explain(NEXT_WEBHOOK_RETRY, (NOW,))
    assert any("webhooks_due" in step for step in retry), retry


async def _change_status(store: SqliteStore, msg_ids: list[str], *statuses: str) -> None:
    """Move the messages through `statuses` (each change queues a callback per message)."""

    def op(conn: sqlite3.Connection) -> None:
        marks = ",".join("?" * len(msg_ids))
        for status in statuses:
            conn.execute(
                f"UPDATE messages SET status = ?, updated_at = updated_at + 1 "
                f"WHERE id IN ({marks})",
                (status, *msg_ids),
            )

    await store._write(op)


def _vm_steps(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> tuple[list[Any], int]:
    """The rows of `sql` and how many SQLite VM instructions reading them took."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(tick, 1)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 1)
    return rows, steps


@pytest.mark.slow
async def test_a_backlog_of_waiting_callbacks_keeps_the_due_read_cheap(store: SqliteStore) -> None:
    # A receiver that is down: every message's first callback waits on a backoff and its
    # next three are queued behind it.
    ids = [f"m-{i:05d}" for i in range(3000)]
    await store.insert([_message(i, "http://hooks.example/status") for i in ids], "accepted")
    await _change_status(store, ids, "sending", "sent", "delivered")

    def backoff(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE webhooks SET attempts = 1, next_attempt_at = ? "
            "WHERE next_attempt_at IS NOT NULL",
            (NOW + 600,),
        )

    await store._write(backoff)
    conn = sqlite3.connect(store.path)
    try:
        waiting = "SELECT count(*) FROM webhooks WHERE state = 'pending' AND {}"
        assert conn.execute(waiting.format("next_attempt_at IS NULL")).fetchone()[0] == 9000
        assert conn.execute(waiting.format("next_attempt_at = ?"), (NOW + 600,)).fetchone()[0] == (
            3000
        )
        params: dict[str, Any] = {"now": NOW, "limit": 16, "in_flight": "[]"}
        rows, idle_steps = _vm_steps(conn, DUE_WEBHOOKS, params)
        assert rows == []
        # Ten receivers come back: their first callbacks are due, the rest still wait.
        conn.execute(
            "UPDATE webhooks SET next_attempt_at = ? WHERE next_attempt_at IS NOT NULL "
            "AND message_id IN (SELECT id FROM messages ORDER BY id LIMIT 10)",
            (NOW - 1,),
        )
        conn.commit()
        rows, due_steps = _vm_steps(conn, DUE_WEBHOOKS, params)
        print(f"VM steps with 12,000 callbacks stored: {idle_steps} idle, {due_steps} for 10 due")
        assert [(r[1], r[3]) for r in rows] == [(i, "queued") for i in ids[:10]]
        # Proportional to what is due, not to the 9,000 waiting rows (the per-row NOT EXISTS
        # this replaces took over 100,000 steps here).
        assert idle_steps < 100
        assert due_steps < 1000
    finally:
        conn.close()
    due = await store.due_webhooks(NOW, 16, [])
    assert [(w.message_id, w.status, w.attempts) for w in due] == [
        (i, "queued", 1) for i in ids[:10]
    ]


async def test_order_per_message_holds_through_retries_and_give_ups(
    receiver: Receiver, store: SqliteStore
) -> None:
    ids = ["m-a", "m-b", "m-c", "m-d"]
    for msg_id in ids:
        await store.insert([_message(msg_id, receiver.url)], "accepted")
    await _change_status(store, ids, "sending", "sent", "delivered")
    tries: Counter[tuple[str, str]] = Counter()

    def answer(call: Call) -> int:
        key = (call.json["id"], call.json["status"])
        tries[key] += 1
        if key == ("m-a", "queued"):
            return 500  # retried, then given up after max_attempts
        if key == ("m-b", "sending"):
            return 400  # given up at once
        if call.json["id"] == "m-c":
            return 503 if tries[key] == 1 else 200  # every callback needs a retry
        return 200

    receiver.answer = answer
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    settings = SenderSettings(SECRET, 2.0, 8, policy, allow_private_addresses=True)
    async with aiohttp.ClientSession() as session:
        sender = Sender(
            store, session, settings, clock=lambda: NOW, rng=random.Random(1), events=EventBus()
        )
        await sender.drain()

    by_message = {i: receiver.statuses(_for(receiver, i)) for i in ids}
    assert by_message == {
        "m-a": ["queued"] * 3 + ["sending", "sent", "delivered"],
        "m-b": FULL_RUN,
        "m-c": [status for status in FULL_RUN for _ in (1, 2)],
        "m-d": FULL_RUN,
    }
    rows = {i: (await store.get(i) or _message("", "")).callbacks for i in ids}
    assert [c.state for c in rows["m-a"]] == ["failed", "delivered", "delivered", "delivered"]
    assert [c.state for c in rows["m-b"]] == ["delivered", "failed", "delivered", "delivered"]
    assert [c.attempts for c in rows["m-c"]] == [2, 2, 2, 2]
    assert all(c.finished_at == NOW for cs in rows.values() for c in cs)


async def test_a_new_callback_waits_behind_a_pending_one(
    receiver: Receiver, store: SqliteStore
) -> None:
    await store.insert([_message("m-w", receiver.url)], "accepted")
    await _change_status(store, ["m-w"], "sending", "sent")
    conn = sqlite3.connect(store.path)
    try:
        due_at = "SELECT status, next_attempt_at FROM webhooks WHERE message_id = ? ORDER BY id"
        assert conn.execute(due_at, ("m-w",)).fetchall() == [
            ("queued", NOW),
            ("sending", None),
            ("sent", None),
        ]
        policy = RetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
        settings = SenderSettings(SECRET, 2.0, 8, policy, allow_private_addresses=True)
        async with aiohttp.ClientSession() as session:
            sender = Sender(
                store,
                session,
                settings,
                clock=lambda: NOW + 5,
                rng=random.Random(1),
                events=EventBus(),
            )
            [first] = await store.due_webhooks(NOW + 5, 8, [])
            await sender.send(first)
        # Settling the first gives the next its turn, in the same transaction.
        assert conn.execute(due_at, ("m-w",)).fetchall() == [
            ("queued", NOW),
            ("sending", NOW + 5),
            ("sent", None),
        ]
    finally:
        conn.close()


# Stopping while the run loop reads due rows: the rows it read are not started (they would
# run on a session the daemon is closing), and stop() returns only once the loop has ended.
async def test_stop_during_a_read_starts_no_sends(receiver: Receiver, store: SqliteStore) -> None:
    await store.insert([_message("m-s", receiver.url)], "accepted")
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    settings = SenderSettings(SECRET, 2.0, 4, policy, allow_private_addresses=True)
    async with aiohttp.ClientSession() as session:
        sender = Sender(
            store, session, settings, clock=lambda: NOW, rng=random.Random(1), events=EventBus()
        )
        read_due = sender._due
        reading, release = asyncio.Event(), asyncio.Event()

        async def slow_due(now: float, limit: int) -> list[DueWebhook]:
            reading.set()
            await release.wait()
            return await read_due(now, limit)

        sender._due = slow_due  # type: ignore[method-assign]
        run = asyncio.create_task(sender.run())
        await reading.wait()
        stop = asyncio.create_task(sender.stop(grace=1.0))
        for _ in range(5):
            # Yield to the loop a few times so stop() runs as far as it can: what is checked
            # is that it has *not* finished, which no polling can wait for.
            await asyncio.sleep(0)
        assert not stop.done(), "stop() returned while the loop was still reading"
        release.set()
        assert await stop == 0
        assert run.done()
        await run
        assert sender.in_flight == 0
    assert receiver.calls == []
    (row,) = (await store.get("m-s") or _message("", "")).callbacks
    assert (row.state, row.attempts) == ("pending", 0)  # sent after the next start


# -- private destinations (allow_private_addresses off, the default) ------------------------

PRIVATE_URLS = [
    "http://127.0.0.1:9000/hook",
    "http://[::1]/hook",
    "http://10.0.0.5:6379/",
    "http://192.168.1.1/x",
    "http://169.254.169.254/latest/meta-data",
    "http://[fd00::1]/x",
    "http://[::ffff:172.16.0.1]/x",
    "http://0.0.0.0:8080/",
]


async def test_a_private_ip_in_the_url_is_refused_with_422(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(webhooks={"secret": SECRET})
    for url in PRIVATE_URLS:
        body = {"to_number": NUMBER, "message": "hi", "status_callback_url": url}
        async with http.post(f"http://127.0.0.1:{d.port}/messages", json=body) as resp:
            assert resp.status == 422, url
            [error] = (await resp.json())["errors"]
        assert (error["field"], error["code"]) == ("status_callback_url", "private_address")
        assert "private or local address" in error["message"]
        assert "only to public addresses" in error["message"]


async def test_a_host_name_resolving_to_a_private_address_is_refused_when_sending(
    receiver: Receiver,
    start_daemon: DaemonFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd.webhooks")
    d = await start_daemon(webhooks={**FAST, "allow_private_addresses": False})
    hook = receiver.url.replace("127.0.0.1", "localhost")  # accepted: not an IP literal
    msg = await send(http, d.port, hook)

    async def all_refused() -> list[Json]:
        callbacks: list[Json] = (await get(http, d.port, msg["id"]))["status_callbacks"]
        done = len(callbacks) == 4 and all(c["state"] == "failed" for c in callbacks)
        return callbacks if done else []

    await wait_for(all_refused, what="every callback to be refused")
    for c in await all_refused():
        assert (c["attempts"], c["last_http_status"]) == (1, None)
        assert c["last_error"] == "refused: private address"  # given up at once, not retried
    assert receiver.calls == []
    assert "localhost resolves only to private addresses" in caplog.text


async def test_connection_errors_show_the_client_no_details(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatchd.webhooks")
    d = await start_daemon(webhooks={**FAST, "max_attempts": 1}, simulator=SIMULATOR)
    closed = free_port()  # nothing listens there
    msg = await send(http, d.port, f"http://127.0.0.1:{closed}/hook?token=s3cr3t")

    async def first_failed() -> Json | None:
        callbacks = (await get(http, d.port, msg["id"]))["status_callbacks"]
        return callbacks[0] if callbacks and callbacks[0]["state"] == "failed" else None

    await wait_for(first_failed, what="the first callback to be given up")
    first = await first_failed()
    assert first is not None
    assert first["last_error"] == "connection failed; given up after 1 tries"
    # The operator's log keeps the cause (never the URL's path or query).
    failed = [r.getMessage() for r in caplog.records if "event=webhook_failed" in r.getMessage()]
    assert failed and all("detail=" in m and "ClientConnectorError" in m for m in failed), failed
    assert "s3cr3t" not in caplog.text
