"""POST /messages/batch against a real daemon: one transaction, per-item results."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import pytest

from dispatchd.daemon import Daemon
from dispatchd.http import batches as dispatchd_batches
from dispatchd.store import sqlite as store_mod
from tests.conftest import DaemonFactory, wait_for
from tests.helpers import INVALID_NUMBER as INVALID
from tests.helpers import NO_REPORTS, NUMBER, Json
from tests.helpers import OTHER_NUMBER as OTHER


@pytest.fixture
async def daemon(start_daemon: DaemonFactory) -> Daemon:
    return await start_daemon(simulator=NO_REPORTS)


async def post_batch(
    http: aiohttp.ClientSession, d: Daemon, body: Any = None, **kwargs: Any
) -> tuple[int, Json]:
    if body is not None:
        kwargs["json"] = body
    async with http.post(f"http://127.0.0.1:{d.port}/messages/batch", **kwargs) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            assert resp.content_type == "application/problem+json", data
        return resp.status, data


def stored(d: Daemon) -> int:
    return store_mod.count_messages(d.config.storage.path)


def field_codes(problem: Json) -> set[tuple[str, str]]:
    return {(e["field"], e["code"]) for e in problem["errors"]}


async def test_good_items_are_stored_and_bad_ones_answered_each_in_item_order(
    start_daemon: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    d = await start_daemon()
    # Make INVALID a suppressed number first: the simulator reports it invalid.
    status, body = await post_batch(http, d, {"messages": [{"to_number": INVALID, "message": "x"}]})
    assert status == 200 and body["accepted"] == 1, body
    first = body["results"][0]["message"]["id"]

    async def suppressed() -> bool:
        assert d.store is not None
        msg = await d.store.get(first)
        return msg is not None and msg.status.value == "invalid"

    await wait_for(suppressed, what="the invalid report")
    events = d.events.seq
    items = [
        {"to_number": NUMBER, "message": "one"},
        {"to_number": "12", "message": " "},
        "not an object",
        {"to_number": INVALID, "message": "suppressed"},
        {"to_number": OTHER, "message": "two", "validity_period": 60, "smart_encoding": True},
        {"to_number": NUMBER, "message": "bad option", "send_at": "soon"},
    ]
    status, body = await post_batch(http, d, {"messages": items})
    assert status == 200, body
    assert (body["accepted"], body["rejected"]) == (2, 4)
    results = body["results"]
    assert [(r["index"], r["status"]) for r in results] == [
        (0, 202),
        (1, 422),
        (2, 422),
        (3, 422),
        (4, 202),
        (5, 422),
    ]
    assert field_codes(results[1]["problem"]) == {
        ("to_number", "invalid_number"),
        ("message", "empty"),
    }
    assert field_codes(results[2]["problem"]) == {("messages[2]", "not_an_object")}
    assert results[3]["problem"]["code"] == "number_suppressed"
    assert "errors" not in results[3]["problem"]
    assert field_codes(results[5]["problem"]) == {("send_at", "unparseable")}
    for r in results:
        if r["status"] == 422:
            assert r["problem"]["status"] == 422
            assert r["problem"]["type"].endswith("/" + r["problem"]["code"])
            assert r["problem"]["detail"].endswith(".")
    one, two = results[0]["message"], results[4]["message"]
    assert (one["to_number"], one["message"], one["status"]) == (NUMBER, "one", "queued")
    assert (two["validity_period"], two["to_number"]) == (60, OTHER)
    assert one["id"] < two["id"]  # ids keep item order
    # Each accepted item is a real message, published like a single send.
    for msg in (one, two):
        async with http.get(f"http://127.0.0.1:{d.port}/messages/{msg['id']}") as resp:
            assert resp.status == 200
    accepted = [
        e.payload["id"] for e in d.events.recent() if e.seq > events and e.type == "accepted"
    ]
    assert accepted == [one["id"], two["id"]]


async def test_a_batch_is_one_transaction(daemon: Daemon, http: aiohttp.ClientSession) -> None:
    inserts: list[int] = []
    insert = daemon.store.insert

    async def counting_insert(msgs: Any, *args: Any, **kwargs: Any) -> None:
        inserts.append(len(msgs))
        await insert(msgs, *args, **kwargs)

    daemon.store.insert = counting_insert  # type: ignore[method-assign]
    items = [{"to_number": f"+1703457{i:04d}", "message": f"n{i}"} for i in range(1000, 1500)]
    status, body = await post_batch(http, daemon, {"messages": items})
    assert status == 200 and body["accepted"] == 500, body
    # One insert stores the batch's messages in one transaction: all of them or none.
    assert inserts == [500]
    assert stored(daemon) == 500


async def test_a_thousand_messages_fit_and_one_more_does_not(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    # A long text, so the batch is well over the 64 KiB single-message limit.
    item = {"to_number": NUMBER, "message": "x" * 1000}
    status, body = await post_batch(http, daemon, {"messages": [item] * 1000})
    assert status == 200 and body["accepted"] == 1000, body
    status, body = await post_batch(http, daemon, {"messages": [item] * 1001})
    assert status == 422 and field_codes(body) == {("messages", "too_many")}, body
    assert stored(daemon) == 1000


@pytest.mark.parametrize("key", [None, "render-once"], ids=["plain", "idempotency-key"])
async def test_a_batch_answer_is_one_json_document_whichever_way_it_is_rendered(
    daemon: Daemon, http: aiohttp.ClientSession, key: str | None
) -> None:
    """Without a key the answer is rendered in chunks after the write; with one, whole,
    before it: the same text either way (what json.dumps of the whole would give)."""
    items = [{"to_number": f"+1703457{i:04d}", "message": f"caf\u00e9 {i}"} for i in range(250)]
    items[7] = {"to_number": "12", "message": "bad"}
    headers = {"Idempotency-Key": key} if key else {}
    async with http.post(
        f"http://127.0.0.1:{daemon.port}/messages/batch",
        json={"messages": items},
        headers=headers,
    ) as resp:
        assert resp.status == 200
        text = await resp.text()
    body = json.loads(text)
    assert text == json.dumps(body)
    assert (body["accepted"], body["rejected"]) == (249, 1)
    assert [r["index"] for r in body["results"]] == list(range(250))
    assert body["results"][7]["status"] == 422
    assert body["results"][8]["message"]["message"] == "caf\u00e9 8"


async def test_a_number_suppressed_while_a_batch_is_validated_refuses_its_items_only(
    daemon: Daemon, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation yields to the event loop between chunks, so a number may be suppressed
    half way through: its items are refused, not the whole batch."""
    assert daemon.service is not None
    service = daemon.service
    check_item = dispatchd_batches._check_item

    def suppress_during(svc: Any, index: int, item: Any) -> Any:
        if index == 1:
            service._suppressed.add(NUMBER)
        return check_item(svc, index, item)

    monkeypatch.setattr(dispatchd_batches, "CHUNK", 1)
    monkeypatch.setattr(dispatchd_batches, "_check_item", suppress_during)
    items = [{"to_number": n, "message": "x"} for n in (NUMBER, OTHER, NUMBER, OTHER)]
    status, body = await post_batch(http, daemon, {"messages": items})
    assert status == 200, body
    assert [r["status"] for r in body["results"]] == [422, 202, 422, 202]
    assert body["results"][0]["problem"]["code"] == "number_suppressed"
    assert stored(daemon) == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "missing"),
        ({"messages": None}, "missing"),
        ({"messages": {"to_number": NUMBER, "message": "x"}}, "not_a_list"),
        ({"messages": "x"}, "not_a_list"),
        ({"messages": []}, "empty"),
    ],
    ids=["absent", "null", "object", "string", "empty"],
)
async def test_a_batch_without_a_list_of_messages_is_422(
    daemon: Daemon, http: aiohttp.ClientSession, body: Json, code: str
) -> None:
    status, problem = await post_batch(http, daemon, body)
    assert status == 422, problem
    assert problem["code"] == "validation_failed"
    assert field_codes(problem) == {("messages", code)}


