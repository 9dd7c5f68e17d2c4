"""Idempotency-Key on POST /messages against a real daemon: replays, conflicts, scopes, expiry."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatchd.daemon import Daemon, build
from dispatchd.domain.errors import StoreUnavailable
from dispatchd.store.api import SavedResponse
from dispatchd.store.sqlite import SqliteStore
from dispatchd.store.sqlite.idempotency import PURGE_SAVED_RESPONSES, SELECT_SAVED_RESPONSE
from tests.conftest import DaemonFactory, free_port, make_config, wait_for
from tests.helpers import INVALID_NUMBER, NUMBER

SEND = {"to_number": NUMBER, "message": "hello"}


class Reply:
    """What the client saw: status, raw body, headers."""

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status, self.body, self.headers = status, body, headers

    @property
    def code(self) -> str:
        return str(json.loads(self.body)["code"])


async def post(
    http: aiohttp.ClientSession,
    d: Daemon,
    key: str | None,
    *,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> Reply:
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Idempotency-Key"] = key
    if "data" not in body and "json" not in body:
        body["json"] = SEND
    url = f"http://127.0.0.1:{d.port}/messages"
    async with http.post(url, headers=hdrs, **body) as resp:
        return Reply(resp.status, await resp.read(), resp.headers)


async def stored(d: Daemon) -> int:
    assert d.store is not None
    return sum((await d.store.counts()).values())


async def test_a_repeat_gets_the_same_answer_and_creates_nothing(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    first = await post(http, daemon, "order-1")
    assert first.status == 202
    assert "Idempotent-Replayed" not in first.headers
    again = await post(http, daemon, "order-1")
    assert again.status == 202
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    # The same fields written differently are the same request: whitespace, key order, a form.
    spaced = b'{ "message" : "hello",\n  "to_number": "+17034573322" }'
    ctype = {"Content-Type": "application/json"}
    for body in ({"data": spaced, "headers": ctype}, {"data": SEND}):
        replay = await post(http, daemon, "order-1", **body)
        assert (replay.status, replay.body) == (202, first.body)
    assert await stored(daemon) == 1
    # Without a key, or with another one, it is a new message.
    assert (await post(http, daemon, None)).status == 202
    assert (await post(http, daemon, "order-2")).body != first.body
    assert await stored(daemon) == 3


async def test_the_same_key_for_another_request_is_refused(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    assert (await post(http, daemon, "k")).status == 202
    other = await post(http, daemon, "k", json={**SEND, "message": "different"})
    assert (other.status, other.code) == (422, "idempotency_key_reused")
    assert await stored(daemon) == 1


async def test_refused_requests_are_not_kept_so_the_key_can_be_retried(
    daemon: Daemon, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = await post(http, daemon, "fix-me", json={"to_number": "12", "message": "hi"})
    assert (bad.status, bad.code) == (422, "validation_failed")
    not_json = await post(http, daemon, "fix-me", data=b"{", headers={"Content-Type": "text/x"})
    assert not_json.status == 415
    # Storage failed: nothing was stored, the key neither.
    assert daemon.store is not None

    async def disk_full(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the database cannot take writes: database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(daemon.store, "insert", disk_full)
        full = await post(http, daemon, "fix-me")
        assert (full.status, full.code) == (503, "storage_unavailable")
    fixed = await post(http, daemon, "fix-me")
    assert fixed.status == 202
    assert "Idempotent-Replayed" not in fixed.headers
    assert await stored(daemon) == 1


async def test_a_suppressed_number_is_not_kept_either(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    first = await post(http, daemon, None, json={**SEND, "to_number": INVALID_NUMBER})
    assert first.status == 202
    assert daemon.service is not None
    await wait_for(lambda: daemon.service.is_suppressed(INVALID_NUMBER), what="suppression")
    refused = await post(http, daemon, "k", json={**SEND, "to_number": INVALID_NUMBER})
    assert (refused.status, refused.code) == (422, "number_suppressed")
    # Nothing was kept: the key is free for a corrected request.
    assert (await post(http, daemon, "k")).status == 202


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "empty"),
        ("x" * 256, "256 characters long"),
        ("caf\u00e9", "printable ASCII"),
        ("a\tb", "printable ASCII"),
    ],
)
async def test_a_bad_key_is_a_400_that_says_why(
    daemon: Daemon, http: aiohttp.ClientSession, key: str, says: str
) -> None:
    reply = await post(http, daemon, key)
    assert (reply.status, reply.code) == (400, "invalid_idempotency_key")
    assert says in reply.body.decode()
    assert await stored(daemon) == 0
    assert (await post(http, daemon, "x" * 255)).status == 202


async def test_a_repeat_while_the_first_runs_gets_409_then_the_answer(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    assert daemon.idempotency is not None
    # Another connection holds the write lock, so the first request waits in its commit.
    blocker = sqlite3.connect(daemon.config.storage.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.create_task(post(http, daemon, "slow"))
        await wait_for(lambda: daemon.idempotency.in_progress == 1, what="first request")
        busy = await post(http, daemon, "slow")
        assert (busy.status, busy.code) == (409, "request_in_progress")
        assert busy.headers["Retry-After"] == "1"
        # A different body while it runs is still "in progress": it cannot be judged yet.
        other = await post(http, daemon, "slow", json={**SEND, "message": "other"})
        assert other.status == 409
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    done = await first
    assert done.status == 202
    again = await post(http, daemon, "slow")
    assert (again.status, again.body) == (202, done.body)
    assert await stored(daemon) == 1


async def test_concurrent_identical_requests_create_exactly_one_message(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    replies = await asyncio.gather(*(post(http, daemon, "burst") for _ in range(20)))
    created = [r for r in replies if r.status == 202 and "Idempotent-Replayed" not in r.headers]
    assert len(created) == 1
    for reply in replies:
        if reply.status == 202:
            assert reply.body == created[0].body
        else:
            assert (reply.status, reply.code) == (409, "request_in_progress")
    assert await stored(daemon) == 1


async def test_keys_are_scoped_per_api_key(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon(api={"keys": ["alice-key", "bob-key"]})
    alice = {"Authorization": "Bearer alice-key"}
    bob = {"Authorization": "Bearer bob-key"}
    a1 = await post(http, d, "k", headers=alice)
    b1 = await post(http, d, "k", headers=bob)
    assert a1.status == b1.status == 202
    assert a1.body != b1.body
    a2 = await post(http, d, "k", headers=alice)
    assert (a2.body, a2.headers["Idempotent-Replayed"]) == (a1.body, "true")
    assert await stored(d) == 2


@pytest.fixture
async def shifted(tmp_path: Path) -> AsyncIterator[tuple[Daemon, list[float]]]:
    """A daemon whose clock the test moves forward (`offset[0]` seconds)."""
    offset = [0.0]
    cfg = make_config(tmp_path, free_port(), api={"idempotency_ttl": 60})
    d = await build(cfg, lambda: time.time() + offset[0], random.Random(1))
    try:
        await d.start()
        yield d, offset
    finally:
        await d.stop(grace=1.0)


async def test_keys_expire_after_the_ttl_and_are_purged(
    shifted: tuple[Daemon, list[float]], http: aiohttp.ClientSession
) -> None:
    d, offset = shifted
    assert d.idempotency is not None and d.store is not None
    first = await post(http, d, "k")
    offset[0] = 59.0
    assert (await post(http, d, "k")).headers.get("Idempotent-Replayed") == "true"
    assert await d.idempotency.purge() == 0
    offset[0] = 61.0
    # Past the TTL the key is forgotten, even before the purge removes it.
    fresh = await post(http, d, "k")
    assert fresh.status == 202 and fresh.body != first.body
    assert "Idempotent-Replayed" not in fresh.headers
    assert await stored(d) == 2
    offset[0] = 200.0
    assert await d.idempotency.purge() == 1
    assert await d.store.find_saved_response("", "k", time.time()) is None


async def test_the_purge_deletes_in_batches_along_the_expiry_index(daemon: Daemon) -> None:
    assert daemon.store is not None and daemon.idempotency is not None
    now = time.time()
    for i in range(7):
        expires = now - 1 if i < 5 else now + 3600
        saved = SavedResponse("", f"k{i}", "h", 202, "{}", None, now - 10, expires)
        await daemon.store.insert([], "", saved)
    assert await daemon.idempotency.purge(batch=2) == 5
    assert await daemon.store.find_saved_response("", "k6", now) is not None
    assert isinstance(daemon.store, SqliteStore)
    plan = " ".join(await daemon.store.explain(PURGE_SAVED_RESPONSES, (now, 1000)))
    # The expired rows are found on the expiry index, then deleted by primary key.
    assert "COVERING INDEX idempotency_keys_expiry (expires_at<?)" in plan, plan
    assert "USING PRIMARY KEY (scope=? AND key=?)" in plan, plan
    lookup = " ".join(await daemon.store.explain(SELECT_SAVED_RESPONSE, ("", "k", now)))
    assert "USING PRIMARY KEY (scope=? AND key=?)" in lookup, lookup


async def test_batches_take_keys_too(daemon: Daemon, http: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{daemon.port}/messages/batch"
    batch = {"messages": [SEND, {**SEND, "message": "second"}, {"to_number": "12"}]}
    replies = []
    for _ in range(2):
        async with http.post(url, json=batch, headers={"Idempotency-Key": "b-1"}) as resp:
            replies.append(Reply(resp.status, await resp.read(), resp.headers))
    first, again = replies
    assert first.status == again.status == 200
    assert json.loads(first.body)["accepted"] == 2
    assert again.body == first.body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await stored(daemon) == 2
    # The path is part of the request: the batch's key cannot replay onto POST /messages.
    reused = await post(http, daemon, "b-1")
    assert (reused.status, reused.code) == (422, "idempotency_key_reused")


async def test_a_batch_that_created_nothing_is_not_kept(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{daemon.port}/messages/batch"
    headers = {"Idempotency-Key": "b-2"}
    async with http.post(url, json={"messages": [{"to_number": "12"}]}, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["accepted"] == 0
    async with http.post(url, json={"messages": [SEND]}, headers=headers) as resp:
        assert resp.status == 200
        assert "Idempotent-Replayed" not in resp.headers
        assert (await resp.json())["accepted"] == 1