async def test_a_batch_takes_json_only_and_at_most_2_mib(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    # A dict as `data` is sent as a form.
    status, problem = await post_batch(http, daemon, data={"messages": "x"})
    assert (status, problem["code"]) == (415, "unsupported_media_type")
    assert "application/json" in problem["detail"]
    for raw in (b"[1, 2]", b"{nope"):
        status, problem = await post_batch(
            http, daemon, data=raw, headers={"Content-Type": "application/json"}
        )
        assert (status, problem["code"]) == (400, "malformed_request")
    big = json.dumps({"messages": [{"to_number": NUMBER, "message": "x" * 1600}] * 1400})
    assert len(big) > 2 * 1024 * 1024
    status, problem = await post_batch(
        http, daemon, data=io.BytesIO(big.encode()), headers={"Content-Type": "application/json"}
    )
    assert (status, problem["code"]) == (413, "payload_too_large")
    assert "2 MiB" in problem["detail"]
    # The single-message route keeps its own 64 KiB limit.
    async with http.post(
        f"http://127.0.0.1:{daemon.port}/messages",
        json={"to_number": NUMBER, "message": "x" * 70_000},
    ) as resp:
        problem = await resp.json(content_type=None)
        assert (resp.status, problem["code"]) == (413, "payload_too_large")
        assert "64 KiB" in problem["detail"]
    assert stored(daemon) == 0


async def test_get_on_the_batch_url_is_405_not_a_missing_message(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"http://127.0.0.1:{daemon.port}/messages/batch") as resp:
        problem = await resp.json(content_type=None)
        assert (resp.status, problem["code"]) == (405, "method_not_allowed")
        assert resp.headers["Allow"] == "POST"
